"""One boot policy (kheaders_pkg/condition.py), applied the same way by `check --condition` and by
the installed ExecCondition= wrapper: skip only when sync has nothing to do; an error runs sync
(which then fails the unit where `systemctl --failed` shows it), with the error line kept on
stderr for the journal. One table of real states, run against both."""

from __future__ import annotations

import gzip
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kheaders_pkg.condition import RUN, SKIP, condition_exit
from kheaders_pkg.errors import ExitCode
from kheaders_pkg.hooks import HookSystem, find_data_dir, stage_hooks
from tests.boot_states import (
    KH_A,
    copy_root,
    foreign_tree,
    fresh,
    missing,
    rebuilt_kernel,
    synced_root,
)
from tests.conftest import TOOL, copy_sysroot, run_cli


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synced_root(tmp_path_factory, "condition")


def _unsupported(synced: Path, work: Path) -> tuple[Path, Path]:
    kfs = copy_sysroot(KH_A, work / "kfs")
    (kfs / "sys/kernel/kheaders.tar.xz").unlink()
    config = gzip.decompress((kfs / "proc/config.gz").read_bytes()).decode()
    lines = [ln for ln in config.splitlines() if "CONFIG_IKHEADERS" not in ln]
    lines.append("# CONFIG_IKHEADERS is not set")
    (kfs / "proc/config.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (work / "root").mkdir()
    return work / "root", kfs


def _bad_notes(synced: Path, work: Path) -> tuple[Path, Path]:
    kfs = copy_sysroot(KH_A, work / "kfs")
    (kfs / "sys/kernel/notes").write_bytes(b"\x04\x00\x00\x00\xff\xff")
    return synced, kfs


def _bad_config_file(synced: Path, work: Path) -> tuple[Path, Path]:
    root = copy_root(synced, work)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/kheaders-pkg.toml").write_text("no_such_key = 1\n")
    return root, KH_A.sysroot


# state -> (check's exit code, whether the line on stderr is an error the journal must keep)
CASES: dict[str, tuple[Callable[[Path, Path], tuple[Path, Path]], ExitCode, bool]] = {
    "fresh": (fresh, ExitCode.OK, False),
    "missing": (missing, ExitCode.NEEDS_SYNC, False),
    "stale": (rebuilt_kernel, ExitCode.NEEDS_SYNC, False),
    "foreign-stale": (foreign_tree("00" * 20), ExitCode.FOREIGN_STALE, False),
    "unsupported": (_unsupported, ExitCode.UNSUPPORTED, False),
    "unreadable kernel notes": (_bad_notes, ExitCode.BAD_KERNEL, True),
    "invalid configuration": (_bad_config_file, ExitCode.CONFIG, True),
}


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    staged = tmp_path_factory.mktemp("wrapper")
    stage_hooks(staged, HookSystem.FEDORA, "/usr/bin/kheaders-pkg", find_data_dir())
    return staged / "usr/lib/kheaders-pkg/kheaders-pkg-condition"


def test_only_nothing_to_do_skips() -> None:
    assert {c for c in ExitCode if condition_exit(c) == SKIP} == {
        ExitCode.OK,
        ExitCode.FOREIGN_STALE,
        ExitCode.UNSUPPORTED,
    }
    assert condition_exit(ExitCode.NEEDS_SYNC) == RUN
    assert condition_exit(ExitCode.INTERNAL) == RUN


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(CASES))
def test_check_condition_and_the_wrapper_decide_alike(
    synced: Path, wrapper: Path, tmp_path: Path, case: str
) -> None:
    make, check_exit, is_error = CASES[case]
    root, kfs = make(synced, tmp_path)
    plain = run_cli(root, kfs, "check")
    assert plain.returncode == check_exit, plain.stdout + plain.stderr
    expected = condition_exit(check_exit)

    cond = run_cli(root, kfs, "check", "--condition")
    assert cond.returncode == expected, cond.stderr
    assert ("error:" in cond.stderr) is is_error, cond.stderr
    assert "Traceback" not in cond.stderr

    # The installed wrapper, calling the installed command for this root (no initramfs verdict).
    shim = tmp_path / "kheaders-pkg"
    shim.write_text(f'#!/bin/sh\nexec "{TOOL}" --root "{root}" --kernel-fs "{kfs}" "$@"\n')
    shim.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "KHEADERS_PKG": str(shim),
        "KHEADERS_PKG_RUNDIR": str(tmp_path / "run"),
    }
    by_wrapper = subprocess.run([str(wrapper)], env=env, capture_output=True, text=True)
    assert by_wrapper.returncode == expected, by_wrapper.stderr
    assert ("error:" in by_wrapper.stderr) is is_error
    assert os.access(wrapper, os.X_OK)
