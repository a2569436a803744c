"""Corrupted inputs get a documented outcome (exit code, one line on stderr, never a traceback);
`sync` run twice changes nothing; `restore` after a divert puts back exactly the original links."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import copy_sysroot, corpus_kernel, run_cli
from tests.reliability_util import (
    assert_clean_error,
    generation_dirs,
    leftovers,
    link_target,
    plant_foreign_tree,
    published_trees,
    tree_problems,
)

KH_A = corpus_kernel("kh-6.1.192-kh-a")
RELEASE = KH_A.release


def _garbage(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(n))


KERNEL_FILES: dict[str, tuple[str, Callable[[bytes], bytes], int, str]] = {
    # case: (file under the sysroot, corruption, exit code of check and sync, word in the error)
    "notes cut inside a header": ("sys/kernel/notes", lambda b: b[:7], 7, "truncated"),
    "notes cut inside a name": ("sys/kernel/notes", lambda b: b[:50], 7, "runs past the end"),
    "notes garbage (seed 5)": ("sys/kernel/notes", lambda b: _garbage(400, 5), 7, "notes"),
    "config.gz not gzip": ("proc/config.gz", lambda b: b"hello\n", 7, "gzip"),
    "config.gz truncated": ("proc/config.gz", lambda b: b[:500], 7, "truncated"),
    "config.gz garbage (seed 6)": ("proc/config.gz", lambda b: _garbage(3000, 6), 7, "config"),
    "archive truncated": ("sys/kernel/kheaders.tar.xz", lambda b: b[:1000], 6, "truncated"),
}


@pytest.mark.parametrize("case", sorted(KERNEL_FILES))
def test_corrupted_kernel_files_give_one_documented_line(tmp_path: Path, case: str) -> None:
    rel, corrupt, code, word = KERNEL_FILES[case]
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    (kfs / rel).write_bytes(corrupt((kfs / rel).read_bytes()))
    root = tmp_path / "root"
    if code != 6:  # the archive is read only by sync
        assert_clean_error(run_cli(root, kfs, "check"), code, word)
    assert_clean_error(run_cli(root, kfs, "sync"), code, word)
    assert link_target(root, RELEASE, "build") is None
    assert leftovers(root) == []


def test_empty_notes_fall_back_to_the_archive_digest(tmp_path: Path) -> None:
    """A kernel without a build id note is documented: identity by the archive digest."""
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    (kfs / "sys/kernel/notes").write_bytes(b"")
    root = tmp_path / "root"
    assert run_cli(root, kfs, "sync").returncode == 0
    p = run_cli(root, kfs, "check")
    assert p.returncode == 0 and "archive digest" in p.stdout, p.stdout


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with kh-a synced once; tests copy it (hard links are kept by cp -a)."""
    root = tmp_path_factory.mktemp("synced") / "root"
    assert run_cli(root, KH_A.sysroot, "sync").returncode == 0
    return root


def _copy(src: Path, dest: Path) -> Path:
    import subprocess

    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
    return dest


def _stamp(root: Path) -> Path:
    return published_trees(root, RELEASE)["build"] / ".kheaders-pkg.json"


def test_truncated_stamp_makes_the_tree_stale_and_sync_replaces_it(
    synced: Path, tmp_path: Path
) -> None:
    root = _copy(synced, tmp_path / "root")
    stamp = _stamp(root)
    stamp.write_bytes(stamp.read_bytes()[:40])
    p = run_cli(root, KH_A.sysroot, "check")
    assert p.returncode == 3 and "stamp is unreadable" in p.stdout, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert run_cli(root, KH_A.sysroot, "sync").returncode == 0
    assert run_cli(root, KH_A.sysroot, "check").returncode == 0
    assert tree_problems(published_trees(root, RELEASE)["build"]) == []


