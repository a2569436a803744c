"""regenerate.py: a generation is the archive byte for byte, plus the files tools look for.

Driven through `kheaders-pkg sync`, the way a generation is made.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import tarfile
from pathlib import Path

from kheaders_pkg.errors import ExitCode
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME
from tests.conftest import CorpusKernel, build_dir, corpus_kernel, run_cli

KH_A, KH_B = "kh-6.1.192-kh-a", "kh-6.1.192-kh-b"
# What the tree adds to the archive; every corpus kernel has BTF, hence vmlinux.h.
ADDED = {
    ".config",
    "include/config/auto.conf",
    "include/config/kernel.release",
    "vmlinux.id",
    "vmlinux.h",
}


def archive_members(archive: Path) -> dict[str, bytes | str]:
    """name -> bytes for files, "-> target" for symlinks (GNU tar's view, via tarfile)."""
    out: dict[str, bytes | str] = {}
    with lzma.open(archive) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
        for m in tar:
            name = m.name.removeprefix("./")
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                out[name] = f.read()
            elif m.issym():
                out[name] = "-> " + m.linkname
    return out


def tree_files(tree: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in tree.rglob("*"):
        rel = str(p.relative_to(tree))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def test_sync_on_empty_root_gives_the_archive_byte_for_byte_plus_added_files(
    tmp_path: Path, kernel_with_archive: CorpusKernel
) -> None:
    k = kernel_with_archive
    root = tmp_path / "root"
    r = run_cli(root, k.sysroot, "check")
    assert r.returncode == ExitCode.NEEDS_SYNC, r.stderr
    r = run_cli(root, k.sysroot, "sync")
    assert r.returncode == 0, r.stderr
    tree = build_dir(root, k.release)
    assert build_dir(root, k.release) == tree
    assert os.readlink(root / "lib/modules" / k.release / "source") == os.readlink(
        root / "lib/modules" / k.release / "build"
    )
    files = tree_files(tree)
    members = archive_members(k.archive)
    ours = {STAMP_NAME, MANIFEST_NAME}
    assert set(files) == set(members) | ADDED | ours
    for name, content in members.items():
        assert files[name] == content, name
    exp = k.expected
    assert files["vmlinux.id"] == exp["build_id"].encode() + b"\n"
    assert files["include/config/kernel.release"] == k.release.encode() + b"\n"
    config = files[".config"]
    assert isinstance(config, bytes)
    assert hashlib.sha256(config).hexdigest() == exp["config_sha256"]
    stamp = json.loads(files[STAMP_NAME])
    assert stamp["build_id"] == exp["build_id"]
    assert stamp["archive_sha256"] == exp["kheaders_tar_xz_sha256"]
    assert stamp["config_sha256"] == exp["config_sha256"]
    assert stamp["release"] == k.release
    assert stamp["file_count"] == len(set(files) - ours)
    r = run_cli(root, k.sysroot, "check")
    assert r.returncode == 0 and r.stdout.startswith("fresh"), r.stdout + r.stderr


def test_stale_tree_with_same_release_is_regenerated_changing_exactly_one_header(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    a, b = corpus_kernel(KH_A), corpus_kernel(KH_B)
    assert run_cli(root, a.sysroot, "sync").returncode == 0
    old = build_dir(root, a.release)
    old_files = tree_files(old)
    r = run_cli(root, b.sysroot, "check")
    assert r.returncode == ExitCode.NEEDS_SYNC
    assert r.stdout.startswith("stale") and "build id" in r.stdout
    status = json.loads(run_cli(root, b.sysroot, "status", "--json").stdout)
    assert status["verdict"] == "stale" and "build_id" in status["differs"]
    assert status["build_id"] == b.expected["build_id"]
    assert status["tree"]["identity"]["build_id"] == a.expected["build_id"]
    assert run_cli(root, b.sysroot, "sync").returncode == 0
    new = build_dir(root, b.release)
    assert new != old and new.name.startswith("gen-0002-")
    new_files = tree_files(new)
    changed = {n for n in set(old_files) | set(new_files) if old_files.get(n) != new_files.get(n)}
    # vmlinux.h too: the two builds' BTF differ (BTF generation is not reproducible).
    assert changed == {
        "include/linux/kernel.h",
        "vmlinux.id",
        "vmlinux.h",
        STAMP_NAME,
        MANIFEST_NAME,
    }
    kernel_h = new_files["include/linux/kernel.h"]
    assert isinstance(kernel_h, bytes) and b"KH_CORPUS_VARIANT 2" in kernel_h
    # Unchanged headers are shared with the previous generation, not copied.
    assert (new / "include/linux/sched.h").stat().st_ino == (
        old / "include/linux/sched.h"
    ).stat().st_ino
    assert run_cli(root, b.sysroot, "check").returncode == 0
