"""Shared fixtures: the real kernels in ../shared/corpus, copied where a test must write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The tool's own .deb and .rpm, built once per session (tests/packages.py).
pytest_plugins = ["tests.packages"]

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("KHEADERS_CORPUS", REPO.parent / "shared" / "corpus")).resolve()

# Every corpus kernel, by folder name. `-a-mod` has no archive in sysfs until kheaders.ko is loaded.
KERNELS = (
    "debian-6.1.0-56-amd64",
    "debian-6.12.107+deb13-amd64",
    "kh-6.1.192-kh-a",
    "kh-6.1.192-kh-a-mod",
    "kh-6.1.192-kh-b",
)
# The kernels whose sysroot holds sys/kernel/kheaders.tar.xz.
KERNELS_WITH_ARCHIVE = tuple(k for k in KERNELS if not k.endswith("-mod"))


@dataclass(frozen=True)
class CorpusKernel:
    name: str
    path: Path

    @property
    def sysroot(self) -> Path:
        return self.path / "sysroot"

    @property
    def expected(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "expected.json").read_text())
        return data

    @property
    def release(self) -> str:
        return str(self.expected["kernelrelease"])

    @property
    def archive(self) -> Path:
        return self.sysroot / "sys/kernel/kheaders.tar.xz"

    @property
    def vmlinuz(self) -> Path:
        return self.path / str(self.expected["vmlinuz"])

    @property
    def modules(self) -> Path:
        return self.path / "modules"

    @property
    def debs(self) -> Path:
        return self.path / "debs"


def corpus_kernel(name: str) -> CorpusKernel:
    path = CORPUS / name
    if not path.is_dir():
        raise FileNotFoundError(f"corpus kernel {name} not found under {CORPUS}")
    return CorpusKernel(name, path)


@pytest.fixture(params=KERNELS)
def kernel(request: pytest.FixtureRequest) -> CorpusKernel:
    """Each corpus kernel in turn."""
    return corpus_kernel(str(request.param))


@pytest.fixture(params=KERNELS_WITH_ARCHIVE)
def kernel_with_archive(request: pytest.FixtureRequest) -> CorpusKernel:
    return corpus_kernel(str(request.param))


def copy_sysroot(kernel: CorpusKernel, dest: Path) -> Path:
    """A writable copy of a kernel's sysroot, usable as --kernel-fs."""
    shutil.copytree(kernel.sysroot, dest, symlinks=True)
    for p in [dest, *dest.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


@pytest.fixture
def kernel_fs(tmp_path: Path, kernel_with_archive: CorpusKernel) -> Path:
    return copy_sysroot(kernel_with_archive, tmp_path / "kfs")


def installed_kernel_root(kernel: CorpusKernel, root: Path) -> Path:
    """A root holding the kernel's image and modules, as its package would install them."""
    (root / "boot").mkdir(parents=True)
    shutil.copy(kernel.vmlinuz, root / "boot" / f"vmlinuz-{kernel.release}")
    moddir = root / "lib/modules" / kernel.release / "kernel/kernel"
    moddir.mkdir(parents=True)
    for name in ("kheaders.ko", "configs.ko"):
        if (kernel.modules / name).is_file():
            shutil.copy(kernel.modules / name, moddir / name)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


def make_dpkg_root(root: Path) -> Path:
    """An empty merged-/usr scratch root (as Debian 12 and 13 are) with a dpkg database."""
    (root / "usr/lib").mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(root / "lib"):
        os.symlink("usr/lib", root / "lib")
    admin = root / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True, exist_ok=True)
    (admin / "updates").mkdir(exist_ok=True)
    (admin / "status").touch()
    return root


def unpack_debian_headers(kernel: CorpusKernel, root: Path) -> list[Path]:
    """Debian's own linux-headers/kbuild packages unpacked into `root` with the real dpkg.

    `--unpack`, not `-i`: their postinst runs tools a bare root lacks (background.md 6).
    """
    import subprocess

    make_dpkg_root(root)
    debs = sorted(kernel.debs.glob("*.deb"))
    subprocess.run(
        [
            "dpkg",
            f"--root={root}",
            f"--admindir={root}/var/lib/dpkg",
            "--log=/dev/null",
            "--force-script-chrootless",
            "--force-depends",
            "--unpack",
            *map(str, debs),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return debs


def hold_lock(path: Path) -> subprocess.Popen[str]:
    """Another process holding an fcntl write lock on `path`, as dpkg and rpm do; the lock goes
    when the test closes the child's stdin (or the child is killed)."""
    code = (
        "import fcntl, sys\n"
        f"f = open({str(path)!r}, 'a+')\n"
        "fcntl.lockf(f, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    return child


def build_dir(root: Path, release: str) -> Path:
    """The tree `build` leads to for `release`, on this machine."""
    link = root / "lib/modules" / release / "build"
    return root / os.readlink(link).lstrip("/")


# -- the command line ------------------------------------------------------------------------

# The installed console script: tests reach the tool the way users do.
TOOL = Path(sys.executable).parent / "kheaders-pkg"


def cli_argv(
    root: Path, kfs: Path | None, *args: str | Path, config: Path | None = None
) -> list[str]:
    argv = [str(TOOL), "--root", str(root)]
    if kfs is not None:
        argv += ["--kernel-fs", str(kfs)]
    if config is not None:
        argv += ["--config", str(config)]
    return argv + [str(a) for a in args]


def cli_env(crash_at: str | None = None) -> dict[str, str]:
    """The test's environment, without a crash point unless one is asked for (publish.py)."""
    from kheaders_pkg.publish import CRASH_ENV

    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    return env


def run_cli(
    root: Path,
    kfs: Path | None,
    *args: str | Path,
    config: Path | None = None,
    crash_at: str | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`kheaders-pkg --root ROOT [--kernel-fs KFS] [--config CONFIG] ARGS...`, run to its end
    (`env`: variables set over the test's own, such as a PATH without a tool)."""
    return subprocess.run(
        cli_argv(root, kfs, *args, config=config),
        capture_output=True,
        text=True,
        env={**cli_env(crash_at), **(env or {})},
        timeout=timeout,
        check=False,
    )


def start_cli(
    root: Path, kfs: Path | None, *args: str | Path, crash_at: str | None = None
) -> subprocess.Popen[str]:
    """The same command, started and left running (for concurrency and kill tests)."""
    return subprocess.Popen(
        cli_argv(root, kfs, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(crash_at),
    )
