"""Generated trees made to order for the packaging tests: a corpus kernel's archive unpacked as
the core lays a generation out, with its manifest and stamp, and the generation after it.

test_distro_packages (dpkg, rpm) and test_distro_pacman build their trees here, the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kheaders_pkg.archive.manifest import Entry, render_manifest
from kheaders_pkg.distro import register_tree
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME, Layout
from kheaders_pkg.stamp import ArchiveSource, ConfigSource, Stamp, read_stamp
from tests.conftest import CorpusKernel, corpus_kernel

# A header every tree has, to ask the package managers who owns it.
HEADER = "include/linux/kconfig.h"
# Lifecycle tests (upgrade, queue) exercise our code, not the kernel: one kernel is enough.
ONE_KERNEL = pytest.mark.parametrize("generated", ["kh-6.1.192-kh-a"], indirect=True)


@dataclass(frozen=True)
class GeneratedTree:
    kernel: CorpusKernel
    root: Path  # a root holding only the tree
    tree: Path  # .../usr/src/kheaders-pkg/$KVER/gen-0001-<id12>

    @property
    def release(self) -> str:
        return self.kernel.release

    @property
    def inside(self) -> str:
        return "/" + self.tree.relative_to(self.root).as_posix()


def write_manifest_and_stamp(tree: Path, stamp: Stamp) -> None:
    """What the core writes: the manifest of every file, then the stamp naming its digest."""
    entries = []
    for path in tree.rglob("*"):
        if path.name in (STAMP_NAME, MANIFEST_NAME):
            continue
        rel = path.relative_to(tree).as_posix()
        if path.is_symlink():
            entries.append(Entry(rel, "l", 0, None, os.readlink(path)))
        elif path.is_file():
            data = path.read_bytes()
            entries.append(Entry(rel, "f", len(data), hashlib.sha256(data).hexdigest(), None))
    manifest = render_manifest(entries)
    (tree / MANIFEST_NAME).write_text(manifest)
    stamp = replace(
        stamp,
        file_count=len(entries),
        manifest_sha256=hashlib.sha256(manifest.encode()).hexdigest(),
    )
    (tree / STAMP_NAME).write_text(stamp.to_json())


def make_tree(kernel: CorpusKernel, root: Path, generation: int = 1) -> Path:
    expected = kernel.expected
    build_id = str(expected["build_id"])
    tree = root / "usr/src/kheaders-pkg" / kernel.release / f"gen-{generation:04d}-{build_id[:12]}"
    tree.mkdir(parents=True)
    subprocess.run(["tar", "-xJf", kernel.archive, "-C", tree], check=True)
    config = gzip.decompress((kernel.sysroot / "proc/config.gz").read_bytes())
    (tree / ".config").write_bytes(config)
    (tree / "include/config").mkdir(parents=True, exist_ok=True)
    auto = [line for line in config.decode().splitlines() if line.startswith("CONFIG_")]
    (tree / "include/config/auto.conf").write_text("".join(f"{line}\n" for line in auto))
    (tree / "include/config/kernel.release").write_text(kernel.release + "\n")
    (tree / "vmlinux.id").write_text(build_id + "\n")
    stamp = Stamp(
        release=kernel.release,
        uts_version=(kernel.sysroot / "proc/sys/kernel/version").read_text().strip(),
        build_id=build_id,
        config_sha256=hashlib.sha256(config).hexdigest(),
        config_source=ConfigSource.PROC,
        archive_sha256=str(expected["kheaders_tar_xz_sha256"]),
        archive_size=kernel.archive.stat().st_size,
        archive_source=ArchiveSource.SYSFS,
        created="2026-11-22T06:30:00Z",
        generation=generation,
        file_count=0,
        manifest_sha256="",
        tool_version="0.1.0",
    )
    write_manifest_and_stamp(tree, stamp)
    return tree


def generated_tree(
    request: pytest.FixtureRequest, factory: pytest.TempPathFactory, prefix: str
) -> GeneratedTree:
    """The packaging tests' `generated`: `request.param`'s kernel as a tree in its own root."""
    kernel = corpus_kernel(str(request.param))
    root = factory.mktemp(f"{prefix}-{kernel.name}")
    return GeneratedTree(kernel, root, make_tree(kernel, root))


def link_tree_into(root: Path, generated: GeneratedTree) -> Path:
    """`generated`'s tree hard-linked at its place under `root`: the package managers replace
    files by rename, so the shared tree is never written."""
    dest = root / generated.tree.relative_to(generated.root)
    dest.parent.mkdir(parents=True)
    shutil.copytree(generated.tree, dest, symlinks=True, copy_function=os.link)
    return dest


def register_two_generations(root: Path, generated: GeneratedTree) -> tuple[Path, Path]:
    """Generation 1 of `generated`'s tree in `root` registered, then generation 2 over it."""
    layout = Layout(root=root)
    first = root / generated.inside.lstrip("/")
    register_tree(layout, first)
    second = next_generation(first)
    register_tree(layout, second)
    return first, second


def expected_version(tree: Path) -> str:
    stamp = read_stamp(tree)
    return f"{stamp.generation}.{(stamp.build_id or stamp.archive_sha256)[:12]}"


def next_generation(tree: Path) -> Path:
    """Generation N+1 of the same build, as the core makes after a forced regeneration."""
    stamp = read_stamp(tree)
    newer = tree.parent / f"gen-{stamp.generation + 1:04d}-{tree.name.split('-', 2)[2]}"
    shutil.copytree(tree, newer, symlinks=True, copy_function=os.link)
    write_manifest_and_stamp(newer, replace(stamp, generation=stamp.generation + 1))
    return newer


def tool(argv: list[str | Path], ok: bool = True) -> subprocess.CompletedProcess[str]:
    """A packaging tool (dpkg, rpm, pacman, ...) run to its end; with `ok`, it must succeed."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if ok:
        assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    return proc


def link_build(root: Path, generated: GeneratedTree, modules: str = "lib/modules") -> None:
    """What the core's swap leaves: $modules/$KVER/build pointing at the generation."""
    where = root / modules / generated.release
    where.mkdir(parents=True, exist_ok=True)
    (where / "build").symlink_to(generated.inside)
