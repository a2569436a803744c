"""The systemd units verify offline with no diagnostics, and their sandbox scores as recorded."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kheaders_pkg.hooks import HookSystem, find_data_dir, stage_hooks

UNITS = (
    "kheaders-pkg.service",
    "kheaders-pkg@.service",
    "kheaders-pkg-verify.service",
    "kheaders-pkg-verify.timer",
)
SERVICES = tuple(u for u in UNITS if u.endswith(".service"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with the system's units (sysinit.target, modprobe@.service...), ours rendered for
    /usr/bin/kheaders-pkg, and a stand-in executable so Exec lines point at a real file."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    stage_hooks(root, HookSystem.FEDORA, "/usr/bin/kheaders-pkg", find_data_dir())
    exe = root / "usr/bin/kheaders-pkg"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    # The boot unit's ExecStartPost= runs the systemd-sysext refresh through /bin/sh.
    (root / "bin").mkdir()
    shutil.copy("/bin/sh", root / "bin/sh")
    return root


@pytest.mark.integration
@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_with_empty_stderr(root: Path, unit: str) -> None:
    path = root / "usr/lib/systemd/system" / unit
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.integration
def test_boot_unit_keeps_what_the_job_needs(root: Path) -> None:
    text = (root / "usr/lib/systemd/system/kheaders-pkg.service").read_text()
    assert "\nProtectKernelModules=" not in text  # it loads kheaders.ko
    assert "ExecCondition=/usr/lib/kheaders-pkg/kheaders-pkg-condition" in text
    assert "ExecStart=/usr/bin/kheaders-pkg sync\n" in text
    # Image-based systems (ostree too): the extension is written, the merge runs privileged
    # only after a sync that left the flag (tests/test_sysext.py runs that command for real).
    assert "ConditionPathExists=!/run/ostree-booted" not in text
    assert "\nStateDirectory=kheaders-pkg extensions\n" in text
    assert "\nExecStartPost=+/bin/sh -c " in text and "systemd-sysext refresh" in text
    assert "\nSystemCallFilter=@system-service @module\n" in text  # still no @mount for sync
    template = (root / "usr/lib/systemd/system/kheaders-pkg@.service").read_text()
    assert "ExecStart=/usr/bin/kheaders-pkg sync --kernel %I\n" in template


@pytest.mark.integration
def test_verify_timer_runs_sync_verify_weekly_at_a_random_time(root: Path) -> None:
    units = root / "usr/lib/systemd/system"
    timer = (units / "kheaders-pkg-verify.timer").read_text()
    assert "OnCalendar=weekly\n" in timer and "RandomizedDelaySec=" in timer
    assert "WantedBy=timers.target" in timer
    service = (units / "kheaders-pkg-verify.service").read_text()
    assert "ExecStart=/usr/bin/kheaders-pkg sync --verify\n" in service
    # The next elapse is computed by systemd itself from the calendar spec.
    result = subprocess.run(
        ["systemd-analyze", "calendar", "weekly"], capture_output=True, text=True, check=True
    )
    assert "Next elapse:" in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("unit", SERVICES)
def test_security_exposure_is_ok(root: Path, unit: str) -> None:
    path = root / "usr/lib/systemd/system" / unit
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", str(path)],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    # Recorded for the README: 2.2 OK with systemd 252.
    assert float(match.group(1)) <= 2.5, match.group(0)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("check_exit", "condition_exit"),
    # `check --condition` decides (0 run, 1 skip); anything else (usage 2, not found 127, a
    # signal, 255) runs sync, where an error fails the unit visibly, never a quiet skip.
    [(0, 0), (1, 1), (2, 0), (127, 0), (143, 0), (255, 0)],
)
def test_condition_passes_on_check_condition_and_never_skips_on_the_unexpected(
    root: Path, tmp_path: Path, check_exit: int, condition_exit: int
) -> None:
    fake = tmp_path / "kheaders-pkg"
    fake.write_text(f'#!/bin/sh\necho "$@" >"{tmp_path}/args"\nexit {check_exit}\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "KHEADERS_PKG": str(fake), "KHEADERS_PKG_RUNDIR": str(tmp_path)}
    cond = root / "usr/lib/kheaders-pkg/kheaders-pkg-condition"
    result = subprocess.run([str(cond)], env=env, capture_output=True)
    assert result.returncode == condition_exit
    assert (tmp_path / "args").read_text() == "check --condition\n"


@pytest.mark.integration
def test_condition_trusts_a_fresh_initramfs_verdict_for_this_release(
    root: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "kheaders-pkg"
    fake.write_text("#!/bin/sh\nexit 3\n")  # would say: needs sync
    fake.chmod(0o755)
    release = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "initramfs-verdict").write_text(f"verdict=fresh\nreason=x\nrelease={release}\n")
    env = {"PATH": "/usr/bin:/bin", "KHEADERS_PKG": str(fake), "KHEADERS_PKG_RUNDIR": str(tmp_path)}
    cond = root / "usr/lib/kheaders-pkg/kheaders-pkg-condition"
    assert subprocess.run([str(cond)], env=env, capture_output=True).returncode == 1
    (tmp_path / "initramfs-verdict").write_text("verdict=fresh\nrelease=other\n")
    assert subprocess.run([str(cond)], env=env, capture_output=True).returncode == 0
