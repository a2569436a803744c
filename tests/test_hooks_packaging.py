"""The tool as a distro package: a real .deb (dpkg-buildpackage) installed into a scratch root puts
every hook in its place with the file triggers; the RPM spec builds and carries its triggers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

HOOK_PATHS = (
    "/lib/systemd/system/kheaders-pkg.service",
    "/lib/systemd/system/kheaders-pkg@.service",
    "/lib/systemd/system/kheaders-pkg-verify.service",
    "/lib/systemd/system/kheaders-pkg-verify.timer",
    "/usr/lib/kheaders-pkg/kheaders-pkg-condition",
    "/usr/lib/kheaders-pkg/kheaders-pkg-verdict.sh",
    "/usr/lib/dracut/modules.d/90kheaders-pkg/module-setup.sh",
    "/usr/lib/dracut/modules.d/90kheaders-pkg/kheaders-pkg-verdict.sh",
    "/usr/share/initramfs-tools/hooks/kheaders-pkg",
    "/usr/share/initramfs-tools/scripts/init-bottom/kheaders-pkg",
    "/etc/kernel/postinst.d/kheaders-pkg",
    "/etc/kernel/postrm.d/kheaders-pkg",
    "/usr/lib/kernel/install.d/35-kheaders-pkg.install",
    "/usr/share/libalpm/hooks/kheaders-pkg.hook",
    "/usr/share/libalpm/hooks/kheaders-pkg-remove.hook",
    "/usr/bin/kheaders-pkg",
    "/usr/share/kheaders-pkg/kheaders_pkg/cli.py",
)


@pytest.fixture
def deb(built_deb: Path) -> Path:
    return built_deb


@pytest.mark.integration
def test_deb_installs_every_hook_in_its_place(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg/updates").mkdir(parents=True)
    (root / "var/lib/dpkg/info").mkdir()
    (root / "var/lib/dpkg/status").touch()
    dpkg = ["dpkg", f"--root={root}", f"--admindir={root}/var/lib/dpkg", "--log=/dev/null"]
    result = subprocess.run(
        [*dpkg, "--force-script-chrootless", "--force-depends", "--unpack", str(deb)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    listed = subprocess.run(
        [*dpkg, "-L", "kheaders-pkg"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # --unpack, not -i: configuring would run deb-systemd-helper, which acts on the host's
    # /etc under --force-script-chrootless. Unpacked conffiles (/etc) wait as *.dpkg-new.
    for path in HOOK_PATHS:
        assert path in listed, path
        on_disk = root / path.lstrip("/")
        if path.startswith("/etc/"):
            on_disk = on_disk.with_name(on_disk.name + ".dpkg-new")
        assert on_disk.is_file(), path
        if not path.endswith((".hook", ".service", ".timer", "kheaders-pkg-verdict.sh", ".py")):
            assert on_disk.stat().st_mode & 0o111, path
    unit = (root / "lib/systemd/system/kheaders-pkg.service").read_text()
    assert "ExecStart=/usr/bin/kheaders-pkg sync\n" in unit


@pytest.mark.integration
def test_deb_declares_file_triggers_and_handles_them(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "ctrl")], check=True)
    triggers = (tmp_path / "ctrl/triggers").read_text().split("\n")
    assert "interest-noawait /lib/modules" in triggers
    assert "interest-noawait /usr/lib/modules" in triggers
    postinst = (tmp_path / "ctrl/postinst").read_text()
    assert "triggered)" in postinst
    assert "systemctl start --no-block" in postinst
    control = (tmp_path / "ctrl/control").read_text()
    assert "Architecture: all" in control
    assert "python3 (>= 3.11), python3-jinja2" in control


@pytest.mark.integration
def test_rpm_spec_builds_with_hooks_and_file_triggers(built_rpm: Path, tmp_path: Path) -> None:
    rpm = built_rpm
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    files = subprocess.run(
        ["rpm", "-qpl", str(rpm)], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for path in (
        "/usr/bin/kheaders-pkg",
        "/usr/lib/systemd/system/kheaders-pkg.service",
        "/usr/lib/systemd/system/kheaders-pkg@.service",
        "/usr/lib/systemd/system/kheaders-pkg-verify.timer",
        "/usr/lib/kheaders-pkg/kheaders-pkg-condition",
        "/usr/lib/dracut/modules.d/90kheaders-pkg/module-setup.sh",
        "/usr/lib/kernel/install.d/35-kheaders-pkg.install",
    ):
        assert path in files, path
    triggers = subprocess.run(
        ["rpm", "-qp", "--filetriggers", str(rpm)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "transfiletriggerin scriptlet (using /bin/sh) -- /usr/lib/modules" in triggers
    assert "transfiletriggerpostun scriptlet (using /bin/sh) -- /usr/lib/modules" in triggers
