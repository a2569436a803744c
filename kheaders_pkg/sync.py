"""The jobs: look (status), act (sync), clean (gc), undo (restore, remove). Orchestration only."""

from __future__ import annotations

import enum
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kheaders_pkg.config import Config, ForeignPolicy
from kheaders_pkg.errors import (
    ArchiveError,
    FilesystemError,
    KheadersError,
    QueuedError,
    UnsafePathError,
    UnsupportedError,
)
from kheaders_pkg.files import sha256_file
from kheaders_pkg.kernel.identity import (
    ArchiveRef,
    KernelFacts,
    disk_facts,
    live_facts,
    require_archive,
    with_archive,
    with_archive_file,
)
from kheaders_pkg.layout import Layout, LinkName, PublishMode
from kheaders_pkg.publish import (
    clean_leftovers,
    drop_record,
    fs_error,
    gc,
    generations,
    locked,
    read_record,
    remove_tree,
    swap_link,
    write_record,
)
from kheaders_pkg.stamp import ArchiveSource
from kheaders_pkg.tree import LinkKind, TreeKind, TreeState, tree_state
from kheaders_pkg.verdict import EXTENSION_DIFFERS, Verdict, VerdictKind, decide

if TYPE_CHECKING:
    from kheaders_pkg.kbuild import KbuildRecord
    from kheaders_pkg.regenerate import NewGeneration
    from kheaders_pkg.verify import Verification

log = logging.getLogger("kheaders-pkg")


@dataclass(frozen=True)
class Judgement:
    facts: KernelFacts
    tree: TreeState
    verdict: Verdict


def kernel_facts(
    layout: Layout, release: str | None, archive_file: Path | None = None, *, want_btf: bool = False
) -> KernelFacts:
    facts = (
        disk_facts(layout, release)
        if release is not None
        else live_facts(layout, want_btf=want_btf)
    )
    ident = facts.identity
    if archive_file is not None:
        facts = with_archive_file(facts, archive_file)
    elif ident.archive is None and ident.running and not _is_live(layout):
        # A copied sysroot of a CONFIG_IKHEADERS=m kernel: nothing to modprobe; take the module
        # installed for that release under --root, if any.
        from kheaders_pkg.kernel.kmod import find_module

        ko = find_module(layout.kernel_module_dir(ident.release), "kheaders")
        if ko is not None:
            facts = with_archive(facts, ArchiveRef(ArchiveSource.MODULE, ko, None))
    elif (
        ident.archive is None
        and ident.running
        and (ident.ikheaders == "m" or _kheaders_module_installed(layout, ident.release))
    ):
        # Live kernel with kheaders as a module: the archive appears after modprobe (in sync).
        # A kheaders.ko installed for this release counts even where the config says the option
        # is off: distributions that leave CONFIG_IKHEADERS off (Debian) can have the module
        # built afterwards against their own build tree, for the kernel they ship.
        facts = with_archive(facts, ArchiveRef(ArchiveSource.SYSFS, layout.kernel.archive, None))
    return facts


def _kheaders_module_installed(layout: Layout, release: str) -> bool:
    from kheaders_pkg.kernel.kmod import find_module

    return find_module(layout.kernel_module_dir(release), "kheaders") is not None


def _is_live(layout: Layout) -> bool:
    return os.path.realpath(layout.kernel_fs) == "/"


def judge(
    layout: Layout,
    release: str | None = None,
    archive_file: Path | None = None,
    *,
    thorough: bool = False,
) -> Judgement:
    """Identity + tree state + verdict.

    `thorough` (status, sync) also reads the archive's digest where it is directly readable and
    asks the package databases who owns a foreign tree; the boot-time `check` does neither (no
    archive read, no rpm bindings or jinja2 imported).
    """
    facts = kernel_facts(layout, release, archive_file)
    tree = tree_state(layout, facts.identity.release)
    if tree.needs_btf and facts.identity.running:
        facts = kernel_facts(layout, release, archive_file, want_btf=True)
    if thorough and tree.kind is TreeKind.FOREIGN:
        tree = replace(tree, owner=_owner(layout, tree))
    arch = facts.identity.archive
    # A module's archive is read (decompressed) only when it is extracted.
    if thorough and arch is not None and arch.source is not ArchiveSource.MODULE:
        if arch.path.exists():
            digest = sha256_file(arch.path, "archive", ArchiveError)
            facts = with_archive(facts, replace(arch, sha256=digest))
    return Judgement(facts, tree, decide(facts.identity, tree))


