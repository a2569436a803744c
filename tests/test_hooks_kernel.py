"""The kernel package hooks drive the real tool against a scratch root holding a kernel that is
not running: postinst.d and kernel-install `add` generate its tree (then `check` against that
kernel's sysroot says fresh, as at first boot), postrm.d and `remove` take it away. They never
fail the kernel install."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kheaders_pkg.hooks import HookSystem, find_data_dir, stage_hooks
from tests.conftest import (
    TOOL,
    copy_sysroot,
    corpus_kernel,
    installed_kernel_root,
    run_cli,
)


@pytest.fixture
def hooks(tmp_path: Path) -> Path:
    dest = tmp_path / "hooks"
    stage_hooks(dest, HookSystem.GENERIC, str(TOOL), find_data_dir())
    return dest


def run(cmd: list[str], root: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KHEADERS_PKG": str(TOOL), "KHEADERS_PKG_ROOT": str(root), **extra}
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def check(root: Path, kfs: Path) -> int:
    return run_cli(root, kfs, "check").returncode


KERNELS = pytest.mark.parametrize("name", ["debian-6.1.0-56-amd64", "kh-6.1.192-kh-a-mod"])


@pytest.mark.integration
@KERNELS
def test_postinst_generates_the_tree_and_chains_header_postinst(
    name: str, tmp_path: Path, hooks: Path
) -> None:
    kernel = corpus_kernel(name)
    root = installed_kernel_root(kernel, tmp_path / "root")
    chained = tmp_path / "chained"
    header_hooks = root / "etc/kernel/header_postinst.d"
    header_hooks.mkdir(parents=True)
    (header_hooks / "record").write_text(f'#!/bin/sh\necho "$1" >> "{chained}"\n')
    (header_hooks / "record").chmod(0o755)
    kfs = copy_sysroot(kernel, tmp_path / "kfs")
    assert check(root, kfs) == 3  # needs sync

    postinst = hooks / "etc/kernel/postinst.d/kheaders-pkg"
    result = run([str(postinst), kernel.release, f"/boot/vmlinuz-{kernel.release}"], root)
    assert result.returncode == 0, result.stderr
    assert "no headers generated" not in result.stderr, result.stderr
    build = root / "lib/modules" / kernel.release / "build"
    assert build.is_symlink()
    assert os.readlink(build).startswith(f"/usr/src/kheaders-pkg/{kernel.release}/")
    assert check(root, kfs) == 0  # fresh at first boot
    assert chained.read_text() == f"{kernel.release}\n"

    # Again: nothing to do, so header_postinst.d is not run a second time.
    assert run([str(postinst), kernel.release, ""], root).returncode == 0
    assert chained.read_text() == f"{kernel.release}\n"

    postrm = hooks / "etc/kernel/postrm.d/kheaders-pkg"
    result = run([str(postrm), kernel.release, f"/boot/vmlinuz-{kernel.release}"], root)
    assert result.returncode == 0, result.stderr
    assert not build.is_symlink() and not build.exists()
    assert not any((root / "usr/src/kheaders-pkg").glob(f"{kernel.release}/gen-*"))


@pytest.mark.integration
@KERNELS
def test_kernel_install_plugin_adds_and_removes(name: str, tmp_path: Path, hooks: Path) -> None:
    kernel = corpus_kernel(name)
    root = installed_kernel_root(kernel, tmp_path / "root")
    kfs = copy_sysroot(kernel, tmp_path / "kfs")
    plugin = hooks / "usr/lib/kernel/install.d/35-kheaders-pkg.install"
    image = f"/boot/vmlinuz-{kernel.release}"
    result = run(
        [str(plugin), "add", kernel.release, str(tmp_path / "entry"), image],
        root,
        KERNEL_INSTALL_VERBOSE="1",
    )
    assert result.returncode == 0, result.stderr
    assert f"sync --kernel {kernel.release}" in result.stdout
    assert check(root, kfs) == 0
    result = run([str(plugin), "remove", kernel.release, str(tmp_path / "entry")], root)
    assert result.returncode == 0, result.stderr
    assert not (root / "lib/modules" / kernel.release / "build").is_symlink()


@pytest.mark.integration
def test_hooks_never_fail_a_kernel_install(tmp_path: Path, hooks: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    for hook, args in (
        ("etc/kernel/postinst.d/kheaders-pkg", ["9.9.9-none", ""]),
        ("etc/kernel/postrm.d/kheaders-pkg", ["9.9.9-none", ""]),
        ("usr/lib/kernel/install.d/35-kheaders-pkg.install", ["add", "9.9.9-none", "/x", "/y"]),
    ):
        assert run([str(hooks / hook), *args], root).returncode == 0, hook


@pytest.mark.integration
def test_pacman_script_reads_targets(tmp_path: Path, hooks: Path) -> None:
    kernel = corpus_kernel("kh-6.1.192-kh-a-mod")
    root = installed_kernel_root(kernel, tmp_path / "root")
    # Arch keeps the image in the modules directory.
    (root / "boot" / f"vmlinuz-{kernel.release}").rename(
        root / "lib/modules" / kernel.release / "vmlinuz"
    )
    script = hooks / "usr/share/libalpm/scripts/kheaders-pkg"
    targets = f"usr/lib/modules/{kernel.release}/vmlinuz\n"
    env = {**os.environ, "KHEADERS_PKG": str(TOOL), "KHEADERS_PKG_ROOT": str(root)}
    result = subprocess.run(
        [str(script), "sync"], input=targets, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert check(root, copy_sysroot(kernel, tmp_path / "kfs")) == 0
    subprocess.run([str(script), "remove"], input=targets, env=env, check=True, text=True)
    assert not (root / "lib/modules" / kernel.release / "build").is_symlink()
