"""arm64 kernel images: the `Image`, its EFI zboot wrapper, and the kernel's notes inside.

The `Image` is the kernel's memory image from `_text` on (arch/arm64/kernel/image-vars.h,
Documentation/arch/arm64/booting.rst): a 64-byte header, `code0`/`code1`, u64 `text_offset`,
`image_size`, `flags`, three reserved u64, the magic "ARM\\x64" at 0x38 and the PE header offset
at 0x3c (with CONFIG_EFI the header doubles as the EFI stub's "MZ" DOS header). There is no ELF
inside it: file offsets are link addresses minus `_text`, and the output sections sit as the
linker script laid them out (arch/arm64/kernel/vmlinux.lds.S).

EFI zboot (CONFIG_EFI_ZBOOT, drivers/firmware/efi/libstub/zboot-header.S) wraps a compressed
`Image` in a small PE: "MZ\\0\\0", "zimg", u32 payload offset, u32 payload size, two reserved u32,
the compression name as a C string at 0x18 ("gzip", "lzma", "xzkern", "zstd22", ...), then
LINUX_PE_MAGIC at 0x38 and the PE header offset at 0x3c (Makefile.zboot: the payload is the
Image padded to `image_size`; only gzip counts its own 4-byte size trailer in the payload size,
the others have a 4-byte size appended after it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from kheaders_pkg.errors import ImageError, NotesError
from kheaders_pkg.kernel.decompress import MAX_OUTPUT, Compression, decompress
from kheaders_pkg.kernel.notes import NT_GNU_BUILD_ID, Note, find_build_id, parse_notes

IMAGE_MAGIC = b"ARM\x64"
_HEADER = struct.Struct("<IIQQQQQQ4sI")
_FLAG_BIG_ENDIAN = 1  # flags bit 0: the kernel's byte order (booting.rst)

ZBOOT_TYPE = b"zimg"
_ZBOOT = struct.Struct("<4s4sII8x")  # "MZ\0\0", "zimg", payload offset, payload size, reserved
_OFF_ZBOOT_COMPRESSION = 0x18
_OFF_ZBOOT_PE_MAGIC = 0x38
LINUX_PE_MAGIC = 0x818223CD  # include/linux/pe.h
_ZBOOT_COMPRESSIONS = {
    b"gzip": Compression.GZIP,
    b"lzma": Compression.LZMA,
    b"xzkern": Compression.XZ,
    b"zstd22": Compression.ZSTD,
    b"lz4": Compression.LZ4,
    b"lzo": Compression.LZO,
}
_UNSUPPORTED = (Compression.LZ4, Compression.LZO)

# Bounds for the notes search: a kernel's .notes holds a handful of notes (GNU build id, Linux
# build salt and LTO info, at most a few Xen ones), 96 bytes in Debian's arm64 build.
_MAX_CANDIDATES = 16
_MAX_NOTES = 32
_MAX_NOTES_BYTES = 4096
_MAX_NAMESZ = 64
_MAX_DESCSZ = 1024
# The vDSO search: PAGE_SIZE steps back from a candidate note to the ELF header of the vDSO
# that would hold it (the smallest arm64 page size; 16K and 64K boundaries are 4K boundaries).
_PAGE = 4096
_VDSO_WINDOW = 16 * _PAGE
_PT_NOTE = 4


@dataclass(frozen=True)
class Arm64Header:
    text_offset: int
    image_size: int  # the kernel's size in memory, BSS included
    flags: int
    pe_offset: int

    @property
    def byteorder(self) -> Literal["little", "big"]:
        return "big" if self.flags & _FLAG_BIG_ENDIAN else "little"


@dataclass(frozen=True)
class ZbootHeader:
    payload_offset: int
    payload_size: int
    compression: Compression


@dataclass(frozen=True)
class KernelNotes:
    """The kernel's `.notes` inside an Image: what /sys/kernel/notes serves, and where it is."""

    offset: int
    blob: bytes
    notes: tuple[Note, ...]

    @property
    def build_id(self) -> str | None:
        return find_build_id(self.notes)


def is_arm64_image(data: bytes) -> bool:
    return data[0x38:0x3C] == IMAGE_MAGIC


def is_zboot(data: bytes) -> bool:
    return data[:2] == b"MZ" and data[4:8] == ZBOOT_TYPE


