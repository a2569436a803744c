"""Make one complete generation: extract the archive, add what it lacks, stamp it, sync, rename.

What the archive lacks and tools look for (background.md 1, 4): `.config` (bcc, dkms checks),
`include/config/auto.conf` and `include/config/kernel.release` (systemtap reads the release there),
and `vmlinux.id` (the build id as Fedora's kernel-devel ships it; systemtap matches on it); and
`vmlinux.h` from the kernel's own BTF, which libbpf CO-RE programs compile against (background.md
11; kernel/btf.py).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from kheaders_pkg import __version__
from kheaders_pkg.archive.extract import ExtractResult, extract_archive
from kheaders_pkg.archive.manifest import Entry, render_manifest
from kheaders_pkg.errors import KheadersError, UnsupportedError
from kheaders_pkg.kernel.btf import (
    VMLINUX_H,
    VmlinuxH,
    link_unchanged_vmlinux_h,
    make_vmlinux_h,
    vmlinux_h_remark,
)
from kheaders_pkg.kernel.identity import ArchiveRef, KernelFacts
from kheaders_pkg.kernel.kconfig import autoconf_disagreements, render_auto_conf
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME, Layout

if TYPE_CHECKING:
    from kheaders_pkg.kbuild import KbuildRecord
from kheaders_pkg.publish import (
    check_links_writable,
    crash_point,
    finish_generation,
    fs_error,
    generation_name,
    generations,
    new_staging,
    published_generations,
    remove_tree,
    write_new_file,
)
from kheaders_pkg.stamp import ArchiveSource, Stamp, read_stamp

log = logging.getLogger("kheaders-pkg")


@dataclass(frozen=True)
class NewGeneration:
    path: Path  # on this machine
    name: str
    stamp: Stamp
    warnings: tuple[str, ...]
    kbuild: KbuildRecord | None = None  # set when a kbuild tree was asked for (kbuild.py)


@contextmanager
def open_archive(layout: Layout, archive: ArchiveRef) -> Iterator[BinaryIO]:
    """A readable stream of the xz archive, wherever it comes from."""
    if archive.source is ArchiveSource.MODULE:
        from kheaders_pkg.kernel.kmod import kheaders_archive_from_module

        yield io.BytesIO(kheaders_archive_from_module(archive.path))
        return
    if archive.source is ArchiveSource.SYSFS and not archive.path.exists():
        # CONFIG_IKHEADERS=m: the file appears once kheaders.ko is loaded (live kernels only).
        from kheaders_pkg.kernel.kmodload import module_loaded

        with module_loaded("kheaders", layout.kernel.modules, archive.path):
            if not archive.path.exists():
                raise UnsupportedError(f"{archive.path} did not appear after loading kheaders")
            with open(archive.path, "rb") as f:
                yield f
        return
    with open(archive.path, "rb") as f:
        yield f


@contextmanager
def progress_bar(release: str) -> Iterator[Callable[[int], None] | None]:
    """Extraction progress on stderr, only when stderr is a terminal (never in the journal)."""
    if not sys.stderr.isatty() or not log.isEnabledFor(logging.WARNING):  # -q: errors only
        yield None
        return
    last = -1

    def show(done: int) -> None:
        nonlocal last
        mib = done >> 20
        if mib != last:
            last = mib
            sys.stderr.write(f"\rkheaders-pkg: extracting headers for {release}: {mib} MiB")
            sys.stderr.flush()

    try:
        yield show
    finally:
        if last >= 0:
            sys.stderr.write("\n")


def _entry(path: str, data: bytes) -> Entry:
    return Entry(
        path=path, kind="f", size=len(data), sha256=hashlib.sha256(data).hexdigest(), target=None
    )


def added_files(facts: KernelFacts) -> dict[str, bytes]:
    ident = facts.identity
    files: dict[str, bytes] = {"include/config/kernel.release": ident.release.encode() + b"\n"}
    if facts.config is not None:
        files[".config"] = facts.config
        files["include/config/auto.conf"] = render_auto_conf(facts.config)
    if ident.build_id is not None:
        files["vmlinux.id"] = ident.build_id.encode() + b"\n"
    return files


def reuse_sources(layout: Layout, release: str) -> list[Path]:
    """Every complete generation a new tree may share files with (archive/reuse.py): this
    release's first (newest first: a re-sync keeps the archive's mtimes), then every other
    kernel's, wherever generations live (publish.published_generations)."""
    found = [g for g in published_generations(layout) if _manifest_is_the_stamps(g)]
    return sorted(found, key=lambda g: g.parent.name != release)  # stable: newest first kept


