"""Many runs at once against one root: one regeneration, documented exit codes, readers never see
a missing or partial tree."""

from __future__ import annotations

import json
import random
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import corpus_kernel, run_cli, start_cli
from tests.reliability_util import (
    generation_dirs,
    leftovers,
    link_target,
    mounted_tmpfs,
    plant_foreign_tree,
    published_trees,
    read_loop,
    tree_problems,
)

KH_A = corpus_kernel("kh-6.1.192-kh-a")
KH_B = corpus_kernel("kh-6.1.192-kh-b")
RELEASE = KH_A.release
READERS = 4


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "fs", "1g") as fs:
        root = fs / "root"
        root.mkdir()
        yield root


def _storm(
    procs: list[tuple[str, subprocess.Popen[str]]],
    root: Path,
    marker: str | None = None,
) -> tuple[list[tuple[str, int, str, str]], list[str], int]:
    """Wait for every process while readers loop; returns (results, reader problems, reads)."""
    stop = threading.Event()
    problems: list[str] = []
    reads: list[int] = []
    threads = [
        threading.Thread(
            target=lambda s=seed: reads.append(read_loop(root, RELEASE, stop, s, problems, marker))
        )
        for seed in range(READERS)
    ]
    for t in threads:
        t.start()
    results = []
    try:
        for what, p in procs:
            out, err = p.communicate(timeout=600)
            results.append((what, p.returncode, out, err))
    finally:
        stop.set()
        for t in threads:
            t.join()
    return results, problems, sum(reads)


@pytest.mark.slow
def test_sixteen_syncs_at_once_regenerate_exactly_once(scratch: Path) -> None:
    # A fresh root: 16 first syncs, one tree.
    procs = [("sync", start_cli(scratch, KH_A.sysroot, "sync")) for _ in range(16)]
    results = [(w, p.wait(timeout=600), p.communicate()) for w, p in procs]
    for _, code, (_out, err) in results:
        assert code == 0, err
        assert "Traceback" not in err
    assert len(generation_dirs(scratch, RELEASE)) == 1
    assert sum("regenerated" in out for _, _, (out, _) in results) == 1
    # kh-a published; 16 syncs for the rebuilt kernel kh-b while readers use the tree.
    procs = [("sync", start_cli(scratch, KH_B.sysroot, "sync")) for _ in range(16)]
    results2, problems, reads = _storm(procs, scratch)
    for _, code, _, err in results2:
        assert code == 0, err
        assert "Traceback" not in err
    assert sum("regenerated" in out for _, _, out, _ in results2) == 1
    gens = generation_dirs(scratch, RELEASE)
    assert len(gens) == 2, gens  # the new one and the previous one (keep_generations = 1)
    assert reads > 0
    assert not problems, problems[:10]
    trees = published_trees(scratch, RELEASE)
    assert trees["build"] == trees["source"]
    assert trees["build"].name == gens[-1]
    assert tree_problems(trees["build"]) == []
    assert leftovers(scratch) == []
    assert run_cli(scratch, KH_B.sysroot, "check").returncode == 0


def _foreign_tree(root: Path) -> dict[str, str]:
    """A distro-looking tree for the release that does not match: something to divert."""
    links = {
        "build": f"../../../usr/src/linux-headers-{RELEASE}",
        "source": f"../../../usr/src/linux-headers-{RELEASE}/.",
    }
    tree = plant_foreign_tree(root, RELEASE, links)
    (tree / "include/linux/kconfig.h").write_text("/* distro */\n")
    (tree / "FOREIGN").write_text("marker\n")
    return links


# Exit codes each command may give in the storm, all documented (errors.ExitCode).
ALLOWED = {"sync": {0}, "gc": {0}, "restore": {0}, "check": {0, 3, 4}}


@pytest.mark.slow
def test_sync_gc_check_restore_storm_keeps_a_consistent_root(scratch: Path) -> None:
    seed = 4242
    rng = random.Random(seed)
    originals = _foreign_tree(scratch)
    commands = ["sync"] * 5 + ["gc"] * 3 + ["check"] * 4 + ["restore"] * 4
    total = 0
    for wave in range(3):
        rng.shuffle(commands)
        procs = [(c, start_cli(scratch, KH_A.sysroot, c)) for c in commands]
        total += len(procs)
        results, problems, reads = _storm(procs, scratch, marker="FOREIGN")
        for what, code, out, err in results:
            detail = f"seed {seed} wave {wave}: {what} exit {code}\n{out}{err}"
            assert code in ALLOWED[what], detail
            assert "Traceback" not in err, detail
        assert not problems, f"seed {seed} wave {wave}: {problems[:10]}"
        assert reads > 0
        # Consistent after each wave: diverted (record, our complete tree) or restored exactly.
        record = scratch / f"var/lib/kheaders-pkg/links/{RELEASE}.json"
        links = {n: link_target(scratch, RELEASE, n) for n in ("build", "source")}
        if record.exists():
            assert json.loads(record.read_text()) == originals
            trees = published_trees(scratch, RELEASE)
            assert trees["build"] == trees["source"], links
            assert tree_problems(trees["build"]) == []
        else:
            assert links == originals, f"seed {seed} wave {wave}"
        assert leftovers(scratch) == []
    print(f"storm: {total} processes in 3 waves, {READERS} readers")
    # And from whatever state it ended in: restore gives back exactly the original links.
    assert run_cli(scratch, None, "restore").returncode == 0
    assert {n: link_target(scratch, RELEASE, n) for n in ("build", "source")} == originals
    assert run_cli(scratch, KH_A.sysroot, "check").returncode == 4
