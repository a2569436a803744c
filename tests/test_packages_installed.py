"""The tool as its packages install it, at the real paths, in a private mount namespace: the .deb
with `dpkg -i` (maintainer scripts, py3compile) and the .rpm with `rpm -i`; their
/usr/bin/kheaders-pkg runs `check`, `sync`, `status`, `verify` and `hooks install` against a
scratch root, goes through the fast path (kheaders_pkg.entry), finds its bytecode compiled, and
purging the package leaves none behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import corpus_kernel
from tests.packages import in_private_root

KH_A = corpus_kernel("kh-6.1.192-kh-a")

# Run inside the namespace after the package is installed; prints one `name=value` line per fact.
_EXERCISE = """\
kh=/usr/bin/kheaders-pkg
echo "pyc=$(find /usr/share/kheaders-pkg -name '*.pyc' | wc -l)"
echo "py=$(find /usr/share/kheaders-pkg/kheaders_pkg -name '*.py' | wc -l)"
echo "wrapper_entry=$(grep -c 'from kheaders_pkg.entry import main' $kh)"
$kh --root "$R" --kernel-fs "$K" check >/dev/null; echo "check_before=$?"
$kh --root "$R" --kernel-fs "$K" -q sync; echo "sync=$?"
$kh --root "$R" --kernel-fs "$K" check >/dev/null; echo "check_after=$?"
$kh status --json --root "$R" --kernel-fs "$K" >"$W/status.json"; echo "status=$?"
$kh --root "$R" --kernel-fs "$K" verify >/dev/null; echo "verify=$?"
echo "// chef" >>"$R/usr/src/kheaders-pkg/$REL/$(ls "$R/usr/src/kheaders-pkg/$REL")/vmlinux.id"
$kh --root "$R" --kernel-fs "$K" verify 2>/dev/null; echo "verify_damaged=$?"
$kh --root "$R" --kernel-fs "$K" -q sync --verify; echo "sync_verify=$?"
$kh --root "$R" --kernel-fs "$K" verify >/dev/null; echo "verify_repaired=$?"
mkdir -p "$W/hooks/etc"; echo ID=debian >"$W/hooks/etc/os-release"
$kh --root "$W/hooks" hooks install >/dev/null; echo "hooks=$?"
echo "hook_exec=$(grep -c '^ExecStart=/usr/bin/kheaders-pkg sync$' \
    "$W/hooks/usr/lib/systemd/system/kheaders-pkg.service")"
# The fast path: the fresh `check` imports neither the CLI nor argparse.
python3 -X importtime $kh --root "$R" --kernel-fs "$K" check 2>"$W/imports" >/dev/null
echo "fast_check_loads_cli=$(grep -c 'kheaders_pkg.cli\\|argparse' "$W/imports")"
echo "fast_check_loads_fastcheck=$(grep -c 'kheaders_pkg.fastcheck' "$W/imports")"
"""


# A tree at the real paths (inside the namespace) under a configured trees_dir: removing the
# package must take it away (its scripts ask the tool, `remove --all`, instead of globbing).
_REAL_TREE = """\
printf 'trees_dir = "/var/kh-trees"\\n' >/etc/kheaders-pkg.toml
$kh --kernel-fs "$K" -q sync; echo "real_sync=$?"
echo "real_trees=$(ls /var/kh-trees | wc -l)"
echo "real_link=$(readlink /lib/modules/$REL/build)"
"""
_REAL_TREE_LEFT = """\
echo "real_trees_left=$(ls /var/kh-trees 2>/dev/null | wc -l)"
echo "real_link_left=$(ls -d /lib/modules/$REL/build 2>/dev/null | wc -l)"
"""


def _check_real_tree_removed(facts: dict[str, str]) -> None:
    assert facts["real_sync"] == "0" and facts["real_trees"] == "1", facts
    assert facts["real_link"].startswith("/var/kh-trees/"), facts
    assert facts["real_trees_left"] == "0" and facts["real_link_left"] == "0", facts


def _facts(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _check_exercise(facts: dict[str, str], work: Path) -> None:
    assert int(facts["pyc"]) >= int(facts["py"]) > 10, facts
    assert facts["wrapper_entry"] == "1"
    assert facts["check_before"] == "3" and facts["sync"] == "0", facts
    assert facts["check_after"] == "0" and facts["status"] == "0", facts
    assert json.loads((work / "status.json").read_text())["verdict"] == "fresh"
    assert facts["verify"] == "0" and facts["verify_damaged"] == "13", facts
    assert facts["sync_verify"] == "0" and facts["verify_repaired"] == "0", facts
    assert facts["hooks"] == "0" and facts["hook_exec"] == "1", facts
    assert facts["fast_check_loads_cli"] == "0", (work / "imports").read_text()[-2000:]
    assert facts["fast_check_loads_fastcheck"] != "0"


def _env(tmp_path: Path, package: Path) -> dict[str, str]:
    root = tmp_path / "root"
    root.mkdir()
    return {
        "PKG": str(package),
        "R": str(root),
        "K": str(KH_A.sysroot),
        "REL": KH_A.release,
        "W": str(tmp_path),
    }


_LEFT = 'echo "left=$(ls -A /usr/share/kheaders-pkg 2>/dev/null | wc -l)"\n'


def _install_use_remove(
    install: str, remove: str, package: Path, tmp_path: Path, after: str = ""
) -> dict[str, str]:
    """`install` the package, exercise the tool, `remove` the package, then run `after`, in a
    private root; checks what every package must do and returns the facts."""
    script = (
        f'{install} >"$W/pkg.log" 2>&1 || {{ cat "$W/pkg.log"; exit 1; }}\n'
        + _EXERCISE
        + _REAL_TREE
        + f'{remove} >>"$W/pkg.log" 2>&1; echo "removed=$?"\n'
        + _REAL_TREE_LEFT
        + _LEFT
        + after
    )
    p = in_private_root(script, tmp_path, **_env(tmp_path, package))
    assert p.returncode == 0, p.stdout + p.stderr
    facts = _facts(p.stdout)
    _check_exercise(facts, tmp_path)
    assert facts["removed"] == "0" and facts["left"] == "0", p.stdout
    _check_real_tree_removed(facts)
    return facts


@pytest.mark.integration
def test_deb_installed_runs_the_fast_path_with_compiled_bytecode(
    built_deb: Path, tmp_path: Path
) -> None:
    units = 'echo "unit_left=$(ls /lib/systemd/system/kheaders-pkg* 2>/dev/null | wc -l)"\n'
    facts = _install_use_remove(
        'dpkg -i "$PKG"', "dpkg --purge kheaders-pkg", built_deb, tmp_path, after=units
    )
    assert facts["unit_left"] == "0"


@pytest.mark.integration
def test_rpm_installed_runs_the_fast_path_with_compiled_bytecode(
    built_rpm: Path, tmp_path: Path
) -> None:
    # Debian's rpm wants --force-debian on a dpkg-managed system; its own database in /var.
    rpm = "rpm --dbpath /var/lib/kh-rpm --force-debian"
    install = f'rpm --dbpath /var/lib/kh-rpm --initdb && {rpm} -i --nodeps "$PKG"'
    _install_use_remove(install, f"{rpm} -e kheaders-pkg", built_rpm, tmp_path)
