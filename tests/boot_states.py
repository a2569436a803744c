"""Real roots in the states the boot-time verdicts are tabled against: test_condition (the
ExecCondition= wrapper's exit codes) and test_verdict_shared (the initramfs shell library against
verdict.py). Each state is `make(synced, work) -> (root, kernel filesystem)`, where `synced` is a
root the real `sync` made from kh-a once per module and `work` is the test's own directory."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import corpus_kernel, run_cli

KH_A = corpus_kernel("kh-6.1.192-kh-a")
KH_B = corpus_kernel("kh-6.1.192-kh-b")  # the same release, another build
RELEASE = KH_A.release

MakeState = Callable[[Path, Path], tuple[Path, Path]]


def synced_root(factory: pytest.TempPathFactory, name: str) -> Path:
    root = factory.mktemp(name) / "root"
    root.mkdir()
    p = run_cli(root, KH_A.sysroot, "-q", "sync")
    assert p.returncode == 0, p.stderr
    return root


def copy_root(synced: Path, work: Path) -> Path:
    """A copy of the synced root that a state may change."""
    root = work / "root"
    subprocess.run(["cp", "-a", str(synced), str(root)], check=True)
    return root


def fresh(synced: Path, work: Path) -> tuple[Path, Path]:
    return synced, KH_A.sysroot


def missing(synced: Path, work: Path) -> tuple[Path, Path]:
    (work / "root").mkdir()
    return work / "root", KH_A.sysroot


def rebuilt_kernel(synced: Path, work: Path) -> tuple[Path, Path]:
    return synced, KH_B.sysroot


def foreign_tree(build_id: str) -> MakeState:
    """A tree we did not make, naming `build_id` in vmlinux.id as Fedora's kernel-devel does."""

    def make(synced: Path, work: Path) -> tuple[Path, Path]:
        root = work / "root"
        tree = root / "usr/src/kernels" / RELEASE
        (tree / "include/linux").mkdir(parents=True)
        (tree / "vmlinux.id").write_text(build_id + "\n")
        modules = root / "lib/modules" / RELEASE
        modules.mkdir(parents=True)
        (modules / "build").symlink_to(f"/usr/src/kernels/{RELEASE}")
        return root, KH_A.sysroot

    return make