def parse_header(data: bytes) -> Arm64Header:
    """The arm64 Image header at the start of `data`."""
    if len(data) < _HEADER.size or not is_arm64_image(data):
        raise ImageError('not an arm64 Image: no "ARM\\x64" magic at offset 0x38')
    _c0, _c1, text_offset, image_size, flags, _r2, _r3, _r4, _magic, pe = _HEADER.unpack_from(data)
    if image_size and image_size < len(data) - _PAGE:
        # image_size covers the file and the BSS after it (0 only in pre-3.17 kernels); a file
        # much larger than it is not an Image as the kernel built it (a signature is stripped
        # before we get here).
        raise ImageError(
            f"arm64 Image header says {image_size} bytes in memory, less than the "
            f"{len(data)}-byte file"
        )
    return Arm64Header(text_offset, image_size, flags, pe)


def parse_zboot(data: bytes) -> ZbootHeader:
    """The zboot header of an EFI zboot image, checked against the file."""
    if len(data) < 0x40 or not is_zboot(data):
        raise ImageError('not an EFI zboot image: no "MZ" and "zimg" header')
    _mz, _zimg, offset, size = _ZBOOT.unpack_from(data)
    pe_magic = int.from_bytes(data[_OFF_ZBOOT_PE_MAGIC : _OFF_ZBOOT_PE_MAGIC + 4], "little")
    if pe_magic != LINUX_PE_MAGIC:
        raise ImageError(f"zboot header has 0x{pe_magic:08x} at 0x38, not LINUX_PE_MAGIC")
    name = data[_OFF_ZBOOT_COMPRESSION:_OFF_ZBOOT_PE_MAGIC].split(b"\0", 1)[0]
    kind = _ZBOOT_COMPRESSIONS.get(name)
    if kind is None:
        raise ImageError(f"zboot payload compression {name!r} is unknown")
    if size == 0 or offset < 0x40 or offset + size > len(data):
        raise ImageError(
            f"zboot payload ({size} bytes at {offset}) is empty or outside the "
            f"{len(data)}-byte image"
        )
    return ZbootHeader(offset, size, kind)


def image_of_zboot(data: bytes) -> bytes:
    """The arm64 Image compressed inside an EFI zboot image."""
    header = parse_zboot(data)
    if header.compression in _UNSUPPORTED:
        raise ImageError(f"{header.compression}-compressed zboot images are not supported")
    payload = data[header.payload_offset : header.payload_offset + header.payload_size]
    result = decompress(payload, header.compression, limit=MAX_OUTPUT, error=ImageError)
    if result.trailing:
        raise ImageError(
            f"{len(result.trailing)} bytes inside the zboot payload after the "
            f"{header.compression} stream"
        )
    image = result.data
    if not is_arm64_image(image):
        raise ImageError(f"the {header.compression} zboot payload is not an arm64 Image")
    return image


def kernel_notes(image: bytes) -> KernelNotes:
    """The kernel's own `.notes` inside an arm64 Image.

    How it is found, and why it cannot be a vDSO's. The kernel's `.notes` output section (the
    NOTES macro in RO_DATA, include/asm-generic/vmlinux.lds.h, used by vmlinux.lds.S) holds the
    linker's GNU build-id note: every GNU build-id note in the Image is a candidate. The vDSOs
    (64-bit and compat) carry build-id notes too, but each is a complete ELF shared object
    embedded page-aligned between vdso_start and vdso_end (arch/arm64/kernel/vdso-wrap.S and
    vdso32-wrap.S: `.balign PAGE_SIZE` then `.incbin "vdso.so"`), and its notes are that ELF's
    PT_NOTE segment (vdso.lds.S). A candidate that lies inside the PT_NOTE of an ELF header at a
    page boundary before it is a vDSO's and is dropped; the kernel's own notes are in no such
    segment (vmlinux's program headers are not in the Image). Exactly one candidate must remain.

    The section starts with the build-id note: ld attaches the note it synthesises to the first
    input object, arch/arm64/kernel/head.o, which has no notes of its own; the rest (Linux build
    salt and LTO info from init/version.c) follow it, and the section ends where the next bytes
    are not a note (`.BTF` or the zero padding to __end_rodata). In the corpus this equals
    /sys/kernel/notes byte for byte.
    """
    header = parse_header(image)
    order = header.byteorder
    candidates = _build_id_candidates(image, order)
    kernel = [at for at in candidates if not _in_vdso_notes(image, at, order)]
    if not kernel:
        raise ImageError(
            f"no GNU build-id note outside the vDSOs in the arm64 Image ({len(candidates)} "
            "in vDSOs)"
        )
    if len(kernel) > 1:
        raise ImageError(
            f"{len(kernel)} GNU build-id notes outside the vDSOs in the arm64 Image (offsets "
            f"{', '.join(map(str, kernel[:4]))}): cannot tell which is the kernel's"
        )
    start = kernel[0]
    end = _notes_end(image, start, order)
    blob = image[start:end]
    try:
        notes = parse_notes(blob, byteorder=order)
    except NotesError as exc:
        raise ImageError(f"kernel notes at offset {start}: {exc}") from None
    return KernelNotes(start, blob, notes)