def _owner(layout: Layout, tree: TreeState) -> str | None:
    if tree.tree_inside is None:
        return None
    try:
        from kheaders_pkg.distro import owner_of
    except ImportError:
        return None
    try:
        owner = owner_of(layout, tree.tree_inside)
    except KheadersError as e:
        log.debug("ownership query failed: %s", e)
        return None
    return str(owner) if owner is not None else None


class SyncAction(enum.StrEnum):
    """What `sync` did, or with --dry-run would do."""

    NOTHING = "nothing"
    REGENERATED = "regenerated"
    WOULD_REGENERATE = "would-regenerate"
    WOULD_DIVERT = "would-divert"
    LEFT_FOREIGN = "left-foreign"  # a stale foreign tree, and the policy is to keep it
    RELABELLED = "relabelled"  # the same tree, in a new systemd-sysext extension


@dataclass(frozen=True)
class SyncResult:
    before: Judgement
    action: SyncAction
    generation: Path | None = None
    after: Verdict | None = None
    warnings: tuple[str, ...] = ()
    kbuild: KbuildRecord | None = None  # what the new tree holds for module builds, if asked
    repaired: Verification | None = None  # sync --verify: the damage the new generation replaced


def sync(
    layout: Layout,
    config: Config,
    *,
    release: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    archive_file: Path | None = None,
    verify: bool = False,
) -> SyncResult:
    """`verify` also compares our published tree with its manifest, file by file: a damaged one
    is regenerated (sharing only intact files) even when its identity is fresh."""
    if dry_run:
        j = judge(layout, release, archive_file, thorough=True)
        needs = j.verdict.needs_sync or force
        act = SyncAction.WOULD_REGENERATE if needs else SyncAction.NOTHING
        if j.verdict.kind is VerdictKind.FOREIGN_STALE and config.foreign is ForeignPolicy.DIVERT:
            act = SyncAction.WOULD_DIVERT
        return SyncResult(j, act)
    with locked(layout, config.lock_timeout):
        clean_leftovers(layout)
        _clean_extensions(layout, keep=release)
        _drain_registrations(layout)
        # Judge under the lock: a run that waited finds the tree another run just made.
        j = judge(layout, release, archive_file, thorough=True)
        v = j.verdict
        if v.kind is VerdictKind.UNSUPPORTED:
            raise UnsupportedError(v.reason)
        verified = _verify(j) if verify else None
        damaged = verified is not None and not verified.intact
        divert = False
        if v.kind is VerdictKind.FOREIGN_STALE:
            if config.foreign is not ForeignPolicy.DIVERT:
                return SyncResult(j, SyncAction.LEFT_FOREIGN)
            for link in (j.tree.build, j.tree.source):
                if link.kind is LinkKind.DIRECTORY:
                    raise UnsafePathError(
                        f"{link.path} is a real directory, not a link: cannot divert it; left alone"
                    )
            divert = True
        elif (
            not v.needs_sync
            and not damaged
            and not _kbuild_never_tried(config, j)
            and not (force and v.kind is not VerdictKind.FOREIGN_FRESH)
        ):
            return SyncResult(j, SyncAction.NOTHING, after=v)
        if v.differs and set(v.differs) <= EXTENSION_DIFFERS and not force and not damaged:
            return _relabel(layout, j, archive_file)
        return _regenerate(
            layout, config, j, divert=divert, archive_file=archive_file, verified=verified
        )


def _verify(j: Judgement) -> Verification | None:
    """Our published tree against its manifest; None when there is none of ours."""
    if j.tree.kind is not TreeKind.OURS or j.tree.tree is None:
        return None
    from kheaders_pkg.verify import verify_generation

    verified = verify_generation(j.tree.tree, j.tree.release)
    if not verified.intact:
        log.warning("%s: %s", j.tree.release, verified.summary())
    return verified


def _kbuild_never_tried(config: Config, j: Judgement) -> bool:
    """`kbuild` is asked for and our fresh tree was made without it: make it once. A tree where
    it was tried and could not be made is not remade at every run (`sync --force` retries)."""
    if not config.kbuild or j.tree.kind is not TreeKind.OURS or j.tree.tree is None:
        return False
    from kheaders_pkg.kbuild import read_record

    return read_record(j.tree.tree) is None


