"""The command line as users reach it: the installed console script `.venv/bin/kheaders-pkg`, and
the same checkout installed with plain `pip install` into a virtual environment that does not see
the distribution's Python packages (no rpm bindings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kheaders_pkg.errors import MISSING_PART_ADVICE, ExitCode
from tests.conftest import REPO, TOOL, CorpusKernel, copy_sysroot, corpus_kernel, run_cli


def run(*args: str | Path, exe: Path = TOOL) -> subprocess.CompletedProcess[str]:
    """The argv as given, of `exe`: for what conftest.run_cli does not say (options after the
    command, a command without --root, another install's console script)."""
    return subprocess.run(
        [str(exe), *map(str, args)], capture_output=True, text=True, check=False, timeout=300
    )


def assert_one_line_error(p: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    detail = f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert p.returncode == code, detail
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, detail
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kheaders-pkg: error: "), detail
    for word in words:
        assert word in lines[0], detail


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, CorpusKernel]:
    """A Debian-looking scratch root with a fresh tree for kh-6.1.192-kh-a, and its kernel-fs."""
    work = tmp_path_factory.mktemp("cli")
    kernel = corpus_kernel("kh-6.1.192-kh-a")
    kfs = copy_sysroot(kernel, work / "kfs")
    root = work / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    p = run_cli(root, kfs, "sync")
    assert p.returncode == 0, p.stderr
    return root, kfs, kernel


def test_console_script_is_installed() -> None:
    assert TOOL.is_file() and os.access(TOOL, os.X_OK)


def _imported(exe: Path, *args: str | Path) -> list[str]:
    """The modules a run of `exe` imports, as `python -X importtime` names them."""
    python = exe.parent / "python"
    p = subprocess.run(
        [str(python), "-X", "importtime", str(exe), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    return [
        line.rsplit("|", 1)[1].strip()
        for line in p.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]


def test_the_fresh_check_imports_neither_re_nor_the_cli(
    synced: tuple[Path, Path, CorpusKernel],
) -> None:
    root, kfs, _ = synced
    names = _imported(TOOL, "--root", root, "--kernel-fs", kfs, "check")
    assert "kheaders_pkg.fastcheck" in names
    assert not {"re", "kheaders_pkg.cli", "argparse", "json"} & set(names), names


def test_hooks_install_and_remove_through_the_command(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    p = run_cli(root, None, "hooks", "install", "--executable", "/opt/kh/bin/kheaders-pkg")
    assert p.returncode == 0, p.stderr
    unit = root / "usr/lib/systemd/system/kheaders-pkg.service"
    assert "ExecStart=/opt/kh/bin/kheaders-pkg sync" in unit.read_text()
    assert p.stdout.count("installed ") >= 5
    # Without --executable the hooks name a kheaders-pkg that exists.
    p = run("hooks", "install", "--root", root)
    assert p.returncode == 0, p.stderr
    exe = unit.read_text().split("ExecStart=", 1)[1].split()[0]
    assert os.access(exe, os.X_OK), exe
    p = run_cli(root, None, "hooks", "remove")
    assert p.returncode == 0, p.stderr
    assert not unit.exists()


def test_global_options_are_accepted_after_the_command(
    synced: tuple[Path, Path, CorpusKernel],
) -> None:
    root, kfs, kernel = synced
    before = run_cli(root, kfs, "status", "--json")
    after = run("status", "--json", "--root", root, "--kernel-fs", kfs)
    mixed = run("--root", root, "status", "--kernel-fs", kfs, "--json")
    assert before.returncode == after.returncode == mixed.returncode == 0, after.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout) == json.loads(mixed.stdout)
    assert json.loads(after.stdout)["release"] == kernel.release
    check = run("check", "-q", "--root", root, "--kernel-fs", kfs)
    assert check.returncode == 0 and check.stdout == "", check.stderr


def test_an_option_given_before_the_command_is_not_reset_by_it(
    synced: tuple[Path, Path, CorpusKernel],
) -> None:
    root, kfs, _ = synced
    p = run_cli(root, kfs, "-q", "sync")
    assert p.returncode == 0 and p.stdout == "", p.stdout


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["check"]])
def test_a_closed_pipe_ends_quietly_with_the_usual_status(
    synced: tuple[Path, Path, CorpusKernel], command: list[str]
) -> None:
    root, kfs, _ = synced
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before we write: every write is EPIPE
    try:
        p = subprocess.run(
            [str(TOOL), "--root", str(root), "--kernel-fs", str(kfs), *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(write_end)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""


def test_status_piped_to_head_prints_one_line(synced: tuple[Path, Path, CorpusKernel]) -> None:
    root, kfs, kernel = synced
    p = subprocess.run(
        f"'{TOOL}' status --root '{root}' --kernel-fs '{kfs}' | head -1; "
        'echo "status=${PIPESTATUS[0]}"',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
    )
    assert p.stdout == f"kernel:  {kernel.release}\nstatus=0\n", p.stderr
    assert p.stderr == ""


@pytest.mark.parametrize("part", sorted(MISSING_PART_ADVICE))
def test_a_missing_optional_part_is_one_line_saying_what_to_install(
    tmp_path: Path, part: str
) -> None:
    # The import fails the way it does where the package is not installed.
    code = (
        "import sys\n"
        f"sys.modules[{part!r}] = None\n"
        "from kheaders_pkg.cli import main\n"
        "from kheaders_pkg.errors import missing_part\n"
        f"err = ModuleNotFoundError(name={part!r})\n"
        "print(missing_part(err))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.startswith("this command needs "), p.stdout
    if part == "jinja2":
        p = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; sys.modules['jinja2'] = None\n"
                "from kheaders_pkg.entry import main; sys.exit(main())",
                "--root",
                str(tmp_path),
                "hooks",
                "install",
                "--system",
                "generic",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert_one_line_error(p, ExitCode.UNSUPPORTED, "jinja2", "install")


# --- a plain virtual environment: `pip install .` without the distribution's packages ---------


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("plain") / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    p = subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(REPO)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return venv / "bin/kheaders-pkg"


@pytest.mark.integration
def test_plain_venv_fresh_check_imports_neither_re_nor_the_cli(
    plain_venv: Path, synced: tuple[Path, Path, CorpusKernel]
) -> None:
    root, kfs, _ = synced
    names = _imported(plain_venv, "--root", root, "--kernel-fs", kfs, "check")
    assert "kheaders_pkg.fastcheck" in names
    assert not {"re", "kheaders_pkg.cli", "argparse"} & set(names), names


@pytest.mark.integration
def test_plain_venv_has_no_rpm_bindings(plain_venv: Path) -> None:
    python = plain_venv.parent / "python"
    p = subprocess.run([str(python), "-c", "import rpm"], capture_output=True, check=False)
    assert p.returncode != 0


@pytest.mark.integration
def test_rpm_commands_in_a_plain_venv_say_to_install_the_bindings(
    plain_venv: Path, tmp_path: Path
) -> None:
    kfs = copy_sysroot(corpus_kernel("kh-6.1.192-kh-a"), tmp_path / "kfs")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(
        ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "--initdb"],
        check=True,
        capture_output=True,
    )
    assert run("--root", root, "--kernel-fs", kfs, "sync", exe=plain_venv).returncode == 0
    # The breakage: `emit --format rpm` needs no bindings (rpmbuild makes the package).
    emit: list[str | Path] = ["emit", "--format", "rpm", "--out", tmp_path]
    p = run("--root", root, "--kernel-fs", kfs, *emit, exe=plain_venv)
    assert p.returncode == 0 and p.stdout.strip().endswith(".rpm"), p.stderr
    # Reading the rpm database does: one line naming the package to install.
    p = run("--root", root, "--kernel-fs", kfs, "remove", "--kernel", "6.1.192-kh", exe=plain_venv)
    assert_one_line_error(p, ExitCode.UNSUPPORTED, "python3-rpm")


@pytest.mark.integration
def test_plain_venv_runs_the_everyday_commands(
    plain_venv: Path, synced: tuple[Path, Path, CorpusKernel], tmp_path: Path
) -> None:
    root, kfs, kernel = synced
    assert run("--root", root, "--kernel-fs", kfs, "check", exe=plain_venv).returncode == 0
    p = run("status", "--json", "--root", root, "--kernel-fs", kfs, exe=plain_venv)
    assert p.returncode == 0 and json.loads(p.stdout)["verdict"] == "fresh", p.stderr
    hooks_root = tmp_path / "hroot"
    hooks_root.mkdir()
    p = run("--root", hooks_root, "hooks", "install", "--system", "generic", exe=plain_venv)
    assert p.returncode == 0, p.stderr
    p = run(
        "--root",
        root,
        "--kernel-fs",
        kfs,
        "emit",
        "--format",
        "deb",
        "--out",
        tmp_path,
        exe=plain_venv,
    )
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()).name.startswith(f"kheaders-tree-{kernel.release}")