def test_stamp_with_unknown_fields_is_tolerated(synced: Path, tmp_path: Path) -> None:
    """stamp.py: unknown keys are ignored so an older tool reads a newer tool's stamp."""
    root = _copy(synced, tmp_path / "root")
    stamp = _stamp(root)
    data = json.loads(stamp.read_text())
    data["added_by_a_newer_tool"] = {"x": [1, 2]}
    stamp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    p = run_cli(root, KH_A.sysroot, "check")
    assert p.returncode == 0, p.stdout + p.stderr
    p = run_cli(root, KH_A.sysroot, "sync")
    assert p.returncode == 0 and "regenerated" not in p.stdout


def test_build_symlink_loop_is_reported_and_replaced(tmp_path: Path) -> None:
    root = tmp_path / "root"
    mdir = root / "lib/modules" / RELEASE
    mdir.mkdir(parents=True)
    os.symlink("build", mdir / "build")
    p = run_cli(root, KH_A.sysroot, "check")
    assert p.returncode == 3 and "loop" in p.stdout, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    p = run_cli(root, KH_A.sysroot, "sync")
    assert p.returncode == 0, p.stderr
    assert tree_problems(published_trees(root, RELEASE)["build"]) == []
    # The link we replaced is remembered; restore puts the loop back exactly.
    assert run_cli(root, None, "restore").returncode == 0
    assert os.readlink(mdir / "build") == "build"


def test_dangling_source_is_stale_and_sync_repoints_it(synced: Path, tmp_path: Path) -> None:
    root = _copy(synced, tmp_path / "root")
    source = root / "lib/modules" / RELEASE / "source"
    source.unlink()
    os.symlink("/usr/src/does-not-exist", source)
    p = run_cli(root, KH_A.sysroot, "check")
    assert p.returncode == 3, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert run_cli(root, KH_A.sysroot, "sync").returncode == 0
    trees = published_trees(root, RELEASE)
    assert trees["build"] == trees["source"]
    assert run_cli(root, KH_A.sysroot, "check").returncode == 0


# --- idempotence ------------------------------------------------------------------------------


def _identity(p: Path) -> tuple[int, int]:
    st = os.lstat(p)
    return st.st_ino, st.st_mtime_ns


def test_second_sync_changes_nothing(synced: Path, tmp_path: Path) -> None:
    root = _copy(synced, tmp_path / "root")
    mdir = root / "lib/modules" / RELEASE
    gen = published_trees(root, RELEASE)["build"]
    watched = [gen, gen / ".kheaders-pkg.json", mdir, mdir / "build", mdir / "source"]
    before = {p: _identity(p) for p in watched}
    gens = generation_dirs(root, RELEASE)
    p = run_cli(root, KH_A.sysroot, "sync")
    assert p.returncode == 0 and p.stdout.startswith("fresh"), p.stdout
    assert {p: _identity(p) for p in watched} == before
    assert generation_dirs(root, RELEASE) == gens


def test_restore_after_divert_puts_back_the_exact_original_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    originals = {
        "build": f"../../../usr/src/linux-headers-{RELEASE}",
        "source": f"/usr/src/linux-headers-{RELEASE}/./",
    }
    plant_foreign_tree(root, RELEASE, originals)
    mdir = root / "lib/modules" / RELEASE
    assert run_cli(root, KH_A.sysroot, "check").returncode == 4
    p = run_cli(root, KH_A.sysroot, "sync")
    assert p.returncode == 0, p.stderr
    assert tree_problems(published_trees(root, RELEASE)["build"]) == []
    # A second sync of a diverted, fresh tree changes nothing and keeps the first record.
    record = root / f"var/lib/kheaders-pkg/links/{RELEASE}.json"
    assert json.loads(record.read_text()) == originals
    assert run_cli(root, KH_A.sysroot, "sync").returncode == 0
    p = run_cli(root, None, "restore")
    assert p.returncode == 0, p.stderr
    assert {n: os.readlink(mdir / n) for n in originals} == originals
    assert not record.exists()
    # Restoring again is a no-op.
    assert run_cli(root, None, "restore").returncode == 0
    assert {n: os.readlink(mdir / n) for n in originals} == originals
