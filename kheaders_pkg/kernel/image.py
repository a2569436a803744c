"""x86 bzImage -> compressed payload -> vmlinux ELF -> GNU build id.

Offsets are those of the x86 boot protocol (Documentation/arch/x86/boot.rst): the setup header
holds "HdrS" at 0x202, setup_sects at 0x1f1, and since protocol 2.08 payload_offset (0x248) and
payload_length (0x24c), relative to the protected-mode code that follows the setup sectors.
"""

from __future__ import annotations

import struct
from pathlib import Path

from kheaders_pkg.errors import ImageError, KernelDataError
from kheaders_pkg.kernel.decompress import MAX_OUTPUT, Compression, decompress, detect
from kheaders_pkg.kernel.elf import ELF_MAGIC, ELFFile
from kheaders_pkg.kernel.notes import find_build_id

__all__ = [
    "Compression",
    "build_id_from_image",
    "payload_of_bzimage",
    "vmlinux_of_bzimage",
]

_OFF_SETUP_SECTS = 0x1F1
_OFF_BOOT_FLAG = 0x1FE
_BOOT_FLAG = 0xAA55
_OFF_HEADER = 0x202
_HEADER_MAGIC = b"HdrS"
_OFF_VERSION = 0x206
_OFF_PAYLOAD = 0x248  # u32 payload_offset, u32 payload_length
_MIN_VERSION = 0x0208  # the first protocol with payload_offset/payload_length
_SECTOR = 512
# A bzImage is far smaller than the vmlinux inside it; refuse to read anything absurd.
MAX_IMAGE = 256 * 1024 * 1024
_UNSUPPORTED = (Compression.LZ4, Compression.LZO)


def payload_of_bzimage(data: bytes) -> tuple[Compression, bytes]:
    """The compressed kernel inside a bzImage, and its compression (told by magic)."""
    if len(data) < _OFF_PAYLOAD + 8:
        raise ImageError(f"not a bzImage: {len(data)} bytes is shorter than the setup header")
    boot_flag = struct.unpack_from("<H", data, _OFF_BOOT_FLAG)[0]
    if boot_flag != _BOOT_FLAG or data[_OFF_HEADER : _OFF_HEADER + 4] != _HEADER_MAGIC:
        raise ImageError('not a bzImage: no boot flag 0xaa55 and "HdrS" setup header')
    version = struct.unpack_from("<H", data, _OFF_VERSION)[0]
    if version < _MIN_VERSION:
        raise ImageError(f"boot protocol {version >> 8}.{version & 0xFF:02d} has no payload fields")
    # setup_sects 0 means 4, for compatibility with ancient images (boot protocol).
    setup_sects = data[_OFF_SETUP_SECTS] or 4
    offset, length = struct.unpack_from("<II", data, _OFF_PAYLOAD)
    start = (setup_sects + 1) * _SECTOR + offset
    if length == 0 or start + length > len(data):
        raise ImageError(
            f"payload ({length} bytes at offset {start}) is empty or runs past the end of the "
            f"{len(data)}-byte image"
        )
    payload = data[start : start + length]
    kind = detect(payload)
    if kind is None:
        raise ImageError(f"unknown payload compression (magic {payload[:6].hex()})")
    return kind, payload


def vmlinux_of_bzimage(data: bytes) -> bytes:
    """The decompressed vmlinux ELF inside a bzImage."""
    kind, payload = payload_of_bzimage(data)
    if kind in _UNSUPPORTED:
        raise ImageError(f"{kind}-compressed kernel images are not supported")
    result = decompress(payload, kind, limit=MAX_OUTPUT, error=ImageError)
    _check_size_append(kind, result.data, result.trailing)
    if not result.data.startswith(ELF_MAGIC):
        raise ImageError(f"decompressed {kind} payload is not an ELF file")
    return result.data


def _check_size_append(kind: Compression, vmlinux: bytes, trailing: bytes) -> None:
    # The x86 build appends the uncompressed size as a little-endian u32 (scripts/Makefile.lib
    # size_append, `*_with_size`); xz may also leave stream padding (zeros, in 4-byte units).
    if not trailing.strip(b"\0"):
        return
    if len(trailing) == 4 and int.from_bytes(trailing, "little") == len(vmlinux) & 0xFFFFFFFF:
        return
    raise ImageError(f"{len(trailing)} unexpected bytes after the {kind} payload")


def build_id_from_image(path: Path) -> str | None:
    """The GNU build id of the vmlinux inside the bzImage at `path`; None if it has none."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_IMAGE + 1)
    except OSError as exc:
        raise ImageError(f"cannot read kernel image {path}: {exc.strerror}") from None
    if len(data) > MAX_IMAGE:
        raise ImageError(f"kernel image {path} is larger than {MAX_IMAGE} bytes")
    vmlinux = vmlinux_of_bzimage(data)
    try:
        return find_build_id(ELFFile(vmlinux).notes())
    except KernelDataError as exc:  # ELFError, NotesError: the image holds a broken vmlinux
        raise ImageError(f"vmlinux in {path}: {exc}") from None