def _relabel(layout: Layout, j: Judgement, archive_file: Path | None) -> SyncResult:
    """The tree is fresh but its extension is not merged or would not be (an OS update changed
    VERSION_ID): a new extension for the same generation, then a refresh; no regeneration."""
    from kheaders_pkg.sysext import publish_extension

    ident = j.facts.identity
    assert j.tree.tree_inside is not None and j.tree.tree is not None
    publish_extension(layout, ident.release, j.tree.tree_inside)
    _merge(layout, ident.release, j.tree.tree_inside)
    after = _judge_merged(layout, j, archive_file)
    return SyncResult(j, SyncAction.RELABELLED, j.tree.tree, after)


def _judge_merged(layout: Layout, j: Judgement, archive_file: Path | None) -> Verdict | None:
    """The verdict once the extension is merged; None when the boot unit runs the refresh after
    us (it runs `check` then)."""
    from kheaders_pkg.sysext import refresh_deferred

    if refresh_deferred(layout):
        return None
    ident = j.facts.identity
    return judge(layout, None if ident.running else ident.release, archive_file).verdict


def _merge(layout: Layout, release: str, target: str) -> None:
    """systemd-sysext refresh on the live root; exit 14 when the extension could not be merged."""
    from kheaders_pkg.sysext import elsewhere, refresh

    problem = refresh(layout, release)
    if problem is not None:
        raise elsewhere(layout, release, target, f"systemd-sysext could not merge: {problem}")


def _clean_extensions(layout: Layout, keep: str | None) -> None:
    """publish = sysext: half-made extensions from an interrupted run, and the extensions (and
    trees) of kernels that are gone from /usr (an OS update removed them); then a refresh."""
    if layout.publish is not PublishMode.SYSEXT:
        return
    from kheaders_pkg.sysext import (
        clean_extension_leftovers,
        extension_releases,
        kernel_installed,
        refresh,
        remove_extension,
    )

    for p in clean_extension_leftovers(layout):
        log.info("removed leftover %s", p)
    running = _running_release(layout)
    gone = [
        r
        for r in extension_releases(layout)
        if r not in (keep, running) and not kernel_installed(layout, r)
    ]
    for rel in gone:
        remove_extension(layout, rel)
        for g in generations(layout, rel):
            remove_tree(g.path)
        log.info("removed the extension and trees of %s: the kernel is gone", rel)
    if gone:
        problem = refresh(layout, gone[0])
        if problem is not None:
            log.warning("systemd-sysext refresh failed: %s", problem)


def _running_release(layout: Layout) -> str | None:
    try:
        return layout.kernel.osrelease.read_text().strip() or None
    except OSError:
        return None


def _regenerate(
    layout: Layout,
    config: Config,
    j: Judgement,
    *,
    divert: bool,
    archive_file: Path | None,
    verified: Verification | None = None,
) -> SyncResult:
    from kheaders_pkg.regenerate import build_generation
    from kheaders_pkg.verify import intact_files

    ident = j.facts.identity
    archive = require_archive(ident)
    release = ident.release
    previous = j.tree.tree if j.tree.kind is TreeKind.OURS and j.tree.stamp is not None else None
    links_writable = _links_writable(layout, release)
    if not links_writable:
        _raise_if_fresh_generation(layout, j)
    with intact_files(layout, verified) if verified is not None else nullcontext(previous) as src:
        # Verified: share only the files that still match the manifest, never damaged inodes.
        gen = build_generation(
            layout,
            j.facts,
            archive,
            previous=src,
            kbuild=config.kbuild,
            kbuild_source=config.kbuild_source,
        )
    target = layout.generation_inside(release, gen.name)
    if layout.publish is PublishMode.SYSEXT or not links_writable:
        return _publish_elsewhere(layout, config, j, gen, target, archive_file, divert=divert)
    # Links we did not make (a dangling distro link, a loop, a diverted foreign tree) are recorded
    # before we replace them, so that `restore` and `remove` put them back exactly.
    original: dict[str, str | None] = {}
    for link in (j.tree.build, j.tree.source):
        is_ours = link.resolved is not None and j.tree.kind is TreeKind.OURS
        ours_or_inside = is_ours or _points_into_ours(layout, link.inside)
        if link.kind is LinkKind.SYMLINK and not ours_or_inside:
            original[str(link.name)] = link.target
        elif link.kind is LinkKind.ABSENT:
            original[str(link.name)] = None
    if any(v is not None for v in original.values()):
        write_record(layout, release, original)
    try:
        for name in (LinkName.BUILD, LinkName.SOURCE):
            swap_link(layout, release, name, target)
    except OSError as e:
        raise fs_error(
            f"cannot publish {target} at {layout.modules_dir(release)}",
            e,
            f"the new tree stays unpublished in {gen.path}",
        ) from None
    if divert:
        log.warning("diverted %s: original links recorded for `kheaders-pkg restore`", release)
    try:
        gc(layout, config.keep_generations)
    except OSError as e:
        log.warning("gc failed (%s); the next run retries", e.strerror)
    after = judge(layout, None if ident.running else release, archive_file).verdict
    repaired = verified if verified is not None and not verified.intact else None
    return SyncResult(
        j, SyncAction.REGENERATED, gen.path, after, gen.warnings, gen.kbuild, repaired
    )


