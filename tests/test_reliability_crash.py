"""A `sync` SIGKILLed at any moment leaves build/source on a complete tree; the next run converges.

Three ways to pick the moment, mixed in every chain of trials:
- a named point (KHEADERS_PKG_CRASH_AT, publish.crash_point): the narrow windows around syncfs,
  the generation rename and each link swap, deterministically;
- a random delay after start (extraction, hashing, anything in between);
- a random delay after the staging directory appears (inside the extraction).

States alternate: each trial starts from a converged root with one tree published and kills a sync
that would replace it (kh-a <-> kh-b, same release, different build; Debian kernels with --force).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import corpus_kernel, run_cli, start_cli
from tests.reliability_util import (
    generation_dirs,
    leftovers,
    link_target,
    mounted_tmpfs,
    published_trees,
    tree_problems,
)

POINTS = (
    "after-extract",
    "before-stamp",
    "before-syncfs",
    "after-syncfs",
    "after-rename-generation",
    "before-swap-build",
    "after-swap-build",  # between the build and the source swap
    "before-swap-source",
    "after-swap-source",
    "before-gc",
    "after-trash-rename",  # gc removing an old generation
)
MODES = ("point", "random", "staging")


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """The scratch root on its own tmpfs: syncfs(2) then flushes only this test's writes."""
    with mounted_tmpfs(tmp_path / "fs", "2g") as fs:
        yield fs


@dataclass
class Chain:
    root: Path
    kernels: tuple[Path, ...]  # sysroots to alternate between
    release: str
    extra: tuple[str, ...]  # extra `sync` arguments (--force for a single kernel)
    rng: random.Random
    seed: int
    trials: int = 0
    kills: int = 0
    points_hit: dict[str, int] | None = None

    def sysroot(self, n: int) -> Path:
        return self.kernels[n % len(self.kernels)]


def _kill_sync(chain: Chain, kfs: Path, mode: str, span: float) -> tuple[str, int | None]:
    """Start a sync and kill it as `mode` says; returns a description and the exit status."""
    root = chain.root
    if mode == "point":
        point = chain.rng.choice(POINTS)
        p = run_cli(root, kfs, "sync", *chain.extra, crash_at=point)
        if p.returncode == -signal.SIGKILL:
            assert chain.points_hit is not None
            chain.points_hit[point] = chain.points_hit.get(point, 0) + 1
        else:
            assert p.returncode == 0, f"point {point}: {p.returncode} {p.stderr}"
        return f"point {point}", p.returncode
    proc = start_cli(root, kfs, "sync", *chain.extra)
    try:
        if mode == "random":
            delay = chain.rng.uniform(0.0, span)
            what = f"random {delay:.3f}s"
            time.sleep(delay)
        else:
            delay = chain.rng.uniform(0.0, 0.4)
            what = f"staging+{delay:.3f}s"
            trees = root / "usr/src/kheaders-pkg"
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if trees.is_dir() and any(n.startswith(".staging-") for n in os.listdir(trees)):
                    break
                time.sleep(0.002)
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, stderr = proc.communicate(timeout=300)
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 0, f"{what}: exit {proc.returncode}: {stderr}"
    return what, proc.returncode


