"""The tool's own packages, built once per test session from a copy of the checkout: the .deb
with dpkg-buildpackage, the .rpm with rpmbuild. And a private mount namespace in which they are
installed at their real paths: /usr, /etc and /var are overlays whose changes vanish with it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.private_root import copy_source, private_root_argv

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("deb")
    src = work / "kheaders-pkg"
    copy_source(src)
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


def in_private_root(script: str, work: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `script` (sh, not stopping at a failed command) as root in a private mount namespace
    whose /usr, /etc and /var take writes that nobody else sees and that vanish when it ends."""
    overlay = work / "overlay"
    overlay.mkdir(exist_ok=True)
    return subprocess.run(
        private_root_argv("set +e\n" + script),
        env={**os.environ, "KH_OVERLAY": str(overlay), "DEBIAN_FRONTEND": "noninteractive", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
