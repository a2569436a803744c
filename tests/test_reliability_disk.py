"""A full disk and a read-only /lib/modules, on real small filesystems (tmpfs, bind mounts):
exit 8 with one line, staging removed, the previous tree still published and complete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import corpus_kernel, run_cli
from tests.reliability_util import (
    assert_clean_error,
    bind_ro,
    generation_dirs,
    leftovers,
    link_target,
    mounted_tmpfs,
    published_trees,
    tree_problems,
)

KH_A = corpus_kernel("kh-6.1.192-kh-a")
KH_B = corpus_kernel("kh-6.1.192-kh-b")
DEB = corpus_kernel("debian-6.1.0-56-amd64")
RELEASE = KH_A.release


def _fill(fs: Path, leave: int) -> None:
    """Take all but `leave` bytes of the filesystem with one file."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    with open(fs / "filler", "wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        remaining = free - leave
        while remaining > 0:
            remaining -= f.write(chunk[: min(len(chunk), remaining)])


@pytest.mark.slow
def test_full_disk_mid_regeneration_keeps_the_published_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with mounted_tmpfs(root / "usr/src", "128m") as src:
        assert run_cli(root, KH_A.sysroot, "sync").returncode == 0
        old = published_trees(root, RELEASE)["build"]
        # The rebuilt kernel reuses most files by hard link (~2 MB new); a full extraction of
        # another release needs ~50 MB. Leave 512 KiB: both run out mid-way.
        _fill(src, 512 << 10)
        for kernel in (KH_B, DEB):
            p = run_cli(root, kernel.sysroot, "sync", "--force")
            assert_clean_error(p, 8, "no space")
            assert leftovers(root) == []
            assert [n for n in os.listdir(src / "kheaders-pkg") if n.startswith(".")] == [".lock"]
        assert published_trees(root, RELEASE) == {"build": old, "source": old}
        assert tree_problems(old) == []
        assert generation_dirs(root, DEB.release) == []
        # Space back: the next sync converges.
        (src / "filler").unlink()
        assert run_cli(root, KH_B.sysroot, "sync").returncode == 0
        assert run_cli(root, KH_B.sysroot, "check").returncode == 0


def test_first_sync_on_a_too_small_filesystem_publishes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with mounted_tmpfs(root / "usr/src", "8m"):
        p = run_cli(root, KH_A.sysroot, "sync")
        assert_clean_error(p, 8, "no space")
        assert leftovers(root) == []
        assert link_target(root, RELEASE, "build") is None
        assert generation_dirs(root, RELEASE) == []


def test_read_only_lib_modules_fails_cleanly_and_changes_no_link(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with mounted_tmpfs(root / "usr/src", "256m"):
        assert run_cli(root, KH_A.sysroot, "sync").returncode == 0
        before = {n: link_target(root, RELEASE, n) for n in ("build", "source")}
        with bind_ro(root / "lib/modules"):
            p = run_cli(root, KH_B.sysroot, "sync")
            assert_clean_error(p, 8, "read-only")
            assert {n: link_target(root, RELEASE, n) for n in ("build", "source")} == before
            assert len(generation_dirs(root, RELEASE)) == 1  # failed before extracting
            assert leftovers(root) == []
            assert tree_problems(published_trees(root, RELEASE)["build"]) == []
            # The kernel that has no /lib/modules directory yet cannot get one either.
            p = run_cli(root, DEB.sysroot, "sync")
            assert_clean_error(p, 8, "read-only")
            assert generation_dirs(root, DEB.release) == []
        assert run_cli(root, KH_B.sysroot, "sync").returncode == 0
        assert leftovers(root) == []


def test_read_only_trees_filesystem_fails_before_any_work(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with mounted_tmpfs(root / "usr/src", "256m") as src:
        assert run_cli(root, KH_A.sysroot, "sync").returncode == 0
        with bind_ro(src):
            p = run_cli(root, KH_B.sysroot, "sync")
            assert_clean_error(p, 8, "read-only")
        assert tree_problems(published_trees(root, RELEASE)["build"]) == []
