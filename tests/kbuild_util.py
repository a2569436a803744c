"""A Debian 6.1 root that can make a module-building tree, and the test module built against it.

Shared by tests/test_kbuild.py and the e2e boot that loads the module into the real kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, CorpusKernel, copy_sysroot, run_cli, unpack_debian_headers

KBUILD_KERNEL = "debian-6.1.0-56-amd64"
HELLO = REPO / "tests/data/kbuild-hello"
HELLO_NAME = "kh_hello"
# Debian 6.1 was built with gcc-12 (CONFIG_CC_VERSION_TEXT); the kbuild tree asks for the same.
CC = "gcc-12"

# Where Debian installs the corpus modules under /lib/modules/$KVER/kernel (their Module.symvers
# column for the ones that export, the source tree's layout for the rest).
MODULE_DIRS = {
    "9p": "fs/9p",
    "9pnet": "net/9p",
    "9pnet_virtio": "net/9p",
    "configs": "kernel",
    "kheaders": "kernel",
    "fscache": "fs/fscache",
    "netfs": "fs/netfs",
    "overlay": "fs/overlayfs",
    "virtio": "drivers/virtio",
    "virtio_ring": "drivers/virtio",
    "virtio_pci": "drivers/virtio",
    "virtio_pci_legacy_dev": "drivers/virtio",
    "virtio_pci_modern_dev": "drivers/virtio",
    "virtio_blk": "drivers/block",
}


@dataclass(frozen=True)
class KbuildRoot:
    root: Path
    kfs: Path
    release: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The installed command, as a user runs it."""
        return run_cli(self.root, self.kfs, *args)

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib/modules" / self.release

    def tree(self) -> Path:
        return self.root / os.readlink(self.modules_dir / "build").lstrip("/")

    @property
    def debian_tree(self) -> Path:
        return self.root / f"usr/src/linux-headers-{self.release}"


def make_kbuild_root(kernel: CorpusKernel, base: Path, *, packages: bool = True) -> KbuildRoot:
    """A scratch root as a Debian 12 machine running `kernel` has it: the image in /boot, the
    modules in /lib/modules, and (with `packages`) Debian's linux-kbuild and headers packages
    unpacked by dpkg, without the build/source links (the running build is not theirs)."""
    root = base / "root"
    if packages:
        unpack_debian_headers(kernel, root)
        for link in ("build", "source"):
            os.unlink(root / "lib/modules" / kernel.release / link)
    else:
        (root / "usr/lib").mkdir(parents=True)
        os.symlink("usr/lib", root / "lib")
    (root / "boot").mkdir()
    shutil.copy(kernel.vmlinuz, root / "boot" / kernel.vmlinuz.name)
    modules = root / "lib/modules" / kernel.release / "kernel"
    for ko in sorted(kernel.modules.glob("*.ko")):
        (modules / MODULE_DIRS[ko.stem]).mkdir(parents=True, exist_ok=True)
        shutil.copy(ko, modules / MODULE_DIRS[ko.stem] / ko.name)
    kfs = copy_sysroot(kernel, base / "kfs")
    return KbuildRoot(root, kfs, kernel.release)


def build_hello(tree: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """`make -C tree M=work modules` of the test module, in a fresh copy of its source."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(HELLO, work)
    return subprocess.run(
        ["make", "-C", str(tree), f"M={work}", f"CC={CC}", "modules"],
        capture_output=True,
        text=True,
        check=False,
    )


def tree_with_symvers(tree: Path, dest: Path, symvers: bytes) -> Path:
    """A build directory that is `tree` but for its Module.symvers: every other top entry is a
    link to the tree (the top Makefile finds its source through the link, kbuild reads
    Module.symvers from the directory it runs in)."""
    dest.mkdir(parents=True)
    for entry in tree.iterdir():
        if entry.name != "Module.symvers":
            os.symlink(entry.resolve() if entry.is_symlink() else entry, dest / entry.name)
    (dest / "Module.symvers").write_bytes(symvers)
    return dest


def with_crc(symvers: bytes, name: str, crc: int) -> bytes:
    """Module.symvers with the CRC of `name` replaced."""
    lines = symvers.decode().splitlines(keepends=True)
    out = []
    for line in lines:
        fields = line.split("\t")
        if fields[1] == name:
            line = "\t".join([f"0x{crc:08x}", *fields[1:]])
        out.append(line)
    return "".join(out).encode()
