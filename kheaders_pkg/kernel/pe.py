"""PE/COFF headers, as far as a Linux EFI-stub kernel needs reading: the sections, and the
Authenticode signature that Secure Boot signing appends.

Layout from the PE/COFF specification: the DOS header's `e_lfanew` (u32 at 0x3c) gives the
offset of "PE\\0\\0", then the 20-byte COFF header (machine, number of sections, size of the
optional header), the optional header (PE32 or PE32+) ending in data directories, and the section
table (40 bytes per section). Data directory 4, the certificate table, is the one entry whose
"virtual address" is a file offset: `sbsign` and `pesign` append the signature (WIN_CERTIFICATE
records, each 8-byte aligned) at the end of the file and point that entry at it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from kheaders_pkg.errors import ImageError

MZ_MAGIC = b"MZ"
PE_SIGNATURE = b"PE\0\0"
_OFF_LFANEW = 0x3C
_COFF = struct.Struct("<HHIIIHH")  # machine, sections, timestamp, symtab, symbols, opt size, chars
_SECTION = struct.Struct("<8sIIII")  # name, virtual size, virtual address, raw size, raw offset
_SECTION_SIZE = 40
_MAX_SECTIONS = 96  # the PE/COFF specification's limit on NumberOfSections
_MAX_DIRECTORIES = 16
_DIR_CERTIFICATES = 4

# WIN_CERTIFICATE: u32 dwLength (header included), u16 wRevision, u16 wCertificateType.
_WIN_CERT = struct.Struct("<IHH")
_WIN_CERT_REVISIONS = (0x0100, 0x0200)
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
_DER_SEQUENCE = 0x30  # a PKCS#7 SignedData blob is a DER SEQUENCE


class Machine(enum.IntEnum):
    """IMAGE_FILE_MACHINE_* values a Linux EFI stub is built for."""

    I386 = 0x014C
    AMD64 = 0x8664
    ARM = 0x01C2
    ARM64 = 0xAA64
    RISCV64 = 0x5064
    LOONGARCH64 = 0x6264


class OptionalMagic(enum.IntEnum):
    PE32 = 0x10B
    PE32_PLUS = 0x20B


# Offset of NumberOfRvaAndSizes in the optional header; the directories follow it.
_OFF_DIRECTORY_COUNT = {OptionalMagic.PE32: 92, OptionalMagic.PE32_PLUS: 108}


@dataclass(frozen=True)
class Section:
    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_offset: int


@dataclass(frozen=True)
class CertificateTable:
    offset: int  # a file offset, unlike every other data directory
    size: int


@dataclass(frozen=True)
class PEHeader:
    machine: int
    sections: tuple[Section, ...]
    certificates: CertificateTable | None

    @property
    def raw_end(self) -> int:
        """Where the last section's bytes in the file end."""
        return max((s.raw_offset + s.raw_size for s in self.sections), default=0)


def has_pe_header(data: bytes) -> bool:
    """`MZ` and an `e_lfanew` that points at "PE\\0\\0" inside `data`."""
    if len(data) < _OFF_LFANEW + 4 or not data.startswith(MZ_MAGIC):
        return False
    lfanew = int.from_bytes(data[_OFF_LFANEW : _OFF_LFANEW + 4], "little")
    return data[lfanew : lfanew + 4] == PE_SIGNATURE