def _build_id_candidates(image: bytes, order: Literal["little", "big"]) -> list[int]:
    """4-aligned offsets of every well-formed GNU/NT_GNU_BUILD_ID note header."""
    prefix = "<" if order == "little" else ">"
    tail = struct.pack(prefix + "I", NT_GNU_BUILD_ID) + b"GNU\0"
    head = struct.Struct(prefix + "II")
    found: list[int] = []
    at = image.find(tail)
    while at >= 0:
        start = at - head.size
        if start >= 0 and start % 4 == 0:
            namesz, descsz = head.unpack_from(image, start)
            if namesz == 4 and 0 < descsz <= _MAX_DESCSZ and at + 8 + descsz <= len(image):
                found.append(start)
                if len(found) > _MAX_CANDIDATES:
                    raise ImageError(
                        f"more than {_MAX_CANDIDATES} GNU build-id notes in the arm64 Image"
                    )
        at = image.find(tail, at + 1)
    return found


def _in_vdso_notes(image: bytes, note: int, order: Literal["little", "big"]) -> bool:
    """Whether the nearest ELF header at a page boundary at or before `note` has a PT_NOTE
    segment covering it (an embedded vDSO's notes)."""
    page = note - note % _PAGE
    while page >= 0 and note - page < _VDSO_WINDOW:
        if image[page : page + 4] == b"\x7fELF":
            return any(
                page + offset <= note < page + offset + size
                for offset, size in _note_segments(image, page)
            )
        page -= _PAGE
    return False


def _note_segments(image: bytes, elf: int) -> list[tuple[int, int]]:
    """(p_offset, p_filesz) of each PT_NOTE of the ELF header at `elf`; [] if it is not one."""
    ident = image[elf : elf + 16]
    if len(ident) < 16 or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return []
    is64 = ident[4] == 2
    prefix = "<" if ident[5] == 1 else ">"
    if is64:
        phoff = _unpack(image, elf + 32, prefix + "Q")
        phentsize, phnum = struct.unpack_from(prefix + "HH", image, elf + 54)
        entry = struct.Struct(prefix + "IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz
    else:
        phoff = _unpack(image, elf + 28, prefix + "I")
        phentsize, phnum = struct.unpack_from(prefix + "HH", image, elf + 42)
        entry = struct.Struct(prefix + "IIIIIIII")  # type, offset, vaddr, paddr, filesz, ...
    if phentsize < entry.size or phnum > 64 or elf + phoff + phnum * phentsize > len(image):
        return []
    segments: list[tuple[int, int]] = []
    for i in range(phnum):
        fields = entry.unpack_from(image, elf + phoff + i * phentsize)
        if fields[0] != _PT_NOTE:
            continue
        segments.append((fields[2], fields[5]) if is64 else (fields[1], fields[4]))
    return segments


def _unpack(image: bytes, at: int, fmt: str) -> int:
    value: int = struct.unpack_from(fmt, image, at)[0]
    return value


def _notes_end(image: bytes, start: int, order: Literal["little", "big"]) -> int:
    """Where the run of well-formed 4-aligned notes that starts at `start` ends."""
    head = struct.Struct(("<" if order == "little" else ">") + "III")
    at = start
    for _ in range(_MAX_NOTES):
        if at + head.size > len(image) or at - start >= _MAX_NOTES_BYTES:
            break
        namesz, descsz, _type = head.unpack_from(image, at)
        if not 0 < namesz <= _MAX_NAMESZ or descsz > _MAX_DESCSZ:
            break
        name = image[at + head.size : at + head.size + namesz]
        if len(name) < namesz or name[-1] != 0 or not all(0x20 <= b < 0x7F for b in name[:-1]):
            break
        end = at + head.size + _align4(namesz) + _align4(descsz)
        if end > len(image):
            break
        at = end
    return at


def _align4(value: int) -> int:
    return (value + 3) & ~3
