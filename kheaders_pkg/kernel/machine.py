"""The kernel's architecture, from its config, in the names each package format uses.

A generated tree belongs to the kernel's architecture, not to the host's that made it: an x86
image builder preparing an arm64 root (`--root`, `--kernel`) must emit an arm64 package. The
config decides (every tree carries `.config` or at least the archive's
include/generated/autoconf.h); the table is Debian's and Fedora's names for each kernel
architecture (dpkg-architecture's, rpm's `%_target_cpu`), with Arch Linux's (pacman's `arch`)
and systemd's (os-release(5) and extension-release ARCHITECTURE=).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kheaders_pkg.kernel.kconfig import option


@dataclass(frozen=True)
class KernelArch:
    srcarch: str  # arch/<srcarch>/ in the kernel tree
    deb: str  # dpkg architecture
    rpm: str  # rpm target cpu
    pacman: str  # pacman arch: `uname -m` as rpm, except 32-bit ARM (Arch Linux ARM's armv7h)
    systemd: str  # systemd's name (systemd.unit(5) ConditionArchitecture=, extension-release)
    # dpkg architectures of a 32-bit userland this kernel runs (Debian ships the headers of an
    # amd64 kernel in its i386 archive as i386: such a root keeps its own architecture).
    compat_deb: tuple[str, ...] = ()


# (options that must be "y", options that must not be) -> the architecture. First match wins.
_TABLE: tuple[tuple[tuple[str, ...], tuple[str, ...], KernelArch], ...] = (
    (("CONFIG_ARM64",), ("CONFIG_CPU_BIG_ENDIAN",),
     KernelArch("arm64", "arm64", "aarch64", "aarch64", "arm64", ("armhf", "armel"))),
    (("CONFIG_X86_64",), (),
     KernelArch("x86", "amd64", "x86_64", "x86_64", "x86-64", ("i386", "x32"))),
    (("CONFIG_X86_32",), (), KernelArch("x86", "i386", "i686", "i686", "x86")),
    (("CONFIG_PPC64", "CONFIG_CPU_LITTLE_ENDIAN"), (),
     KernelArch("powerpc", "ppc64el", "ppc64le", "ppc64le", "ppc64-le")),
    (("CONFIG_S390",), (), KernelArch("s390", "s390x", "s390x", "s390x", "s390x")),
    (("CONFIG_RISCV", "CONFIG_64BIT"), (),
     KernelArch("riscv", "riscv64", "riscv64", "riscv64", "riscv64")),
    (("CONFIG_LOONGARCH", "CONFIG_64BIT"), (),
     KernelArch("loongarch", "loong64", "loongarch64", "loongarch64", "loongarch64")),
    (("CONFIG_ARM",), ("CONFIG_ARM64",), KernelArch("arm", "armhf", "armv7hl", "armv7h", "arm")),
)  # fmt: skip

_AUTOCONF_DEFINE = re.compile(rb"^#define (CONFIG_\w+) 1$", re.MULTILINE)


def kernel_arch(config: bytes) -> KernelArch | None:
    """The architecture a kernel config (`.config` text) is for; None if not in the table."""
    for wanted, unwanted, arch in _TABLE:
        if all(option(config, name) == "y" for name in wanted) and not any(
            option(config, name) == "y" for name in unwanted
        ):
            return arch
    return None


def autoconf_as_config(autoconf: bytes) -> bytes:
    """The `=y` options of include/generated/autoconf.h (`#define CONFIG_X 1`) as config lines."""
    return b"".join(name + b"=y\n" for name in _AUTOCONF_DEFINE.findall(autoconf))


def tree_arch(tree: Path) -> KernelArch | None:
    """The architecture of a generated tree: its `.config`, else the archive's autoconf.h."""
    for name, convert in ((".config", bytes), ("include/generated/autoconf.h", autoconf_as_config)):
        try:
            text = (tree / name).read_bytes()
        except OSError:
            continue
        found = kernel_arch(convert(text))
        if found is not None:
            return found
    return None