def _run_chain(chain: Chain, n: int, span: float) -> list[str]:
    """n kill trials; returns the failures (each names seed, trial and moment)."""
    failures: list[str] = []
    root, release = chain.root, chain.release
    for i in range(n):
        before = {k: link_target(root, release, k) for k in ("build", "source")}
        gens_before = set(generation_dirs(root, release))
        kfs = chain.sysroot(i + 1)
        mode = MODES[i % len(MODES)]
        what, code = _kill_sync(chain, kfs, mode, span)
        chain.trials += 1
        chain.kills += code == -signal.SIGKILL
        tag = f"seed {chain.seed} trial {i} ({kfs.parent.name}, {what}, exit {code})"
        # 1. Right after the kill: each link on the old tree or on a new complete generation.
        verified: set[Path] = set()
        for name, tree in published_trees(root, release).items():
            target = link_target(root, release, name)
            new = target is not None and os.path.basename(target) not in gens_before
            if target != before[name] and not new:
                failures.append(f"{tag}: {name} -> {target}, neither old nor new")
            if tree not in verified and (problems := tree_problems(tree)):
                failures.append(f"{tag}: {name} tree incomplete: {problems[:3]}")
            verified.add(tree)
        if set(published_trees(root, release)) != {"build", "source"}:
            failures.append(f"{tag}: a link disappeared: {published_trees(root, release)}")
        # 2. The next sync converges and cleans up.
        p = run_cli(root, kfs, "sync")
        if p.returncode != 0 or "Traceback" in p.stderr:
            failures.append(f"{tag}: converging sync exit {p.returncode}: {p.stderr.strip()}")
        trees = published_trees(root, release)
        if trees.get("build") is None or trees.get("build") != trees.get("source"):
            failures.append(f"{tag}: after converging, build/source disagree: {trees}")
        elif problems := tree_problems(trees["build"]):
            failures.append(f"{tag}: after converging, tree incomplete: {problems[:3]}")
        if left := leftovers(root):
            failures.append(f"{tag}: leftovers after converging: {left}")
        c = run_cli(root, kfs, "check")
        if c.returncode != 0:
            failures.append(f"{tag}: check after converging: {c.returncode} {c.stdout}")
        if failures and failures[-1].startswith(tag):
            # Put the root back in a known state so the remaining trials still mean something.
            run_cli(root, kfs, "sync", "--force")
    return failures


def _chain(root: Path, names: tuple[str, ...], seed: int, extra: tuple[str, ...] = ()) -> Chain:
    kernels = tuple(corpus_kernel(n).sysroot for n in names)
    release = corpus_kernel(names[0]).release
    p = run_cli(root, kernels[0], "sync")
    assert p.returncode == 0, p.stderr
    return Chain(root, kernels, release, extra, random.Random(seed), seed, points_hit={})


def _span(chain: Chain) -> float:
    """How long one replacing sync takes here: random kills are drawn from 0 to a bit over it."""
    start = time.monotonic()
    p = run_cli(chain.root, chain.sysroot(1), "sync", *chain.extra)
    assert p.returncode == 0, p.stderr
    span = (time.monotonic() - start) * 1.2
    p = run_cli(chain.root, chain.sysroot(0), "sync", *chain.extra)  # back to the first kernel
    assert p.returncode == 0, p.stderr
    return span


def _run_chains(
    fs: Path, specs: list[tuple[tuple[str, ...], int, tuple[str, ...]]], n: int
) -> tuple[list[Chain], list[str]]:
    """One chain per spec, each in its own root, run side by side (the work is in subprocesses)."""

    def one(i: int) -> tuple[Chain, list[str]]:
        names, seed, extra = specs[i]
        root = fs / f"root{i}"
        root.mkdir()
        chain = _chain(root, names, seed, extra)
        return chain, _run_chain(chain, n, _span(chain))

    with ThreadPoolExecutor(len(specs)) as pool:
        results = list(pool.map(one, range(len(specs))))
    return [c for c, _ in results], [f for _, fs_ in results for f in fs_]


@pytest.mark.slow
def test_sync_killed_anywhere_leaves_a_complete_tree_and_converges_kh(scratch: Path) -> None:
    kh = ("kh-6.1.192-kh-a", "kh-6.1.192-kh-b")
    chains, failures = _run_chains(scratch, [(kh, 20261122, ()), (kh, 20261123, ())], 80)
    hit: dict[str, int] = {}
    for c in chains:
        print(f"kh chain seed {c.seed}: {c.trials} trials, {c.kills} killed, {c.points_hit}")
        for k, v in (c.points_hit or {}).items():
            hit[k] = hit.get(k, 0) + v
    assert not failures, "\n".join(failures)
    assert sum(c.trials for c in chains) == 160
    # Every named point was actually reached and killed at least once.
    assert set(hit) == set(POINTS), hit


