"""decide(): the kernel's identity and the tree's state in, a verdict with a reason out. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kheaders_pkg.errors import ExitCode
from kheaders_pkg.kernel.identity import KernelIdentity
from kheaders_pkg.stamp import Stamp
from kheaders_pkg.tree import ForeignFacts, LinkKind, TreeKind, TreeState


class VerdictKind(enum.StrEnum):
    FRESH = "fresh"
    MISSING = "missing"
    STALE = "stale"
    FOREIGN_FRESH = "foreign-fresh"
    FOREIGN_STALE = "foreign-stale"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    reason: str
    differs: tuple[
        str, ...
    ] = ()  # build_id, config, release, archive, uts_version, btf, stamp, links
    evidence: tuple[str, ...] = ()  # what was compared (foreign trees)

    @property
    def needs_sync(self) -> bool:
        return self.kind in (VerdictKind.MISSING, VerdictKind.STALE)

    @property
    def exit_code(self) -> ExitCode:
        return _EXIT[self.kind]


_EXIT = {
    VerdictKind.FRESH: ExitCode.OK,
    VerdictKind.FOREIGN_FRESH: ExitCode.OK,
    VerdictKind.MISSING: ExitCode.NEEDS_SYNC,
    VerdictKind.STALE: ExitCode.NEEDS_SYNC,
    VerdictKind.FOREIGN_STALE: ExitCode.FOREIGN_STALE,
    VerdictKind.UNSUPPORTED: ExitCode.UNSUPPORTED,
}


def _short(value: str | None) -> str:
    if value is None:
        return "none"
    return value[:12] if len(value) > 16 else value


def _compare_stamp(kernel: KernelIdentity, stamp: Stamp) -> list[tuple[str, str]]:
    """(field, sentence) for each field the kernel and our stamp both know and differ on."""
    diffs: list[tuple[str, str]] = []
    if stamp.release != kernel.release:
        diffs.append(("release", f"release {stamp.release} != running {kernel.release}"))
    if kernel.build_id is not None and stamp.build_id != kernel.build_id:
        diffs.append(
            ("build_id", f"build id {_short(stamp.build_id)} != kernel's {_short(kernel.build_id)}")
        )
    if (
        kernel.config_sha256 is not None
        and stamp.config_sha256 is not None
        and kernel.config_source is not None
        and stamp.config_source is not None
        # The build config (proc, configs.ko) and a distro copy (/boot/config-*) never hash equal:
        # compare like with like only.
        and kernel.config_source.is_build_config == stamp.config_source.is_build_config
        and stamp.config_sha256 != kernel.config_sha256
    ):
        diffs.append(("config", "kernel config differs from the one the tree was made with"))
    archive = kernel.archive
    if archive is not None:
        if archive.sha256 is not None and archive.sha256 != stamp.archive_sha256:
            diffs.append(("archive", "headers archive digest differs"))
        elif (
            archive.sha256 is None
            and archive.size is not None
            and archive.size != stamp.archive_size
        ):
            diffs.append(
                ("archive", f"headers archive size {archive.size} != {stamp.archive_size}")
            )
    if (
        kernel.uts_version is not None
        and stamp.uts_version is not None
        and kernel.uts_version != stamp.uts_version
    ):
        diffs.append(("uts_version", f"uname -v {stamp.uts_version!r} != {kernel.uts_version!r}"))
    return diffs


def _compare_foreign(
    kernel: KernelIdentity, facts: ForeignFacts
) -> tuple[list[str], list[tuple[str, str]]]:
    """(evidence used, mismatches) for a tree a distribution shipped."""
    used: list[str] = []
    diffs: list[tuple[str, str]] = []

    def compare(field: str, what: str, theirs: str | None, ours: str | None) -> None:
        if theirs is None or ours is None:
            return
        used.append(what)
        if theirs != ours:
            diffs.append((field, f"{what} {_short(theirs)} != running {_short(ours)}"))

    compare("build_id", "vmlinux.id", facts.vmlinux_id, kernel.build_id)
    compare("build_id", "build id of vmlinux", facts.vmlinux_build_id, kernel.build_id)
    compare("btf", "BTF of vmlinux", facts.vmlinux_btf_sha256, kernel.btf_sha256)
    if kernel.config_source is None or kernel.config_source.is_build_config:
        compare("config", ".config", facts.config_sha256, kernel.config_sha256)
    compare("uts_version", "utsversion.h", facts.uts_version, kernel.uts_version)
    return used, diffs


def _judged(kernel: KernelIdentity) -> str:
    """The kernel a verdict speaks of: the running one, or one named with `--kernel` (read from
    its files under the root, perhaps never booted here)."""
    return "the running kernel" if kernel.running else f"kernel {kernel.release}"


def decide(kernel: KernelIdentity, tree: TreeState) -> Verdict:
    verdict = _decide_tree(kernel, tree)
    if verdict.needs_sync and not kernel.supported:
        return Verdict(
            VerdictKind.UNSUPPORTED,
            f"{verdict.reason}, and kernel {kernel.release} was built without CONFIG_IKHEADERS "
            "(no headers archive to regenerate from)",
            verdict.differs,
        )
    return verdict


def _decide_tree(kernel: KernelIdentity, tree: TreeState) -> Verdict:
    where = f"/lib/modules/{tree.release}/build"
    if tree.kind is TreeKind.MISSING:
        link = tree.build
        if link.kind is LinkKind.ABSENT:
            return Verdict(VerdictKind.MISSING, f"no headers at {where}")
        return Verdict(
            VerdictKind.MISSING,
            f"{where} is unusable ({link.problem}: {link.target or link.kind})",
        )

    if tree.kind is TreeKind.FOREIGN:
        facts = tree.foreign or ForeignFacts()
        used, diffs = _compare_foreign(kernel, facts)
        owner = f" owned by {tree.owner}" if tree.owner else ""
        subject = f"distro tree {tree.tree_inside}{owner}"
        if diffs:
            return Verdict(
                VerdictKind.FOREIGN_STALE,
                f"{subject} does not match {_judged(kernel)}: "
                + "; ".join(d for _, d in diffs)
                + " (left alone)",
                tuple(dict.fromkeys(f for f, _ in diffs)),
                tuple(used),
            )
        if not used:
            return Verdict(
                VerdictKind.FOREIGN_STALE,
                f"{subject} carries nothing that identifies its kernel (left alone)",
                ("unverifiable",),
            )
        return Verdict(
            VerdictKind.FOREIGN_FRESH,
            f"{subject} matches {_judged(kernel)} by {', '.join(used)}",
            (),
            tuple(used),
        )

    # Ours.
    if tree.stamp is None:
        return Verdict(
            VerdictKind.STALE, f"our tree's stamp is unreadable ({tree.stamp_error})", ("stamp",)
        )
    diffs = _compare_stamp(kernel, tree.stamp)
    if diffs:
        return Verdict(
            VerdictKind.STALE,
            "headers are stale: " + "; ".join(d for _, d in diffs),
            tuple(f for f, _ in diffs),
        )
    if tree.source.resolved != tree.build.resolved:
        return Verdict(
            VerdictKind.STALE,
            f"/lib/modules/{tree.release}/source does not point at the current tree",
            ("links",),
        )
    by = "build id" if kernel.build_id else "archive digest"
    fresh = f"headers match {_judged(kernel)} (generation {tree.stamp.generation}, by {by})"
    if tree.extension is not None and tree.extension.exists:
        return _extension_verdict(tree, fresh)
    return Verdict(VerdictKind.FRESH, fresh)


# The differs that a new extension fixes without a new generation (sync.py relabels).
EXTENSION_DIFFERS = frozenset({"extension", "merge"})


def _extension_verdict(tree: TreeState, fresh: str) -> Verdict:
    """A fresh tree behind our systemd-sysext extension: fresh only if systemd-sysext would merge
    the extension (its label matches os-release) and, on the live root, has merged it."""
    ext = tree.extension
    assert ext is not None
    name = ext.path.name
    if ext.problem is not None:
        return Verdict(
            VerdictKind.STALE,
            f"extension {name}: {ext.problem}, so systemd-sysext would not merge it",
            ("extension",),
        )
    if ext.merged is False:
        return Verdict(
            VerdictKind.STALE,
            f"extension {name} is not merged: /lib/modules/{tree.release}/build does not show it "
            "(systemd-sysext refresh)",
            ("merge",),
        )
    where = "merged" if ext.merged else "not merged: --root is not the running system"
    return Verdict(VerdictKind.FRESH, f"{fresh}; systemd-sysext extension {name}, {where}")
