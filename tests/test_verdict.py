"""decide() over every combination that matters: a table of real-world cases."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from kheaders_pkg.errors import ExitCode
from kheaders_pkg.kernel.identity import ArchiveRef, KernelIdentity
from kheaders_pkg.layout import LinkName
from kheaders_pkg.stamp import ArchiveSource, ConfigSource, Stamp
from kheaders_pkg.tree import ForeignFacts, LinkKind, LinkState, TreeKind, TreeState
from kheaders_pkg.verdict import VerdictKind, decide

BID_A = "6b6f5988478876da7d0cc1f1f01b55b4260d6b34"
BID_B = "32b5c9ed3a8072d244a7bda41c023c35e13b33c0"
CFG = "8a90e08a5f518165c8f097b3a70407bfc4c5f3cfd7b865ebdaeb683fe2fa8780"
CFG2 = "9bd29b98874f95e9f17a25e71ee5eb9df664b284e1714ce7a3410d2df6949d89"
ARCH = "887a7bd24c92dcb7e0eb32f0e74475aa455d240b0949c4af471baa47018798ee"
UTS = "#1 Mon Jan  1 00:00:00 UTC 2024"
REL = "6.1.192-kh"
TREE = Path("/r/usr/src/kheaders-pkg/6.1.192-kh/gen-0001-6b6f59884788")

SYSFS_ARCHIVE = ArchiveRef(ArchiveSource.SYSFS, Path("/sys/kernel/kheaders.tar.xz"), 4010996)
KERNEL = KernelIdentity(
    release=REL,
    uts_version=UTS,
    build_id=BID_A,
    config_sha256=CFG,
    config_source=ConfigSource.PROC,
    ikheaders="y",
    archive=SYSFS_ARCHIVE,
    running=True,
)

STAMP = Stamp(
    release=REL,
    uts_version=UTS,
    build_id=BID_A,
    config_sha256=CFG,
    config_source=ConfigSource.PROC,
    archive_sha256=ARCH,
    archive_size=4010996,
    archive_source=ArchiveSource.SYSFS,
    created="2026-11-22T00:00:00Z",
    generation=1,
    file_count=6400,
    manifest_sha256="0" * 64,
    tool_version="0.1.0",
)


def link(
    name: LinkName,
    resolved: Path | None,
    kind: LinkKind = LinkKind.SYMLINK,
    problem: str | None = None,
    target: str | None = "/usr/src/kheaders-pkg/6.1.192-kh/gen-0001-6b6f59884788",
) -> LinkState:
    return LinkState(
        name, Path(f"/r/lib/modules/{REL}/{name}"), kind, target, target, resolved, problem
    )


def ours(
    stamp: Stamp | None = STAMP, source: Path | None = TREE, error: str | None = None
) -> TreeState:
    return TreeState(
        REL,
        TreeKind.OURS,
        link(LinkName.BUILD, TREE),
        link(LinkName.SOURCE, source),
        tree=TREE,
        tree_inside=str(TREE),
        stamp=stamp,
        stamp_error=error,
    )


def missing(kind: LinkKind = LinkKind.ABSENT, problem: str | None = None) -> TreeState:
    target = None if kind is LinkKind.ABSENT else "/usr/src/linux-headers-6.1.192-kh"
    return TreeState(
        REL,
        TreeKind.MISSING,
        link(LinkName.BUILD, None, kind, problem, target),
        link(LinkName.SOURCE, None, LinkKind.ABSENT, None, None),
    )


def foreign(facts: ForeignFacts, owner: str | None = "linux-headers-6.1.192-kh") -> TreeState:
    d = Path("/r/usr/src/linux-headers-6.1.192-kh")
    return TreeState(
        REL,
        TreeKind.FOREIGN,
        link(LinkName.BUILD, d),
        link(LinkName.SOURCE, d),
        tree=d,
        tree_inside="/usr/src/linux-headers-6.1.192-kh",
        foreign=facts,
        owner=owner,
    )


CASES = [
    # (name, kernel, tree, kind, differs)
    ("fresh tree of ours", KERNEL, ours(), VerdictKind.FRESH, ()),
    ("no build link", KERNEL, missing(), VerdictKind.MISSING, ()),
    ("dangling build link", KERNEL, missing(LinkKind.SYMLINK, "dangling"), VerdictKind.MISSING, ()),
    ("build link loop", KERNEL, missing(LinkKind.SYMLINK, "symlink loop"), VerdictKind.MISSING, ()),
    (
        "rebuilt under the same release",
        replace(KERNEL, build_id=BID_B),
        ours(),
        VerdictKind.STALE,
        ("build_id",),
    ),
    (
        "config changed only",
        replace(KERNEL, config_sha256=CFG2),
        ours(),
        VerdictKind.STALE,
        ("config",),
    ),
    (
        "another kernel's tree under this release",
        replace(KERNEL, release="6.1.193-kh"),
        ours(),
        VerdictKind.STALE,
        ("release",),
    ),
    (
        "archive digest differs",
        replace(KERNEL, archive=replace(SYSFS_ARCHIVE, sha256="1" * 64)),
        ours(),
        VerdictKind.STALE,
        ("archive",),
    ),
    (
        "archive size differs (check, digest not read)",
        replace(KERNEL, archive=replace(SYSFS_ARCHIVE, size=1)),
        ours(),
        VerdictKind.STALE,
        ("archive",),
    ),
    (
        "uname -v differs",
        replace(KERNEL, uts_version="#2"),
        ours(),
        VerdictKind.STALE,
        ("uts_version",),
    ),
    (
        "kernel without build id, archive matches",
        replace(KERNEL, build_id=None),
        ours(),
        VerdictKind.FRESH,
        (),
    ),
    (
        "kernel without build id, archive differs",
        replace(KERNEL, build_id=None, archive=replace(SYSFS_ARCHIVE, sha256="2" * 64)),
        ours(),
        VerdictKind.STALE,
        ("archive",),
    ),
    (
        "distro config copy is not compared with the build config",
        replace(KERNEL, config_sha256=CFG2, config_source=ConfigSource.BOOT),
        ours(),
        VerdictKind.FRESH,
        (),
    ),
    (
        "tree made from configs.ko compares with /proc/config.gz",
        replace(KERNEL, config_sha256=CFG2),
        ours(replace(STAMP, config_source=ConfigSource.MODULE)),
        VerdictKind.STALE,
        ("config",),
    ),
    ("unreadable stamp", KERNEL, ours(None, error="not valid JSON"), VerdictKind.STALE, ("stamp",)),
    ("source points elsewhere", KERNEL, ours(source=None), VerdictKind.STALE, ("links",)),
    (
        "several fields differ",
        replace(KERNEL, build_id=BID_B, config_sha256=CFG2),
        ours(),
        VerdictKind.STALE,
        ("build_id", "config"),
    ),
    (
        "Debian tree matching by .config and utsversion.h",
        KERNEL,
        foreign(ForeignFacts(config_sha256=CFG, uts_version=UTS)),
        VerdictKind.FOREIGN_FRESH,
        (),
    ),
    (
        "Debian tree with another uname -v",
        KERNEL,
        foreign(ForeignFacts(config_sha256=CFG, uts_version="#2 SMP")),
        VerdictKind.FOREIGN_STALE,
        ("uts_version",),
    ),
    (
        "Debian tree with another config",
        KERNEL,
        foreign(ForeignFacts(config_sha256=CFG2, uts_version=UTS)),
        VerdictKind.FOREIGN_STALE,
        ("config",),
    ),
    (
        "Fedora tree matching by vmlinux.id",
        KERNEL,
        foreign(ForeignFacts(vmlinux_id=BID_A)),
        VerdictKind.FOREIGN_FRESH,
        (),
    ),
    (
        "Fedora tree of another build",
        KERNEL,
        foreign(ForeignFacts(vmlinux_id=BID_B)),
        VerdictKind.FOREIGN_STALE,
        ("build_id",),
    ),
    (
        "Arch tree by vmlinux notes",
        KERNEL,
        foreign(ForeignFacts(vmlinux_build_id=BID_A)),
        VerdictKind.FOREIGN_FRESH,
        (),
    ),
    (
        "Debian 6.12 BTF-only vmlinux differs",
        replace(KERNEL, btf_sha256="a" * 64),
        foreign(ForeignFacts(vmlinux_btf_sha256="b" * 64)),
        VerdictKind.FOREIGN_STALE,
        ("btf",),
    ),
    (
        "Debian 6.12 BTF-only vmlinux matches",
        replace(KERNEL, btf_sha256="a" * 64),
        foreign(ForeignFacts(vmlinux_btf_sha256="a" * 64)),
        VerdictKind.FOREIGN_FRESH,
        (),
    ),
    (
        "foreign tree with no evidence",
        KERNEL,
        foreign(ForeignFacts()),
        VerdictKind.FOREIGN_STALE,
        ("unverifiable",),
    ),
    (
        "distro .config not compared when the kernel's config is the distro copy",
        replace(KERNEL, config_sha256=CFG2, config_source=ConfigSource.BOOT),
        foreign(ForeignFacts(config_sha256=CFG, uts_version=UTS)),
        VerdictKind.FOREIGN_FRESH,
        (),
    ),
    (
        "missing, kernel without IKHEADERS",
        replace(KERNEL, ikheaders="n", archive=None),
        missing(),
        VerdictKind.UNSUPPORTED,
        (),
    ),
    (
        "stale, kernel without IKHEADERS",
        replace(KERNEL, ikheaders="n", archive=None, build_id=BID_B),
        ours(),
        VerdictKind.UNSUPPORTED,
        ("build_id",),
    ),
    (
        "distro tree fresh, kernel without IKHEADERS",
        replace(KERNEL, ikheaders="n", archive=None),
        foreign(ForeignFacts(config_sha256=CFG, uts_version=UTS)),
        VerdictKind.FOREIGN_FRESH,
        (),
    ),
    (
        "IKHEADERS=m before modprobe still needs a sync, not unsupported",
        replace(KERNEL, ikheaders="m", archive=None),
        missing(),
        VerdictKind.MISSING,
        (),
    ),
]


@pytest.mark.parametrize(
    ("kernel", "tree", "kind", "differs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide_table(
    kernel: KernelIdentity, tree: TreeState, kind: VerdictKind, differs: tuple[str, ...]
) -> None:
    v = decide(kernel, tree)
    assert v.kind is kind, v.reason
    assert v.differs == differs
    assert v.reason and "\n" not in v.reason


def test_stale_reason_names_the_build_ids() -> None:
    v = decide(replace(KERNEL, build_id=BID_B), ours())
    assert "build id" in v.reason and BID_A[:12] in v.reason and BID_B[:12] in v.reason


def test_foreign_reason_names_evidence_and_owner() -> None:
    v = decide(KERNEL, foreign(ForeignFacts(config_sha256=CFG, uts_version=UTS)))
    assert v.evidence == (".config", "utsversion.h")
    assert "linux-headers-6.1.192-kh" in v.reason


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (VerdictKind.FRESH, ExitCode.OK),
        (VerdictKind.FOREIGN_FRESH, ExitCode.OK),
        (VerdictKind.MISSING, ExitCode.NEEDS_SYNC),
        (VerdictKind.STALE, ExitCode.NEEDS_SYNC),
        (VerdictKind.FOREIGN_STALE, ExitCode.FOREIGN_STALE),
        (VerdictKind.UNSUPPORTED, ExitCode.UNSUPPORTED),
    ],
)
def test_every_verdict_has_its_documented_exit_code(kind: VerdictKind, code: ExitCode) -> None:
    from kheaders_pkg.verdict import Verdict

    assert Verdict(kind, "x").exit_code is code