def _manifest_is_the_stamps(tree: Path) -> bool:
    """A generation whose manifest is not the one its stamp records was changed after it was
    made (verify reports it): what it says is where is not believed, so nothing is linked from it.
    (Each link is checked byte for byte anyway; this keeps `sync --verify`'s promise that a tree
    with a changed manifest shares nothing.) One sha256 of ~0.7 MB per generation."""
    try:
        stamp = read_stamp(tree)
        data = (tree / MANIFEST_NAME).read_bytes()
    except (OSError, KheadersError):
        return False
    return stamp.manifest_sha256 == hashlib.sha256(data).hexdigest()


def build_generation(
    layout: Layout,
    facts: KernelFacts,
    archive: ArchiveRef,
    *,
    previous: Path | None,
    kbuild: bool = False,
    kbuild_source: str | None = None,
) -> NewGeneration:
    """Extract into a private staging directory and publish it as the next generation.

    On any failure the staging directory is removed and nothing visible has changed.
    """
    ident = facts.identity
    release = ident.release
    check_links_writable(layout, release)
    staging = new_staging(layout, release)
    try:
        with open_archive(layout, archive) as stream, progress_bar(release) as progress:
            result: ExtractResult = extract_archive(
                stream,
                staging,
                previous=previous,
                reuse_from=reuse_sources(layout, release),
                progress=progress,
            )
        crash_point("after-extract")
        if result.reused:
            log.info("%d unchanged files shared with published trees", result.reused)
        warnings: list[str] = []
        autoconf = staging / "include/generated/autoconf.h"
        if facts.config is not None and autoconf.is_file():
            diffs = autoconf_disagreements(facts.config, autoconf.read_bytes())
            if diffs:
                warnings.append(
                    f"the archive's autoconf.h disagrees with the running config on {len(diffs)} "
                    f"options (e.g. {', '.join(diffs[:3])}): a known kbuild bug; .config and "
                    "auto.conf follow the running config"
                )
        extra = added_files(facts)
        made = make_vmlinux_h(facts.btf, staging)
        if made.data is not None:
            extra[VMLINUX_H] = made.data
        elif made.state is not VmlinuxH.NO_BTF:
            remark = vmlinux_h_remark(made.state, release)
            warnings.append(f"{remark} ({made.problem})" if made.problem else str(remark))
        kb = None
        if kbuild:
            from kheaders_pkg.kbuild import plan_kbuild

            # The generation's name is not known yet; its depth (all a relative link needs) is.
            kb = plan_kbuild(
                layout, facts, staging, layout.generation_inside(release, "gen"), kbuild_source
            )
            extra.update(kb.files)
        for rel, data in extra.items():
            if rel != VMLINUX_H or not link_unchanged_vmlinux_h(previous, staging, data):
                write_new_file(staging, rel, data)
        links = [] if kb is None else sorted(kb.links.items())
        for rel, target in links:
            os.symlink(target, staging / rel)
        entries = sorted(
            [
                *result.entries,
                *(_entry(rel, data) for rel, data in extra.items()),
                *(Entry(rel, "l", 0, None, target) for rel, target in links),
            ],
            key=lambda e: e.path,
        )
        manifest = render_manifest(entries).encode()
        write_new_file(staging, MANIFEST_NAME, manifest)
        gens = generations(layout, release)
        number = (gens[-1].number + 1) if gens else 1
        name = generation_name(number, ident.build_id or result.archive_sha256)
        stamp = Stamp(
            release=release,
            uts_version=ident.uts_version,
            build_id=ident.build_id,
            config_sha256=ident.config_sha256,
            config_source=ident.config_source,
            archive_sha256=result.archive_sha256,
            archive_size=result.archive_size,
            archive_source=archive.source,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            generation=number,
            file_count=len(entries),
            manifest_sha256=hashlib.sha256(manifest).hexdigest(),
            tool_version=__version__,
            btf_sha256=made.btf_sha256,
            vmlinux_h=made.state,
        )
        crash_point("before-stamp")
        # The stamp goes last: a tree with a stamp is a complete tree.
        write_new_file(staging, STAMP_NAME, stamp.to_json().encode())
        path = finish_generation(layout, release, staging, name)
    except KheadersError:
        _discard(staging)
        raise
    except OSError as e:
        _discard(staging)
        raise fs_error(
            f"regenerating headers for {release} failed at {e.filename or staging}", e
        ) from None
    except BaseException:
        _discard(staging)
        raise
    for w in warnings:
        log.warning("%s", w)
    return NewGeneration(path, name, stamp, tuple(warnings), None if kb is None else kb.record)


def _discard(staging: Path) -> None:
    try:
        remove_tree(staging)
    except OSError as e:  # the next run's clean-up removes it
        log.warning("could not remove %s (%s); the next run removes it", staging, e.strerror)
    if os.path.lexists(staging):
        log.warning("staging directory %s left behind", staging)