def _links_writable(layout: Layout, release: str) -> bool:
    """publish = var: whether /lib/modules/$KVER takes our links. A read-only one is not fatal
    there: the tree is still made, and named (exit 14). Other modes check in build_generation."""
    from kheaders_pkg.publish import check_links_writable

    if layout.publish is not PublishMode.VAR:
        return True
    try:
        check_links_writable(replace(layout, publish=PublishMode.TREE), release)
    except FilesystemError:
        return False
    return True


def _raise_if_fresh_generation(layout: Layout, j: Judgement) -> None:
    """Read-only root without systemd-sysext: the newest generation, if it matches the kernel,
    is the answer again (exit 14 naming it), not a reason to make another."""
    from kheaders_pkg.stamp import StampError, read_stamp
    from kheaders_pkg.sysext import elsewhere
    from kheaders_pkg.tree import LinkState

    release = j.facts.identity.release
    gens = generations(layout, release)
    if not gens:
        return
    newest = gens[-1]
    try:
        stamp = read_stamp(newest.path)
    except StampError:
        return
    inside = layout.generation_inside(release, newest.name)
    links = [
        LinkState(n, layout.link(release, n), LinkKind.SYMLINK, inside, inside, newest.path)
        for n in (LinkName.BUILD, LinkName.SOURCE)
    ]
    tree = TreeState(release, TreeKind.OURS, links[0], links[1], newest.path, inside, stamp)
    if decide(j.facts.identity, tree).kind is VerdictKind.FRESH:
        raise elsewhere(
            layout, release, inside, f"{layout.modules_dir_inside(release)} is read-only"
        )


def _publish_elsewhere(
    layout: Layout,
    config: Config,
    j: Judgement,
    gen: NewGeneration,
    target: str,
    archive_file: Path | None,
    *,
    divert: bool = False,
) -> SyncResult:
    """The new generation as a systemd-sysext extension, merged; or, on a read-only root
    without systemd-sysext, named in one line (exit 14)."""
    from kheaders_pkg.sysext import elsewhere, publish_extension

    release = j.facts.identity.release
    if layout.publish is PublishMode.SYSEXT:
        if divert:
            # The foreign links stay as they are under /usr; our extension shadows them once
            # merged. The record (what shows again) is what makes `restore` take it away.
            write_record(
                layout, release, {str(k.name): k.target for k in (j.tree.build, j.tree.source)}
            )
        publish_extension(layout, release, target)
        if divert:
            log.warning(
                "diverted %s: extension %s shadows the distribution's links until "
                "`kheaders-pkg restore`",
                release,
                layout.extension_inside(release),
            )
    try:
        gc(layout, config.keep_generations)
    except OSError as e:
        log.warning("gc failed (%s); the next run retries", e.strerror)
    if layout.publish is not PublishMode.SYSEXT:
        raise elsewhere(
            layout, release, target, f"{layout.modules_dir_inside(release)} is read-only"
        )
    _merge(layout, release, target)
    after = _judge_merged(layout, j, archive_file)
    return SyncResult(j, SyncAction.REGENERATED, gen.path, after, gen.warnings, gen.kbuild)


def _drain_registrations(layout: Layout) -> None:
    """Registrations queued while a package manager was busy; cheap when there are none."""
    queue = layout.state() / "queue"
    try:
        if not any(p.suffix == ".json" for p in queue.iterdir()):
            return
    except (FileNotFoundError, NotADirectoryError):
        return
    from kheaders_pkg.distro import drain_queue

    try:
        for release in drain_queue(layout):
            log.info("queued package registration for %s done", release)
    except KheadersError as e:
        log.warning("queued package registrations stay queued: %s", e)


def _points_into_ours(layout: Layout, inside: str | None) -> bool:
    if inside is None:
        return False
    trees = layout.trees_dir.rstrip("/") + "/"
    return inside.startswith(trees)


