"""One table of real states, judged by both copies of the boot verdict: the initramfs shell library
(hooks/lib/kheaders-pkg-verdict.sh, sourced by busybox sh as dracut and initramfs-tools do) and
verdict.py (through the installed `kheaders-pkg status --json`). The shell may only say less
("unknown"), never "fresh" where verdict.py would sync: the ExecCondition= wrapper trusts its
"fresh" and skips the unit."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kheaders_pkg.layout import STAMP_NAME
from tests.boot_states import (
    KH_A,
    RELEASE,
    copy_root,
    foreign_tree,
    fresh,
    missing,
    rebuilt_kernel,
    synced_root,
)
from tests.conftest import REPO, copy_sysroot, run_cli

LIB = REPO / "hooks/lib/kheaders-pkg-verdict.sh"

# The shell's words and verdict.py's kinds that mean the same to the boot unit.
AGREE = {
    "fresh": {"fresh", "foreign-fresh"},
    "missing": {"missing"},
    "stale": {"stale"},
    "foreign": {"foreign-stale", "foreign-fresh"},
}


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synced_root(tmp_path_factory, "shared-verdict")


def _tree(root: Path) -> Path:
    return root / os.readlink(root / "lib/modules" / RELEASE / "build").lstrip("/")


def _changed_config(synced: Path, work: Path) -> tuple[Path, Path]:
    kfs = copy_sysroot(KH_A, work / "kfs")
    config = gzip.decompress((kfs / "proc/config.gz").read_bytes())
    (kfs / "proc/config.gz").write_bytes(gzip.compress(config + b"CONFIG_KH_EXTRA=y\n"))
    return synced, kfs


def _stamp_for_another_release(synced: Path, work: Path) -> tuple[Path, Path]:
    root = copy_root(synced, work)
    stamp = _tree(root) / STAMP_NAME
    data = json.loads(stamp.read_text())
    data["release"] = "6.1.192-other"
    stamp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return root, KH_A.sysroot


def _dangling(synced: Path, work: Path) -> tuple[Path, Path]:
    root = work / "root"
    modules = root / "lib/modules" / RELEASE
    modules.mkdir(parents=True)
    (modules / "build").symlink_to("/usr/src/kheaders-pkg/gone")
    return root, KH_A.sysroot


# state -> (what the shell says, what verdict.py says)
CASES: dict[str, tuple[Callable[[Path, Path], tuple[Path, Path]], str, str]] = {
    "our fresh tree": (fresh, "fresh", "fresh"),
    "no tree": (missing, "missing", "missing"),
    "dangling link": (_dangling, "missing", "missing"),
    "rebuilt kernel, same release": (rebuilt_kernel, "stale", "stale"),
    "changed config": (_changed_config, "stale", "stale"),
    "stamp of another release": (_stamp_for_another_release, "stale", "stale"),
    "foreign tree, this build": (
        foreign_tree(str(KH_A.expected["build_id"])),
        "fresh",
        "foreign-fresh",
    ),
    "foreign tree, another build": (foreign_tree("00" * 20), "foreign", "foreign-stale"),
}


def shell_verdict(root: Path, kfs: Path, rundir: Path) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "KHEADERS_PKG_SYSFS": str(kfs / "sys"),
        "KHEADERS_PKG_PROCFS": str(kfs / "proc"),
        "KHEADERS_PKG_RUNDIR": str(rundir),
    }
    script = f'. "{LIB}"; kheaders_pkg_verdict "{root}"'
    p = subprocess.run(["busybox", "sh", "-c", script], env=env, capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = (rundir / "initramfs-verdict").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)["verdict"]


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(CASES))
def test_shell_and_verdict_py_agree(synced: Path, tmp_path: Path, case: str) -> None:
    make, shell_expected, python_expected = CASES[case]
    root, kfs = make(synced, tmp_path)
    shell = shell_verdict(root, kfs, tmp_path / "run")
    p = run_cli(root, kfs, "status", "--json")
    assert p.returncode == 0, p.stderr
    python = json.loads(p.stdout)["verdict"]
    assert (shell, python) == (shell_expected, python_expected)
    assert python in AGREE[shell]


def test_the_table_covers_every_word_of_the_shell() -> None:
    said = {shell for _, shell, _ in CASES.values()}
    assert said == set(AGREE)
