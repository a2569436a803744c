"""A second kernel's tree hard-links what the first kernel's tree already published
(archive/reuse.py), through the installed console script, on two real kernels built from the same
6.1.192 source (Debian's 6.1.0-56 and the kh build): a changed published file is never
propagated, removing the old kernel leaves the new tree whole, reuse spans /usr and /var (publish =
sysext), and `status` counts shared blocks once (as GNU du does)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kheaders_pkg.errors import ExitCode
from tests.conftest import build_dir, copy_sysroot, corpus_kernel, run_cli
from tests.test_sysext import image_root, ro_usr

OLD, NEW = corpus_kernel("debian-6.1.0-56-amd64"), corpus_kernel("kh-6.1.192-kh-a")
HEADER = "include/linux/list.h"  # byte-identical in both kernels


def _ok(p: subprocess.CompletedProcess[str]) -> None:
    assert p.returncode == 0, p.stderr


def _files(tree: Path) -> dict[str, os.stat_result]:
    out = {}
    for dirpath, _, names in os.walk(tree):
        for n in names:
            p = Path(dirpath, n)
            out[str(p.relative_to(tree))] = p.lstat()
    return out


def _shared(a: Path, b: Path) -> set[str]:
    """Paths of b whose inode is also in a."""
    inodes = {st.st_ino for st in _files(a).values()}
    return {p for p, st in _files(b).items() if st.st_ino in inodes}


@pytest.fixture(scope="module")
def kfs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("kfs")
    return {k.release: copy_sysroot(k, base / k.release) for k in (OLD, NEW)}


@pytest.fixture(scope="module")
def synced_old(tmp_path_factory: pytest.TempPathFactory, kfs: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("old") / "root"
    root.mkdir()
    _ok(run_cli(root, kfs[OLD.release], "sync"))
    return root


@pytest.fixture
def root_with_old(tmp_path: Path, synced_old: Path) -> Path:
    """A private copy of a root holding the old kernel's tree (cp -a keeps links and modes)."""
    subprocess.run(["cp", "-a", str(synced_old), str(tmp_path / "root")], check=True)
    return tmp_path / "root"


def test_the_new_kernels_tree_links_the_files_the_old_one_published(
    root_with_old: Path, kfs: dict[str, Path]
) -> None:
    root = root_with_old
    _ok(run_cli(root, kfs[NEW.release], "sync"))

    old, new = build_dir(root, OLD.release), build_dir(root, NEW.release)
    shared = _shared(old, new)
    # The same 6.1.192 source: nearly every header is shared (the rest are generated per config).
    assert len(shared) > 0.8 * len(_files(new))
    assert HEADER in shared
    for r in (OLD, NEW):
        _ok(run_cli(root, kfs[r.release], "verify"))


def test_a_changed_file_in_the_old_tree_is_written_fresh_not_linked(
    root_with_old: Path, kfs: dict[str, Path]
) -> None:
    root = root_with_old
    old = build_dir(root, OLD.release)
    victim = old / HEADER
    st = victim.stat()
    data = victim.read_bytes()
    # A same-size edit with the mtime put back: size and mtime alone would not see it.
    victim.write_bytes(data.replace(b"struct", b"strUct", 1))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))

    _ok(run_cli(root, kfs[NEW.release], "sync"))

    new = build_dir(root, NEW.release)
    assert (new / HEADER).stat().st_ino != victim.stat().st_ino
    assert (new / HEADER).read_bytes() == data
    assert len(_shared(old, new)) > 1000  # everything else is still shared
    _ok(run_cli(root, kfs[NEW.release], "verify"))
    p = run_cli(root, kfs[OLD.release], "verify")
    assert p.returncode == ExitCode.DAMAGED, p.stderr
    assert HEADER in p.stderr


def test_removing_the_old_kernel_leaves_the_new_tree_complete(
    root_with_old: Path, kfs: dict[str, Path]
) -> None:
    root = root_with_old
    _ok(run_cli(root, kfs[NEW.release], "sync"))
    old = build_dir(root, OLD.release)

    _ok(run_cli(root, None, "remove", "--kernel", OLD.release))
    _ok(run_cli(root, kfs[NEW.release], "gc"))

    assert not old.exists()
    assert not (root / "usr/src/kheaders-pkg" / OLD.release).exists()
    _ok(run_cli(root, kfs[NEW.release], "verify"))
    new = build_dir(root, NEW.release)
    assert (new / HEADER).stat().st_nlink == 1  # the inode outlived the old tree


def test_status_counts_blocks_shared_between_kernels_once(
    root_with_old: Path, kfs: dict[str, Path]
) -> None:
    root = root_with_old
    _ok(run_cli(root, kfs[NEW.release], "sync"))
    trees = [build_dir(root, r.release) for r in (OLD, NEW)]

    p = run_cli(root, kfs[NEW.release], "status", "--json", "--disk")
    _ok(p)
    disk = json.loads(p.stdout)["disk"]

    def du(*args: str) -> int:
        out = subprocess.run(
            ["du", "-s", "-c", "-B1", *args, *map(str, trees)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(out.splitlines()[-1].split()[0])

    assert disk["trees"] == 2
    assert disk["bytes"] == du()  # GNU du counts a hard-linked inode once
    assert disk["listed_bytes"] == du("-l")  # ... and once per name with -l
    assert disk["shared_bytes"] > disk["bytes"] // 3
    text = run_cli(root, kfs[NEW.release], "status", "--disk")
    _ok(text)
    assert "in 2 trees of all kernels" in text.stdout
    plain = run_cli(root, kfs[NEW.release], "status", "--json")
    _ok(plain)
    assert "disk" not in json.loads(plain.stdout)  # only when asked: it stats every file


def test_reuse_spans_the_sysext_trees_under_var_and_the_trees_under_usr(
    tmp_path: Path, kfs: dict[str, Path]
) -> None:
    """The old kernel was published as a systemd-sysext extension (its generation under /var);
    the new one in place (under /usr/src): the new tree links the old files across the two."""
    root = image_root(tmp_path / "root")
    sysext = tmp_path / "sysext.toml"
    sysext.write_text('publish = "sysext"\n')
    _ok(run_cli(root, kfs[OLD.release], "sync", config=sysext))
    _ok(run_cli(root, kfs[NEW.release], "sync"))

    [old] = (root / "var/lib/kheaders-pkg/trees" / OLD.release).iterdir()
    new = build_dir(root, NEW.release)
    assert new.is_relative_to(root / "usr/src/kheaders-pkg")
    assert len(_shared(old, new)) > 0.8 * len(_files(new))
    _ok(run_cli(root, kfs[NEW.release], "verify"))


def test_a_read_only_usr_cannot_be_linked_from_and_the_tree_is_written_whole(
    tmp_path: Path, kfs: dict[str, Path]
) -> None:
    """/usr read-only (a bind mount): link(2) from it fails with EXDEV, so every file is written
    and the new tree under /var is complete."""
    root = image_root(tmp_path / "root")
    _ok(run_cli(root, kfs[OLD.release], "sync"))
    _ok(ro_usr(root, kfs[NEW.release], "sync"))

    old = build_dir(root, OLD.release)
    assert old.is_relative_to(root / "usr/src/kheaders-pkg")
    [new] = (root / "var/lib/kheaders-pkg/trees" / NEW.release).iterdir()
    assert _shared(old, new) == set()
    _ok(ro_usr(root, kfs[NEW.release], "verify"))