def gc_all(layout: Layout, config: Config) -> list[Path]:
    with locked(layout, config.lock_timeout):
        clean_leftovers(layout)
        _clean_extensions(layout, keep=None)
        return gc(layout, config.keep_generations)


def releases_with_trees(layout: Layout) -> list[str]:
    """The releases that have a directory of generations under the trees dir."""
    from kheaders_pkg.layout import LOCK_NAME, STAGING_PREFIX
    from kheaders_pkg.publish import TRASH_PREFIX

    try:
        entries = list(os.scandir(layout.trees()))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        e.name
        for e in entries
        if e.is_dir(follow_symlinks=False)
        and e.name != LOCK_NAME
        and not e.name.startswith((STAGING_PREFIX, TRASH_PREFIX))
    )


def releases_with_records(layout: Layout) -> list[str]:
    d = layout.state() / "links"
    try:
        return sorted(p.name[: -len(".json")] for p in d.iterdir() if p.name.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def restore(layout: Layout, config: Config, release: str | None = None) -> list[str]:
    """Put back the links we replaced, exactly as they were; returns the releases restored."""
    done = []
    with locked(layout, config.lock_timeout):
        for rel in [release] if release else releases_with_records(layout):
            record = read_record(layout, rel)
            if record is None:
                continue
            if layout.publish is PublishMode.SYSEXT:
                _take_extension_away(layout, rel)
            else:
                _put_back(layout, rel, record)
            drop_record(layout, rel)
            done.append(rel)
        gc(layout, config.keep_generations)
    return done


def _take_extension_away(layout: Layout, release: str) -> None:
    """publish = sysext, diverted: the distribution's links were never touched (they are in the
    read-only /usr); removing our extension and refreshing shows them again."""
    from kheaders_pkg.sysext import refresh, remove_extension

    try:
        gone = remove_extension(layout, release)
    except OSError as e:
        raise fs_error(f"cannot remove {layout.extension(release)}", e, "record kept") from None
    if gone is not None:
        log.info("removed %s: the distribution's build/source show again", gone)
        problem = refresh(layout, release)
        if problem is not None:
            log.warning("systemd-sysext refresh failed: %s", problem)


def _put_back(layout: Layout, release: str, record: dict[str, str | None]) -> None:
    for name in LinkName:
        if str(name) not in record:
            continue
        try:
            swap_link(layout, release, name, record[str(name)])
        except OSError as e:
            raise fs_error(
                f"cannot restore {layout.link(release, name)}", e, "record kept"
            ) from None


def remove(layout: Layout, config: Config, release: str) -> list[Path]:
    """A kernel is going away: our links (or the originals), trees and registration go too."""
    removed: list[Path] = []
    with locked(layout, config.lock_timeout):
        record = read_record(layout, release)
        tree = tree_state(layout, release)
        if layout.publish is PublishMode.SYSEXT:
            from kheaders_pkg.sysext import refresh, remove_extension

            try:
                gone = remove_extension(layout, release)
            except OSError as e:
                raise fs_error(
                    f"cannot remove {layout.extension(release)}", e, "trees kept"
                ) from None
            if gone is not None:
                removed.append(gone)
                problem = refresh(layout, release)
                if problem is not None:
                    log.warning("systemd-sysext refresh failed: %s", problem)
            if record is not None:  # a diverted extension: nothing of ours shadows them now
                drop_record(layout, release)
        elif record is not None:
            _put_back(layout, release, record)
            drop_record(layout, release)
        else:
            for link in (tree.build, tree.source):
                if link.kind is LinkKind.SYMLINK and _points_into_ours(layout, link.inside):
                    try:
                        swap_link(layout, release, link.name, None)
                    except OSError as e:
                        raise fs_error(f"cannot remove {link.path}", e, "trees kept") from None
                    removed.append(link.path)
        queued: QueuedError | None = None
        from kheaders_pkg.distro import unregister_all

        try:
            unregister_all(layout, release)
        except QueuedError as e:  # inside the package manager: the trees still go now
            queued = e
        for g in generations(layout, release):
            try:
                remove_tree(g.path)
            except OSError as e:
                raise FilesystemError(f"cannot remove {g.path}: {e.strerror}") from None
            removed.append(g.path)
        base = layout.release_trees(release)
        if base.is_dir() and not os.listdir(base):
            os.rmdir(base)
    if queued is not None:
        raise queued
    return removed
