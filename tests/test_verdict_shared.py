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
from tests.conftest import REPO, copy_sysroot, corpus_kernel, run_cli

LIB = REPO / "hooks/lib/kheaders-pkg-verdict.sh"
KH_A = corpus_kernel("kh-6.1.192-kh-a")
KH_B = corpus_kernel("kh-6.1.192-kh-b")
RELEASE = KH_A.release

# The shell's words and verdict.py's kinds that mean the same to the boot unit.
AGREE = {
    "fresh": {"fresh", "foreign-fresh"},
    "missing": {"missing"},
    "stale": {"stale"},
    "foreign": {"foreign-stale", "foreign-fresh"},
}


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shared-verdict") / "root"
    root.mkdir()
    p = run_cli(root, KH_A.sysroot, "-q", "sync")
    assert p.returncode == 0, p.stderr
    return root


def _copy(synced: Path, work: Path) -> Path:
    root = work / "root"
    subprocess.run(["cp", "-a", str(synced), str(root)], check=True)
    return root


def _tree(root: Path) -> Path:
    return root / os.readlink(root / "lib/modules" / RELEASE / "build").lstrip("/")


def _fresh(synced: Path, work: Path) -> tuple[Path, Path]:
    return synced, KH_A.sysroot


def _missing(synced: Path, work: Path) -> tuple[Path, Path]:
    (work / "root").mkdir()
    return work / "root", KH_A.sysroot


def _rebuilt_kernel(synced: Path, work: Path) -> tuple[Path, Path]:
    return synced, KH_B.sysroot


def _changed_config(synced: Path, work: Path) -> tuple[Path, Path]:
    kfs = copy_sysroot(KH_A, work / "kfs")
    config = gzip.decompress((kfs / "proc/config.gz").read_bytes())
    (kfs / "proc/config.gz").write_bytes(gzip.compress(config + b"CONFIG_KH_EXTRA=y\n"))
    return synced, kfs


def _stamp_for_another_release(synced: Path, work: Path) -> tuple[Path, Path]:
    root = _copy(synced, work)
    stamp = _tree(root) / STAMP_NAME
    data = json.loads(stamp.read_text())
    data["release"] = "6.1.192-other"
    stamp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return root, KH_A.sysroot


def _foreign(build_id: str) -> Callable[[Path, Path], tuple[Path, Path]]:
    def make(synced: Path, work: Path) -> tuple[Path, Path]:
        root = work / "root"
        tree = root / "usr/src/kernels" / RELEASE
        (tree / "include/linux").mkdir(parents=True)
        (tree / "vmlinux.id").write_text(build_id + "\n")  # as Fedora's kernel-devel ships it
        modules = root / "lib/modules" / RELEASE
        modules.mkdir(parents=True)
        (modules / "build").symlink_to(f"/usr/src/kernels/{RELEASE}")
        return root, KH_A.sysroot

    return make


def _dangling(synced: Path, work: Path) -> tuple[Path, Path]:
    root = work / "root"
    modules = root / "lib/modules" / RELEASE
    modules.mkdir(parents=True)
    (modules / "build").symlink_to("/usr/src/kheaders-pkg/gone")
    return root, KH_A.sysroot


# state -> (what the shell says, what verdict.py says)
CASES: dict[str, tuple[Callable[[Path, Path], tuple[Path, Path]], str, str]] = {
    "our fresh tree": (_fresh, "fresh", "fresh"),
    "no tree": (_missing, "missing", "missing"),
    "dangling link": (_dangling, "missing", "missing"),
    "rebuilt kernel, same release": (_rebuilt_kernel, "stale", "stale"),
    "changed config": (_changed_config, "stale", "stale"),
    "stamp of another release": (_stamp_for_another_release, "stale", "stale"),
    "foreign tree, this build": (
        _foreign(str(KH_A.expected["build_id"])),
        "fresh",
        "foreign-fresh",
    ),
    "foreign tree, another build": (_foreign("00" * 20), "foreign", "foreign-stale"),
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