@pytest.mark.slow
def test_sync_killed_anywhere_leaves_a_complete_tree_and_converges_debian(scratch: Path) -> None:
    specs: list[tuple[tuple[str, ...], int, tuple[str, ...]]] = [
        (("debian-6.1.0-56-amd64",), 611, ("--force",)),
        (("debian-6.12.107+deb13-amd64",), 612, ("--force",)),
    ]
    chains, failures = _run_chains(scratch, specs, 20)
    for c in chains:
        print(f"{c.kernels[0].parent.name}: {c.trials} trials, {c.kills} killed, {c.points_hit}")
    assert not failures, "\n".join(failures)
    assert sum(c.trials for c in chains) == 40


# Cross-kernel reuse (archive/reuse.py): the new kernel's extraction hard-links the old kernel's
# files. A kill while linking, or a kill of `remove --kernel OLD` once they share inodes, must
# leave every published tree complete, and the next run converges.
CROSS_POINTS = ("after-extract", "before-stamp", "before-syncfs", "after-rename-generation")


@pytest.mark.slow
def test_second_kernel_sync_killed_while_linking_leaves_both_trees_complete(
    scratch: Path,
) -> None:
    old, new = corpus_kernel("debian-6.1.0-56-amd64"), corpus_kernel("kh-6.1.192-kh-a")
    root = scratch / "root"
    root.mkdir()
    assert run_cli(root, old.sysroot, "sync").returncode == 0
    old_tree = published_trees(root, old.release)["build"]
    rng = random.Random(20261202)
    chain = Chain(root, (new.sysroot,), new.release, (), rng, 20261202, points_hit={})
    failures: list[str] = []
    code: int | None
    for i, mode in enumerate(("point", "point", "staging", "staging", "random", "remove-old")):
        if mode == "remove-old":
            assert run_cli(root, new.sysroot, "sync").returncode == 0
            shared = published_trees(root, new.release)["build"] / "include/linux/list.h"
            assert shared.stat().st_nlink >= 2  # the inode is the old kernel's
            point = "after-trash-rename"
            p = run_cli(root, None, "remove", "--kernel", old.release, crash_at=point)
            what, code = f"remove --kernel OLD at {point}", p.returncode
        else:
            what, code = _kill_sync(chain, new.sysroot, mode, 1.5)
        tag = f"trial {i} ({what}, exit {code})"
        if mode != "remove-old" and (problems := tree_problems(old_tree)):
            failures.append(f"{tag}: the old kernel's tree changed: {problems[:3]}")
        for tree in published_trees(root, new.release).values():
            if problems := tree_problems(tree):
                failures.append(f"{tag}: the new kernel's tree incomplete: {problems[:3]}")
        # Converge: the new kernel's tree complete, nothing left behind.
        p = run_cli(root, new.sysroot, "sync")
        if p.returncode != 0:
            failures.append(f"{tag}: converging sync exit {p.returncode}: {p.stderr.strip()}")
        new_tree = published_trees(root, new.release).get("build")
        if new_tree is None or (problems := tree_problems(new_tree)):
            failures.append(f"{tag}: after converging, new tree incomplete: {new_tree}")
        if mode != "remove-old":
            if run_cli(root, None, "remove", "--kernel", new.release).returncode != 0:
                failures.append(f"{tag}: remove --kernel NEW failed")
        if left := leftovers(root):
            failures.append(f"{tag}: leftovers: {left}")
    assert not failures, "\n".join(failures)
    # The last trial: the old kernel is gone (the converging run cleaned up its trash).
    assert not old_tree.exists()
    assert chain.points_hit, "no named point was reached"
