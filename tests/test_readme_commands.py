"""The README's usage block and exit-code table, held to the installed console script: every
command and option it shows exists, every command runs for real through `.venv/bin/kheaders-pkg`
(one row per command below; a command added to the README without a row fails), and every exit
code it documents is the tool's."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kheaders_pkg.cli import EPILOG
from kheaders_pkg.errors import ExitCode
from tests.conftest import REPO, copy_sysroot, corpus_kernel, make_dpkg_root
from tests.test_cli_installed import run

README = (REPO / "README.md").read_text()
KH_A = corpus_kernel("kh-6.1.192-kh-a")


def usage_block() -> str:
    section = README.split("## Usage", 1)[1]
    return section.split("```", 2)[1]


def usage_commands() -> dict[str, set[str]]:
    """{command: the options its README line shows} (continuation lines are part of it)."""
    commands: dict[str, set[str]] = {}
    current = None
    for line in usage_block().splitlines():
        m = re.match(r"^  ([a-z]+)\b", line)
        if m:
            current = m.group(1)
            commands[current] = set()
        if current is not None:
            commands[current] |= set(re.findall(r"--[a-z][a-z-]*", line.split("   ")[0] + line))
    return commands


def readme_exit_codes() -> set[int]:
    section = README.split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}


class Env:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.kfs = copy_sysroot(KH_A, work / "kfs")
        self.root = make_dpkg_root(work / "root")
        self.release = KH_A.release

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return run("--root", self.root, "--kernel-fs", self.kfs, *args)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    e = Env(tmp_path_factory.mktemp("readme"))
    p = e.cli("sync")
    assert p.returncode == 0, p.stderr
    return e


# One row per README command: what to run, and the exit codes that mean "it works".
RUNS: dict[str, list[tuple[Callable[[Env], list[str | Path]], int]]] = {
    "status": [(lambda e: ["status"], 0), (lambda e: ["status", "--json"], 0)],
    "check": [(lambda e: ["check"], 0), (lambda e: ["check", "--condition"], 1)],
    "sync": [
        (lambda e: ["sync", "--dry-run"], 0),
        (lambda e: ["sync"], 0),
        (lambda e: ["sync", "--verify"], 0),
        (lambda e: ["sync", "--kernel", e.release, "--dry-run"], 0),
    ],
    "verify": [(lambda e: ["verify"], 0), (lambda e: ["verify", "--json"], 0)],
    "gc": [(lambda e: ["gc"], 0)],
    "restore": [(lambda e: ["restore"], 0)],
    "emit": [(lambda e: ["emit", "--format", "deb", "--out", e.work], 0)],
    "register": [(lambda e: ["register", "--format", "deb"], 0)],
    "hooks": [
        (lambda e: ["hooks", "install", "--system", "generic", "--executable", "/usr/bin/x"], 0),
        (lambda e: ["hooks", "remove"], 0),
    ],
    # Last: it takes the tree away.
    "remove": [
        (lambda e: ["remove", "--kernel", e.release], 0),
        (lambda e: ["remove", "--all"], 0),
    ],
}


def test_every_readme_command_has_a_run() -> None:
    assert set(usage_commands()) == set(RUNS)


@pytest.mark.parametrize("command", sorted(usage_commands()))
def test_readme_options_exist_in_the_installed_command(command: str) -> None:
    p = run(command, "--help")
    assert p.returncode == 0, p.stderr
    for option in usage_commands()[command]:
        assert option in p.stdout, f"{command}: README shows {option}, --help does not"


def test_readme_global_options_exist() -> None:
    head = usage_block().strip().splitlines()[0]
    p = run("--help")
    for option in re.findall(r"--[a-z][a-z-]*", head):
        assert option in p.stdout, option


@pytest.mark.integration
def test_every_readme_command_runs_through_the_installed_script(env: Env) -> None:
    order = [c for c in RUNS if c != "remove"] + ["remove"]
    for command in order:
        for argv, code in RUNS[command]:
            args = argv(env)
            p = env.cli(*args)
            shown = " ".join(map(str, args))
            assert p.returncode == code, f"{shown}: exit {p.returncode}\n{p.stderr}"
            assert "Traceback" not in p.stderr and "internal error" not in p.stderr, shown


def test_readme_exit_codes_are_the_tools() -> None:
    documented = readme_exit_codes()
    assert documented == {int(c) for c in ExitCode}
    for code in documented - {0, 1, 2}:
        assert re.search(rf"^ *{code}  ", EPILOG, re.MULTILINE), f"exit {code} not in --help"
