"""The kernel's BTF, wherever it is, and the `vmlinux.h` made from it (background.md 11).

`/sys/kernel/btf/vmlinux` of a running kernel holds the same bytes as the `.BTF` section of its
vmlinux: inside the compressed payload of an x86 bzImage, and in the loaded image itself of an
arm64 `Image` (no ELF there: found by its header, below); kernel/image.py unwraps either. One
reader for every place (and for the BTF-only vmlinux in Debian's headers, tree.py), so that the
tree made before boot from the image and the one made from sysfs are equal.

`vmlinux.h` is made by the reference generator, `bpftool btf dump file F format c`, which libbpf
CO-RE programs are written against.
"""

from __future__ import annotations

import enum
import hashlib
import os
import shutil
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from kheaders_pkg.errors import KernelDataError
from kheaders_pkg.files import read_if_present
from kheaders_pkg.kernel.elf import ELFFile

VMLINUX_H = "vmlinux.h"  # at the top of the tree: build/vmlinux.h
BPFTOOL = "bpftool"

# struct btf_header (include/uapi/linux/btf.h): magic, version, flags, hdr_len, then the offsets
# and lengths of the type and string sections, relative to the end of the header.
_HEADER = struct.Struct("HBBIIIII")
BTF_MAGIC = 0xEB9F
_BTF_VERSION = 1
# The kernel's BTF is a few MiB (Debian 6.12: 6 MiB); a bound that no real one comes near.
MAX_BTF = 64 * 1024 * 1024
_HEAD_LE = struct.pack("<HBB", BTF_MAGIC, _BTF_VERSION, 0)
_HEAD_BE = struct.pack(">HBB", BTF_MAGIC, _BTF_VERSION, 0)
# The bpftool output's last line: a truncated vmlinux.h never ends with it.
_TRAILER = b"#endif /* __VMLINUX_H__ */\n"


class BtfError(KernelDataError):
    """The kernel's BTF is missing where it should be, or malformed."""


class BtfSource(enum.StrEnum):
    SYSFS = "sysfs"  # /sys/kernel/btf/vmlinux of the running kernel
    IMAGE = "image"  # the kernel image on disk (--kernel KVER)


class VmlinuxH(enum.StrEnum):
    """What became of build/vmlinux.h in a generation (recorded in the stamp)."""

    MADE = "made"
    NO_BTF = "no-btf"  # the kernel has no BTF (CONFIG_DEBUG_INFO_BTF is off)
    NO_BPFTOOL = "no-bpftool"  # the generator is not installed
    FAILED = "failed"  # the BTF was unreadable or bpftool could not convert it


@dataclass(frozen=True)
class BtfRef:
    source: BtfSource
    path: Path


@dataclass(frozen=True)
class BtfHeader:
    byteorder: str  # "<" or ">"
    hdr_len: int
    type_off: int
    type_len: int
    str_off: int
    str_len: int

    @property
    def size(self) -> int:
        """The whole BTF blob: header, then types and strings (which may come in either order)."""
        return self.hdr_len + max(self.type_off + self.type_len, self.str_off + self.str_len)


def parse_header(data: bytes | memoryview, offset: int = 0) -> BtfHeader:
    """The header of the BTF blob at `offset`, checked against the data that follows it."""
    head = bytes(data[offset : offset + 4])
    if head[:2] == _HEAD_LE[:2]:
        order = "<"
    elif head[:2] == _HEAD_BE[:2]:
        order = ">"
    else:
        raise BtfError(f"no BTF magic 0x{BTF_MAGIC:x} (found {head[:2].hex() or 'nothing'})")
    if len(data) - offset < _HEADER.size:
        raise BtfError(f"BTF header truncated ({len(data) - offset} bytes)")
    _magic, version, _flags, hdr_len, t_off, t_len, s_off, s_len = struct.unpack_from(
        order + _HEADER.format, data, offset
    )
    if version != _BTF_VERSION:
        raise BtfError(f"BTF version {version}, expected {_BTF_VERSION}")
    if hdr_len < _HEADER.size or hdr_len > 256:
        raise BtfError(f"BTF header length {hdr_len} out of range")
    header = BtfHeader(order, hdr_len, t_off, t_len, s_off, s_len)
    if header.size > len(data) - offset or header.size > MAX_BTF:
        raise BtfError(f"BTF of {header.size} bytes runs past the {len(data) - offset} available")
    # The string section starts with the empty string and ends with a NUL (kernel/bpf/btf.c
    # btf_check_sec_info, btf_parse_str_sec): what keeps a false match at a magic number out.
    strings = offset + hdr_len + s_off
    if s_len == 0 or data[strings] != 0 or data[strings + s_len - 1] != 0:
        raise BtfError("BTF string section does not start and end with a NUL")
    if t_off % 4 or (t_off < s_off and t_off + t_len > s_off):
        raise BtfError("BTF type section misaligned or overlapping the strings")
    return header


def btf_blob(data: bytes, where: str) -> bytes:
    """`data` checked as exactly one BTF blob (sysfs, or an ELF's .BTF section)."""
    header = parse_header(data)
    if header.size != len(data):
        raise BtfError(f"{where}: BTF header says {header.size} bytes, found {len(data)}")
    return data


def btf_of_elf(elf: ELFFile) -> bytes | None:
    """The `.BTF` section of a vmlinux ELF (the kernel's, or the BTF-only one Debian ships in
    its headers since 6.12); None without one."""
    section = elf.section_bytes(".BTF")
    return None if not section else btf_blob(bytes(section), "vmlinux .BTF")


