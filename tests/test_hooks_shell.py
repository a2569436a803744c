"""Every shell file we ship (hooks/, rendered templates, debian maintainer scripts) is POSIX sh
that `sh -n` and shellcheck accept."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kheaders_pkg.hooks import HookSystem, find_data_dir, stage_hooks

REPO = Path(__file__).resolve().parent.parent


def _shell_files(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(10) == b"#!/bin/sh\n":
                    found.append(path)
    return found


def _repo_shell_files() -> list[Path]:
    files = _shell_files(REPO / "hooks")
    # The README's commands and CI's entry point are shell too.
    files += _shell_files(REPO / "scripts") + _shell_files(REPO / ".ci")
    files += _shell_files(REPO / "tests" / "e2e" / "guest")
    files += [
        REPO / "debian" / name
        for name in ("kheaders-pkg.postinst", "kheaders-pkg.prerm", "kheaders-pkg.postrm")
    ]
    # The library is sourced, never run: it has no #! line but is shell all the same.
    files.append(REPO / "hooks/lib/kheaders-pkg-verdict.sh")
    return sorted(set(files))


def _check(path: Path) -> None:
    syntax = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0 and not syntax.stderr, f"{path}: {syntax.stderr}"
    # -x with the file's own directory as source path, so `. lib` directives are followed.
    lint = subprocess.run(
        ["shellcheck", "-s", "sh", "-x", "-P", "SCRIPTDIR", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, f"{path}:\n{lint.stdout}{lint.stderr}"


def test_repo_has_the_shell_files_we_expect() -> None:
    names = {p.relative_to(REPO).as_posix() for p in _repo_shell_files()}
    assert {
        "hooks/lib/kheaders-pkg-verdict.sh",
        "hooks/dracut/90kheaders-pkg/module-setup.sh",
        "hooks/dracut/90kheaders-pkg/kheaders-pkg-verdict.sh",
        "hooks/initramfs-tools/hooks/kheaders-pkg",
        "hooks/initramfs-tools/scripts/init-bottom/kheaders-pkg",
        "debian/kheaders-pkg.postinst",
        "scripts/setup",
        "scripts/demo",
        ".ci/run",
    } <= names


@pytest.mark.integration
@pytest.mark.parametrize("path", _repo_shell_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_repo_shell_file_passes_sh_n_and_shellcheck(path: Path) -> None:
    _check(path)


@pytest.mark.integration
def test_rendered_shell_hooks_pass_sh_n_and_shellcheck(tmp_path: Path) -> None:
    stage_hooks(tmp_path, HookSystem.GENERIC, "/usr/bin/kheaders-pkg", find_data_dir())
    files = _shell_files(tmp_path)
    # condition, postinst.d, postrm.d, kernel-install, alpm, dracut x2, initramfs-tools x2.
    assert len(files) == 9
    for path in files:
        if path.name == "kheaders-pkg-verdict.sh" and "dracut" in path.parts:
            continue  # sources the library by its installed path; checked in the repo above
        if "init-bottom" in path.parts:
            continue  # same
        _check(path)
