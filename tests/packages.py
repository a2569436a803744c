"""The tool's own packages, built once per test session from a copy of the checkout: the .deb
with dpkg-buildpackage, the .rpm with rpmbuild. And a private mount namespace in which they are
installed at their real paths: /usr, /etc and /var are overlays whose changes vanish with it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What a source package never holds: virtual environments, caches, and scratch output of
# scripts/demo and the benchmarks (it contains symlinks into a scratch root).
SKIP = {
    ".venv",
    ".git",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "scratch",
    "results",
}


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("deb")
    src = work / "kheaders-pkg"
    shutil.copytree(REPO, src, ignore=lambda _d, names: [n for n in names if n in SKIP])
    result = subprocess.run(
        ["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = work.glob("kheaders-pkg_*_all.deb")
    return built


@pytest.fixture(scope="session")
def built_rpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("rpm")
    (work / "home").mkdir()
    result = subprocess.run(
        [
            "rpmbuild",
            "-bb",
            "--nodeps",
            "--define",
            f"_topdir {work / 'top'}",
            "--define",
            f"_sourcedir {REPO}",
            str(REPO / "packaging/kheaders-pkg.spec"),
        ],
        env={**os.environ, "HOME": str(work / "home")},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (rpm,) = (work / "top/RPMS/noarch").glob("kheaders-pkg-*.rpm")
    return rpm


# Overlays over the host's /usr, /etc and /var (merged /usr: /lib is usr/lib), on a tmpfs that
# only this namespace sees; /run/systemd is hidden so no maintainer script talks to a systemd.
_NAMESPACE_SETUP = """\
set -eu
mount -t tmpfs tmpfs "$KH_OVERLAY"
for d in usr etc var; do
    mkdir -p "$KH_OVERLAY/$d.upper" "$KH_OVERLAY/$d.work"
    mount -t overlay overlay \\
        -o "lowerdir=/$d,upperdir=$KH_OVERLAY/$d.upper,workdir=$KH_OVERLAY/$d.work" "/$d"
done
if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; fi
set +e
"""


def in_private_root(script: str, work: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `script` (sh) as root in a private mount namespace whose /usr, /etc and /var take
    writes that nobody else sees and that vanish when it ends."""
    overlay = work / "overlay"
    overlay.mkdir(exist_ok=True)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _NAMESPACE_SETUP + script],
        env={**os.environ, "KH_OVERLAY": str(overlay), "DEBIAN_FRONTEND": "noninteractive", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