def btf_in_flat_image(image: bytes, where: str) -> bytes | None:
    """The BTF inside an image with no ELF (an arm64 `Image`), found by its header.

    The `.BTF` output section is copied into the image as it is (arch/arm64/kernel/vmlinux.lds.S
    via include/asm-generic/vmlinux.lds.h). Every place where a valid little- or big-endian BTF
    header starts is a candidate; more than one is refused rather than guessed between.
    """
    found: list[tuple[int, BtfHeader]] = []
    for magic in (_HEAD_LE, _HEAD_BE):
        at = image.find(magic)
        while at >= 0:
            try:
                found.append((at, parse_header(image, at)))
            except BtfError:
                pass
            at = image.find(magic, at + 1)
    if not found:
        return None
    if len(found) > 1:
        places = ", ".join(str(at) for at, _ in found[:4])
        raise BtfError(f"{where}: {len(found)} places look like BTF (offsets {places})")
    at, header = found[0]
    return image[at : at + header.size]


def btf_of_image(path: Path) -> bytes | None:
    """The BTF of the kernel in the image file at `path` (every form kernel/image.py reads: x86
    bzImage, arm64 Image, signed, gzip'd or EFI zboot); None without one."""
    from kheaders_pkg.kernel.image import read_kernel_image

    try:
        image = read_kernel_image(path)
        if image.is_elf:
            return btf_of_elf(ELFFile(image.kernel))
        return btf_in_flat_image(image.kernel, "the arm64 Image")
    except BtfError as exc:
        raise BtfError(f"{path}: {exc}") from None
    except KernelDataError as exc:  # ImageError, ELFError: the image itself is unreadable
        raise BtfError(str(exc)) from None


def read_btf(ref: BtfRef) -> bytes | None:
    """The kernel's BTF from where `ref` says; None when that kernel has none."""
    if ref.source is BtfSource.IMAGE:
        return btf_of_image(ref.path)
    data = read_if_present(ref.path, MAX_BTF, "BTF", BtfError)
    return None if data is None else btf_blob(data, str(ref.path))


def btf_sha256(btf: bytes) -> str:
    return hashlib.sha256(btf).hexdigest()


@dataclass(frozen=True)
class VmlinuxHResult:
    state: VmlinuxH
    btf_sha256: str | None
    data: bytes | None  # the header, when made
    problem: str | None = None  # why it was not made, for the log


def make_vmlinux_h(ref: BtfRef | None, scratch: Path) -> VmlinuxHResult:
    """vmlinux.h for the kernel whose BTF `ref` names; `scratch` is a private directory where
    the BTF is written for bpftool to read (the staging directory: never /tmp).

    A missing generator or an unconvertible BTF leaves the tree without vmlinux.h (the headers
    are still good): the result says why, and `status` repeats it.
    """
    if ref is None:
        return VmlinuxHResult(VmlinuxH.NO_BTF, None, None)
    try:
        btf = read_btf(ref)
    except BtfError as exc:
        return VmlinuxHResult(VmlinuxH.FAILED, None, None, str(exc))
    if btf is None:
        return VmlinuxHResult(VmlinuxH.NO_BTF, None, None)
    digest = btf_sha256(btf)
    if shutil.which(BPFTOOL) is None:
        return VmlinuxHResult(VmlinuxH.NO_BPFTOOL, digest, None, f"{BPFTOOL}: command not found")
    from kheaders_pkg.publish import write_new_file
    from kheaders_pkg.run import CommandError, run

    name = ".kheaders-pkg.btf"
    write_new_file(scratch, name, btf)
    try:
        done = run([BPFTOOL, "btf", "dump", "file", scratch / name, "format", "c"], check=False)
    finally:
        os.unlink(scratch / name)
    if done.returncode != 0:
        failure = CommandError([BPFTOOL], done.returncode, done.stderr.decode("utf-8", "replace"))
        return VmlinuxHResult(VmlinuxH.FAILED, digest, None, str(failure))
    if not done.stdout.endswith(_TRAILER):
        return VmlinuxHResult(VmlinuxH.FAILED, digest, None, f"{BPFTOOL} output is truncated")
    return VmlinuxHResult(VmlinuxH.MADE, digest, done.stdout)


def link_unchanged_vmlinux_h(previous: Path | None, staging: Path, data: bytes) -> bool:
    """Hard-link the previous generation's vmlinux.h when it has the same bytes (a re-sync after
    a header change keeps the kernel's BTF): published trees never change, so sharing the inode
    is safe, as for the archive's unchanged files. False when it cannot: then write it."""
    if previous is None:
        return False
    source = previous / VMLINUX_H
    try:
        st = os.lstat(source)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        with open(source, "rb") as f:
            if f.read(len(data) + 1) != data:
                return False
        os.link(source, staging / VMLINUX_H, follow_symlinks=False)
    except OSError:
        return False
    return True


def vmlinux_h_remark(state: VmlinuxH | None, release: str) -> str | None:
    """What `status` says about a tree's vmlinux.h, from the state its stamp recorded."""
    if state is None:
        return "the tree was made by a version without vmlinux.h: `sync --force` adds it"
    if state is VmlinuxH.NO_BTF:
        return (
            f"no BTF was found for kernel {release} (/sys/kernel/btf/vmlinux, or the image's .BTF; "
            "CONFIG_DEBUG_INFO_BTF): the tree has no vmlinux.h for libbpf CO-RE programs"
        )
    if state is VmlinuxH.NO_BPFTOOL:
        return (
            f"vmlinux.h is missing: {BPFTOOL} was not installed when the tree was made; "
            "install it (Debian: bpftool) and run `kheaders-pkg sync --force`"
        )
    if state is VmlinuxH.FAILED:
        return "vmlinux.h is missing: the kernel's BTF could not be converted (see the sync log)"
    return None
