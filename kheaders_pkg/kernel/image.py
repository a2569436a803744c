"""A kernel image on disk -> the kernel inside it -> GNU build id, told apart by format.

The format decides, never the host's architecture, so an x86 host can prepare an arm64 root and
the other way round:

- x86 bzImage: compressed payload -> vmlinux ELF. Offsets are those of the x86 boot protocol
  (Documentation/arch/x86/boot.rst): the setup header holds "HdrS" at 0x202, setup_sects at
  0x1f1, and since protocol 2.08 payload_offset (0x248) and payload_length (0x24c), relative to
  the protected-mode code that follows the setup sectors.
- arm64 `Image` (Debian installs it uncompressed as vmlinuz), signed for Secure Boot or not,
  `Image.gz`, and EFI zboot: the flat Image, whose notes `kernel.arm64` finds (background.md 9).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from pathlib import Path

from kheaders_pkg.errors import ImageError, KernelDataError
from kheaders_pkg.files import read_bounded
from kheaders_pkg.kernel import arm64, pe
from kheaders_pkg.kernel.decompress import MAX_OUTPUT, Compression, decompress, detect
from kheaders_pkg.kernel.elf import ELF_MAGIC, ELFFile
from kheaders_pkg.kernel.notes import find_build_id

__all__ = [
    "Compression",
    "ImageFormat",
    "KernelImage",
    "build_id_from_image",
    "build_id_of",
    "kernel_image",
    "payload_of_bzimage",
    "read_kernel_image",
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


class ImageFormat(enum.StrEnum):
    BZIMAGE = "x86 bzImage"
    ARM64_IMAGE = "arm64 Image"
    ARM64_IMAGE_GZ = "arm64 Image.gz"
    ARM64_ZBOOT = "arm64 EFI zboot"


@dataclass(frozen=True)
class KernelImage:
    """The kernel inside an image file: for a bzImage the vmlinux ELF, for every arm64 form the
    flat `Image` (decompressed, Secure Boot signature removed), where `.notes` and `.BTF` are."""

    format: ImageFormat
    signed: bool  # an Authenticode signature was appended (and is not part of `kernel`)
    kernel: bytes

    @property
    def is_elf(self) -> bool:
        return self.format is ImageFormat.BZIMAGE


def _is_bzimage(data: bytes) -> bool:
    return (
        len(data) > _OFF_HEADER + 4
        and struct.unpack_from("<H", data, _OFF_BOOT_FLAG)[0] == _BOOT_FLAG
        and data[_OFF_HEADER : _OFF_HEADER + 4] == _HEADER_MAGIC
    )


def _unsigned(data: bytes) -> tuple[bytes, bool]:
    """`data` without an appended Authenticode signature, and whether it had one."""
    if not pe.has_pe_header(data):
        return data, False
    unsigned = pe.without_signature(data, pe.parse_pe(data))
    return unsigned, len(unsigned) != len(data)


def kernel_image(data: bytes) -> KernelImage:
    """What kind of kernel image `data` is (by its headers), and the kernel inside it."""
    if _is_bzimage(data):
        # An EFI-stub bzImage is a PE too, but the setup header locates the payload exactly.
        return KernelImage(ImageFormat.BZIMAGE, False, vmlinux_of_bzimage(data))
    if arm64.is_zboot(data):
        unsigned, signed = _unsigned(data)
        return KernelImage(ImageFormat.ARM64_ZBOOT, signed, arm64.image_of_zboot(unsigned))
    if arm64.is_arm64_image(data):
        # With CONFIG_EFI the header's last word names its PE header (efi-header.S); the size
        # checks of the header wait until a signature is set aside.
        pe_offset = int.from_bytes(data[0x3C:0x40], "little")
        if pe_offset and not pe.has_pe_header(data):
            raise ImageError(
                f"arm64 Image header points at offset {pe_offset}, but there is no PE header there"
            )
        unsigned, signed = _unsigned(data)
        arm64.parse_header(unsigned)
        return KernelImage(ImageFormat.ARM64_IMAGE, signed, unsigned)
    if detect(data) is Compression.GZIP:
        return KernelImage(ImageFormat.ARM64_IMAGE_GZ, False, _image_of_gzip(data))
    raise ImageError(
        'not a kernel image: no x86 bzImage setup header (boot flag 0xaa55 and "HdrS"), '
        'no arm64 Image magic "ARM\\x64" at 0x38, no EFI zboot "zimg" header, not gzip'
    )


def _image_of_gzip(data: bytes) -> bytes:
    # arch/arm64/boot/Makefile: Image.gz is `gzip -n -9` of the Image, nothing around it.
    result = decompress(data, Compression.GZIP, limit=MAX_OUTPUT, error=ImageError)
    if result.trailing.strip(b"\0"):
        raise ImageError(f"{len(result.trailing)} unexpected bytes after the gzip'd kernel image")
    if not arm64.is_arm64_image(result.data):
        raise ImageError("the gzip'd kernel image is not an arm64 Image")
    arm64.parse_header(result.data)
    return result.data


def read_kernel_image(path: Path) -> KernelImage:
    """The kernel inside the image file at `path`, read with a size bound."""
    data = read_bounded(path, MAX_IMAGE, "kernel image", ImageError)
    try:
        return kernel_image(data)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def build_id_of(image: KernelImage) -> str | None:
    """The GNU build id of the kernel in `image`; None if it has none."""
    if image.is_elf:
        return find_build_id(ELFFile(image.kernel).notes())
    return arm64.kernel_notes(image.kernel).build_id


def build_id_from_image(path: Path) -> str | None:
    """The GNU build id of the kernel in the image file at `path`; None if it has none."""
    image = read_kernel_image(path)
    try:
        return build_id_of(image)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    except KernelDataError as exc:  # ELFError, NotesError: the image holds a broken kernel
        raise ImageError(f"kernel in {path}: {exc}") from None
