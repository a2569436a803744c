"""The dracut module builds into a real initramfs for a corpus kernel built with IKHEADERS=m."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import corpus_kernel

REPO = Path(__file__).resolve().parent.parent
DRACUT = Path("/usr/lib/dracut")


def dracut_base_with(base: Path, our_module: Path) -> Path:
    """A dracutbasedir (honoured from the environment by dracut 059) holding the system's
    files and modules plus `our_module` (linked), so a test never writes into /usr/lib/dracut."""
    base.mkdir()
    for entry in DRACUT.iterdir():
        if entry.name != "modules.d":
            (base / entry.name).symlink_to(entry)
    modules = base / "modules.d"
    modules.mkdir()
    for module in (DRACUT / "modules.d").iterdir():
        (modules / module.name).symlink_to(module)
    (modules / our_module.name).symlink_to(our_module)
    return base


@pytest.mark.integration
@pytest.mark.parametrize("name", ["kh-6.1.192-kh-a-mod", "debian-6.1.0-56-amd64"])
def test_dracut_image_holds_kheaders_ko_and_our_hook(name: str, tmp_path: Path) -> None:
    kernel = corpus_kernel(name)
    moddir = tmp_path / "root/lib/modules" / kernel.release
    (moddir / "kernel/kernel").mkdir(parents=True)
    shutil.copy(kernel.modules / "kheaders.ko", moddir / "kernel/kernel/kheaders.ko")
    subprocess.run(["depmod", "-b", str(tmp_path / "root"), kernel.release], check=True)
    confdir = tmp_path / "conf.d"
    confdir.mkdir()
    image = tmp_path / "initrd.img"
    env = {
        **os.environ,
        "dracutbasedir": str(
            dracut_base_with(tmp_path / "dracut", REPO / "hooks/dracut/90kheaders-pkg")
        ),
        "KHEADERS_PKG_HOOKLIB": str(REPO / "hooks/lib/kheaders-pkg-verdict.sh"),
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        [
            "dracut",
            "--no-hostonly",
            "--kver",
            kernel.release,
            "--kmoddir",
            str(moddir),
            "--modules",
            "base kheaders-pkg",
            "--add",
            "kheaders-pkg",
            "--conf",
            "/dev/null",
            "--confdir",
            str(confdir),
            "--no-compress",
            "-f",
            str(image),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line.upper()]
    assert errors == [], result.stderr
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"],
        stdin=image.open("rb"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert f"usr/lib/modules/{kernel.release}/kernel/kernel/kheaders.ko" in listing or (
        f"lib/modules/{kernel.release}/kernel/kernel/kheaders.ko" in listing
    )
    assert "usr/lib/dracut/hooks/pre-pivot/90-kheaders-pkg-verdict.sh" in listing
    assert "usr/lib/kheaders-pkg/kheaders-pkg-verdict.sh" in listing
    for tool in ("od", "sha256sum", "gzip", "readlink"):
        assert any(p.endswith(f"bin/{tool}") for p in listing), tool


@pytest.mark.integration
def test_dracut_module_skips_kernels_without_kheaders_ko(tmp_path: Path) -> None:
    moddir = tmp_path / "lib/modules/6.1.192-kh"
    (moddir / "kernel/kernel").mkdir(parents=True)
    script = (
        f'. "{REPO}/hooks/dracut/90kheaders-pkg/module-setup.sh"; '
        f'srcmods="{moddir}"; check; echo "rc=$?"'
    )
    env = {**os.environ, "KHEADERS_PKG_HOOKLIB": str(REPO / "hooks/lib/kheaders-pkg-verdict.sh")}
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True).stdout
    assert out == "rc=1\n"
    (moddir / "kernel/kernel/kheaders.ko.xz").write_bytes(b"")
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True).stdout
    assert out == "rc=0\n"
