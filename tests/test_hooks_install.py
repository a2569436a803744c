"""install_hooks()/remove_hooks(): the right files in the right places, recorded, and removed
exactly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kheaders_pkg.errors import FilesystemError, UsageError
from kheaders_pkg.hooks import (
    HookSystem,
    detect_system,
    find_data_dir,
    install_hooks,
    manifest_path,
    remove_hooks,
)
from kheaders_pkg.layout import Layout
from tests.conftest import cli_argv, run_cli

EXE = "/opt/kh/bin/kheaders-pkg"


def _layout(tmp_path: Path, os_id: str | None = None) -> Layout:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    if os_id:
        (root / "etc/os-release").write_text(f'ID={os_id}\nID_LIKE="x y"\n')
    return Layout(root=root)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_data_dir_is_found_from_the_checkout() -> None:
    assert (find_data_dir() / "hooks/lib/kheaders-pkg-verdict.sh").is_file()


@pytest.mark.parametrize(
    ("os_id", "system"),
    [
        ("debian", "debian"),
        ("ubuntu", "debian"),
        ("fedora", "fedora"),
        ("arch", "arch"),
        ("nixos", "generic"),
        (None, "generic"),
    ],
)
def test_system_is_detected_from_os_release(tmp_path: Path, os_id: str | None, system: str) -> None:
    assert detect_system(_layout(tmp_path, os_id)) == HookSystem(system)


def test_debian_gets_units_initramfs_and_kernel_hooks_with_our_executable(tmp_path: Path) -> None:
    layout = _layout(tmp_path, "debian")
    written = install_hooks(layout, None, EXE)
    files = _files(layout.root)
    assert {
        "usr/lib/systemd/system/kheaders-pkg.service",
        "usr/lib/systemd/system/kheaders-pkg@.service",
        "usr/lib/kheaders-pkg/kheaders-pkg-condition",
        "usr/lib/kheaders-pkg/kheaders-pkg-verdict.sh",
        "usr/lib/dracut/modules.d/90kheaders-pkg/module-setup.sh",
        "usr/share/initramfs-tools/hooks/kheaders-pkg",
        "usr/share/initramfs-tools/scripts/init-bottom/kheaders-pkg",
        "etc/kernel/postinst.d/kheaders-pkg",
        "etc/kernel/postrm.d/kheaders-pkg",
        "usr/lib/kernel/install.d/35-kheaders-pkg.install",
    } <= files
    assert not any("libalpm" in f for f in files)
    assert len(written) == len(files - {"etc/os-release", "var/lib/kheaders-pkg/hooks.json"})
    unit = (layout.root / "usr/lib/systemd/system/kheaders-pkg.service").read_text()
    assert f"ExecStart={EXE} sync\n" in unit
    postinst = layout.root / "etc/kernel/postinst.d/kheaders-pkg"
    assert f"KHEADERS_PKG=${{KHEADERS_PKG:-{EXE}}}" in postinst.read_text()
    assert postinst.stat().st_mode & 0o777 == 0o755


def test_arch_gets_pacman_hooks(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    install_hooks(layout, HookSystem.ARCH, EXE)
    files = _files(layout.root)
    assert "usr/share/libalpm/hooks/kheaders-pkg.hook" in files
    assert "usr/share/libalpm/hooks/kheaders-pkg-remove.hook" in files
    assert "etc/kernel/postinst.d/kheaders-pkg" not in files
    script = (layout.root / "usr/share/libalpm/scripts/kheaders-pkg").read_text()
    assert EXE in script


def test_remove_takes_exactly_what_was_laid_down(tmp_path: Path) -> None:
    layout = _layout(tmp_path, "fedora")
    # Someone else's files in the same directories stay.
    other = layout.root / "usr/lib/kernel/install.d/50-other.install"
    other.parent.mkdir(parents=True)
    other.write_text("other\n")
    before = _files(layout.root)
    install_hooks(layout, None, EXE)
    assert manifest_path(layout).is_file()
    removed = remove_hooks(layout)
    assert removed
    assert _files(layout.root) == before
    # Directories we created are gone, the ones that were there stay.
    assert not (layout.root / "usr/lib/dracut").exists()
    assert other.parent.is_dir()
    assert remove_hooks(layout) == []


def test_remove_keeps_a_file_the_admin_changed(tmp_path: Path) -> None:
    layout = _layout(tmp_path, "fedora")
    install_hooks(layout, None, EXE)
    unit = layout.root / "usr/lib/systemd/system/kheaders-pkg.service"
    unit.write_text("edited\n")
    remove_hooks(layout)
    assert unit.read_text() == "edited\n"
    assert manifest_path(layout).is_file()  # still records it


def test_install_refuses_to_overwrite_a_file_it_did_not_write(tmp_path: Path) -> None:
    layout = _layout(tmp_path, "fedora")
    unit = layout.root / "usr/lib/systemd/system/kheaders-pkg.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("packaged\n")
    with pytest.raises(FilesystemError):
        install_hooks(layout, None, EXE)
    assert unit.read_text() == "packaged\n"
    assert not manifest_path(layout).exists()


def test_reinstall_for_another_system_drops_the_hooks_no_longer_needed(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    install_hooks(layout, HookSystem.DEBIAN, EXE)
    install_hooks(layout, HookSystem.FEDORA, EXE)
    files = _files(layout.root)
    assert "etc/kernel/postinst.d/kheaders-pkg" not in files
    assert "usr/lib/kernel/install.d/35-kheaders-pkg.install" in files
    remove_hooks(layout)
    assert _files(layout.root) == set()


@pytest.mark.parametrize("exe", ["kheaders-pkg", "/usr/bin/kh pkg", "/usr/bin/x;rm", "/a/../b"])
def test_unsafe_executable_is_refused(tmp_path: Path, exe: str) -> None:
    with pytest.raises(UsageError):
        install_hooks(_layout(tmp_path), HookSystem.GENERIC, exe)


def test_the_command_lays_hooks_into_a_root_that_does_not_exist_yet_and_takes_them_back(
    tmp_path: Path,
) -> None:
    root = tmp_path / "image" / "root"  # an image being assembled: not there yet
    done = run_cli(root, None, "hooks", "install", "--system", "debian")
    assert done.returncode == 0, done.stderr
    assert (root / "usr/lib/systemd/system/kheaders-pkg.service").is_file()
    done = run_cli(root, None, "hooks", "remove")
    assert done.returncode == 0, done.stderr
    assert not (root / "usr").exists() and not (root / "etc").exists()


@pytest.mark.integration
def test_the_command_on_a_read_only_root_is_one_line_exit_8_and_writes_nothing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    argv = cli_argv(root, None, "hooks", "install")
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(root), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 8, done.stderr
    assert done.stderr.count("\n") == 1 and "Read-only file system" in done.stderr
    assert "internal error" not in done.stderr
    assert sorted(p.name for p in root.iterdir()) == ["etc"]