def parse_pe(data: bytes) -> PEHeader:
    """The COFF header, sections and certificate table of the PE image `data`."""
    if not has_pe_header(data):
        raise ImageError('not a PE image: no "MZ" header pointing at a "PE\\0\\0" signature')
    coff = int.from_bytes(data[_OFF_LFANEW : _OFF_LFANEW + 4], "little") + len(PE_SIGNATURE)
    if coff + _COFF.size > len(data):
        raise ImageError(f"PE COFF header at {coff} runs past the end of the image")
    machine, count, _ts, _symtab, _symbols, opt_size, _chars = _COFF.unpack_from(data, coff)
    if not 0 < count <= _MAX_SECTIONS:
        raise ImageError(f"PE image claims {count} sections (1 to {_MAX_SECTIONS} allowed)")
    optional = coff + _COFF.size
    table = optional + opt_size
    if table + count * _SECTION_SIZE > len(data):
        raise ImageError("PE section table runs past the end of the image")
    certificates = _certificate_table(data, optional, opt_size)
    sections = tuple(_section(data, table + i * _SECTION_SIZE) for i in range(count))
    for s in sections:
        if s.raw_offset + s.raw_size > len(data):
            raise ImageError(
                f"PE section {s.name!r} ({s.raw_size} bytes at {s.raw_offset}) runs past the "
                f"end of the {len(data)}-byte image"
            )
    return PEHeader(machine, sections, certificates)


def _certificate_table(data: bytes, optional: int, size: int) -> CertificateTable | None:
    if size < 2:
        raise ImageError(f"PE optional header of {size} bytes is too short")
    magic = int.from_bytes(data[optional : optional + 2], "little")
    try:
        kind = OptionalMagic(magic)
    except ValueError:
        raise ImageError(f"PE optional header has unknown magic 0x{magic:x}") from None
    count_at = _OFF_DIRECTORY_COUNT[kind]
    if size < count_at + 4:
        raise ImageError(f"PE optional header of {size} bytes has no data directories")
    count = int.from_bytes(data[optional + count_at : optional + count_at + 4], "little")
    if count > _MAX_DIRECTORIES or size < count_at + 4 + 8 * count:
        raise ImageError(f"PE optional header claims {count} data directories it does not hold")
    if count <= _DIR_CERTIFICATES:
        return None
    entry = optional + count_at + 4 + 8 * _DIR_CERTIFICATES
    offset, length = struct.unpack_from("<II", data, entry)
    return CertificateTable(offset, length) if length else None


def _section(data: bytes, at: int) -> Section:
    raw_name, vsize, vaddr, raw_size, raw_offset = _SECTION.unpack_from(data, at)
    name = raw_name.rstrip(b"\0").decode("ascii", "replace")
    return Section(name, vsize, vaddr, raw_size, raw_offset)


def without_signature(data: bytes, header: PEHeader) -> bytes:
    """`data` without its appended Authenticode signature; unchanged when it has none.

    The table must be what a signing tool appends: at the very end of the file, after every
    section's bytes, made of well-formed WIN_CERT_TYPE_PKCS_SIGNED_DATA records holding DER.
    Anything else is refused, so that a signature can never hide or shadow image bytes.
    """
    table = header.certificates
    if table is None:
        return data
    end = table.offset + table.size
    if table.offset < header.raw_end or end != len(data):
        raise ImageError(
            f"PE certificate table ({table.size} bytes at {table.offset}) is not appended after "
            f"the image (sections end at {header.raw_end}, the file at {len(data)})"
        )
    at = table.offset
    while at < end:
        if at + _WIN_CERT.size > end:
            raise ImageError(f"PE certificate at {at}: truncated WIN_CERTIFICATE header")
        length, revision, kind = _WIN_CERT.unpack_from(data, at)
        if length <= _WIN_CERT.size or at + length > end:
            raise ImageError(f"PE certificate at {at}: length {length} does not fit the table")
        if revision not in _WIN_CERT_REVISIONS or kind != WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            raise ImageError(
                f"PE certificate at {at}: revision 0x{revision:x} type 0x{kind:x} is not an "
                "Authenticode PKCS#7 signature"
            )
        if data[at + _WIN_CERT.size] != _DER_SEQUENCE:
            raise ImageError(f"PE certificate at {at}: the signature is not DER (PKCS#7)")
        at += (length + 7) & ~7  # each record starts 8-byte aligned
    # What precedes the table is the image as built (plus the zeros that pad it to 8 bytes).
    return data[: table.offset]
