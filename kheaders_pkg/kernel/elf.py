"""A small ELF reader over bytes: sections, symbols, notes and the bytes between two symbols.

ELF32 and ELF64, little and big endian, as laid out in the System V gABI (ch. 4-5). Every offset
and size is checked against the data before it is used; anything out of place is an ELFError.
"""

from __future__ import annotations

import enum
import mmap
import struct
from dataclasses import dataclass
from typing import Literal

from kheaders_pkg.errors import ELFError
from kheaders_pkg.kernel.notes import Note, parse_notes

ELF_MAGIC = b"\x7fELF"


class ELFClass(enum.IntEnum):
    C32 = 1
    C64 = 2


class ELFData(enum.IntEnum):
    LSB = 1
    MSB = 2


class ELFType(enum.IntEnum):
    REL = 1  # a relocatable object, such as a .ko
    EXEC = 2  # vmlinux
    DYN = 3
    CORE = 4


class SectionType(enum.IntEnum):
    NULL = 0
    PROGBITS = 1
    SYMTAB = 2
    STRTAB = 3
    NOTE = 7
    NOBITS = 8


class SymbolBinding(enum.IntEnum):
    LOCAL = 0
    GLOBAL = 1
    WEAK = 2


_PT_NOTE = 4
_SHN_UNDEF = 0
_SHN_LORESERVE = 0xFF00  # indices from here up (ABS, COMMON, XINDEX) name no real section
_SHN_XINDEX = 0xFFFF

# (header, section header, program header, symbol) layouts per class; the byte order is prefixed.
_LAYOUTS = {
    # e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize e_phentsize e_phnum
    # e_shentsize e_shnum e_shstrndx
    ELFClass.C32: ("HHIIIIIHHHHHH", "IIIIIIIIII", "IIIIIIII", "IIIBBH"),
    ELFClass.C64: ("HHIQQQIHHHHHH", "IIQQQQIIQQ", "IIQQQQQQ", "IBBHQQ"),
}
_IDENT_SIZE = 16


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    binding: int
    type: int
    shndx: int


@dataclass(frozen=True)
class _Segment:
    type: int
    offset: int
    filesz: int


class ELFFile:
    """The parsed headers of one ELF file; `data` is kept for section reads.

    `data` may be an mmap of a large file (a distro's unstripped vmlinux): only the headers and
    the sections asked for are ever copied out of it.
    """

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self._data = data
        if len(data) < _IDENT_SIZE or data[:4] != ELF_MAGIC:
            raise ELFError("not an ELF file (bad magic)")
        try:
            self.elf_class = ELFClass(data[4])
            self.elf_data = ELFData(data[5])
        except ValueError:
            raise ELFError(f"unknown ELF class {data[4]} or data encoding {data[5]}") from None
        if data[6] != 1:
            raise ELFError(f"unknown ELF ident version {data[6]}")
        self.byteorder: Literal["little", "big"] = (
            "little" if self.elf_data is ELFData.LSB else "big"
        )
        order = "<" if self.elf_data is ELFData.LSB else ">"
        ehdr, shdr, phdr, sym = _LAYOUTS[self.elf_class]
        self._ehdr = struct.Struct(order + ehdr)
        self._shdr = struct.Struct(order + shdr)
        self._phdr = struct.Struct(order + phdr)
        self._sym = struct.Struct(order + sym)
        if len(data) < _IDENT_SIZE + self._ehdr.size:
            raise ELFError(f"ELF header truncated ({len(data)} bytes)")
        (
            self.type,
            self.machine,
            _version,
            self.entry,
            self._phoff,
            self._shoff,
            _flags,
            _ehsize,
            self._phentsize,
            self._phnum,
            self._shentsize,
            shnum,
            shstrndx,
        ) = self._ehdr.unpack_from(data, _IDENT_SIZE)
        self.sections: tuple[Section, ...] = self._read_sections(shnum, shstrndx)

    # --- headers -------------------------------------------------------------------------------

    def _table(self, what: str, offset: int, count: int, entsize: int, expected: int) -> None:
        if count and entsize != expected:
            raise ELFError(f"{what} entry size {entsize}, expected {expected}")
        if offset + count * entsize > len(self._data):
            raise ELFError(f"{what} at offset {offset} ({count} entries) runs past the end")

    def _read_sections(self, shnum: int, shstrndx: int) -> tuple[Section, ...]:
        if self._shoff == 0:
            return ()
        self._table("section header table", self._shoff, 1, self._shentsize, self._shdr.size)
        first = self._shdr.unpack_from(self._data, self._shoff)
        # Extended numbering (gABI): counts that do not fit 16 bits live in section 0.
        if shnum == 0:
            shnum = first[5]
        if shstrndx == _SHN_XINDEX:
            shstrndx = first[6]
        self._table("section header table", self._shoff, shnum, self._shentsize, self._shdr.size)
        raw = [
            self._shdr.unpack_from(self._data, self._shoff + i * self._shentsize)
            for i in range(shnum)
        ]
        for index, (_name, sh_type, _fl, _addr, offset, size, *_rest) in enumerate(raw):
            if sh_type != SectionType.NOBITS and sh_type != SectionType.NULL:
                if offset + size > len(self._data):
                    raise ELFError(f"section {index} at offset {offset} runs past the end")
        if shstrndx == 0:
            names = b""
        elif shstrndx >= shnum:
            raise ELFError(f"section name table index {shstrndx} out of range ({shnum})")
        else:
            _n, _t, _f, _a, str_off, str_size, *_ = raw[shstrndx]
            names = self._data[str_off : str_off + str_size]
        return tuple(
            Section(
                name=_string(names, r[0], f"name of section {i}") if names else "",
                type=r[1],
                flags=r[2],
                addr=r[3],
                offset=r[4],
                size=r[5],
                link=r[6],
                info=r[7],
                addralign=r[8],
                entsize=r[9],
            )
            for i, r in enumerate(raw)
        )

    def _segments(self) -> tuple[_Segment, ...]:
        if self._phoff == 0 or self._phnum == 0:
            return ()
        self._table(
            "program header table", self._phoff, self._phnum, self._phentsize, self._phdr.size
        )
        segments = []
        for i in range(self._phnum):
            fields = self._phdr.unpack_from(self._data, self._phoff + i * self._phentsize)
            # p_offset/p_filesz sit at different positions in the 32- and 64-bit layouts.
            if self.elf_class is ELFClass.C64:
                p_type, _flags, offset, _vaddr, _paddr, filesz = fields[:6]
            else:
                p_type, offset, _vaddr, _paddr, filesz = fields[:5]
            if offset + filesz > len(self._data):
                raise ELFError(f"segment {i} at offset {offset} runs past the end")
            segments.append(_Segment(p_type, offset, filesz))
        return tuple(segments)

    # --- sections ------------------------------------------------------------------------------

    def section(self, name: str) -> Section | None:
        """The first section called `name`, or None."""
        for section in self.sections:
            if section.name == name:
                return section
        return None

    def contents(self, section: Section) -> bytes:
        """The file bytes of `section` (one of `self.sections`)."""
        # SHT_NOBITS (.bss) occupies no bytes in the file: its contents are not ours to read.
        if section.type == SectionType.NOBITS:
            return b""
        return self._data[section.offset : section.offset + section.size]

    def section_bytes(self, name: str) -> bytes | None:
        """The file bytes of section `name`; None if there is no such section, b"" for NOBITS."""
        section = self.section(name)
        return None if section is None else self.contents(section)

    # --- symbols -------------------------------------------------------------------------------

    def symbols(self) -> dict[str, Symbol]:
        """Named symbols of `.symtab` (empty if stripped). A global beats a local of the same
        name (static functions may repeat across files); otherwise the first one wins."""
        symtab = next((s for s in self.sections if s.type == SectionType.SYMTAB), None)
        if symtab is None:
            return {}
        if symtab.entsize != self._sym.size or symtab.size % self._sym.size:
            raise ELFError(f"symbol table entry size {symtab.entsize}, expected {self._sym.size}")
        if not 0 < symtab.link < len(self.sections):
            raise ELFError(f"symbol table string table index {symtab.link} out of range")
        strtab = self.sections[symtab.link]
        if strtab.type != SectionType.STRTAB:
            raise ELFError(f"symbol table links to section {symtab.link}, not a string table")
        names = self.contents(strtab)
        result: dict[str, Symbol] = {}
        for index, fields in enumerate(self._sym.iter_unpack(self.contents(symtab))):
            if self.elf_class is ELFClass.C64:
                st_name, st_info, _other, shndx, value, size = fields
            else:
                st_name, value, size, st_info, _other, shndx = fields
            if st_name == 0:
                continue
            symbol = Symbol(
                name=_string(names, st_name, f"name of symbol {index}"),
                value=value,
                size=size,
                binding=st_info >> 4,
                type=st_info & 0xF,
                shndx=shndx,
            )
            seen = result.get(symbol.name)
            if seen is None or (
                seen.binding == SymbolBinding.LOCAL and symbol.binding != SymbolBinding.LOCAL
            ):
                result[symbol.name] = symbol
        return result

    def bytes_between(self, start: str, end: str) -> bytes:
        """The bytes from symbol `start` up to symbol `end`, which must share a section.

        In a relocatable file (a .ko) st_value is an offset into section st_shndx; in a linked
        file it is a virtual address inside that section (gABI "Symbol Values").
        """
        symbols = self.symbols()
        first, last = symbols.get(start), symbols.get(end)
        for name, symbol in ((start, first), (end, last)):
            if symbol is None:
                raise ELFError(f"symbol {name} not found")
        assert first is not None and last is not None
        if first.shndx != last.shndx:
            raise ELFError(f"symbols {start} and {end} are in different sections")
        if first.shndx == _SHN_UNDEF or first.shndx >= _SHN_LORESERVE:
            raise ELFError(f"symbol {start} is not defined in a section (index {first.shndx})")
        if first.shndx >= len(self.sections):
            raise ELFError(f"symbol {start} refers to section {first.shndx}, which does not exist")
        section = self.sections[first.shndx]
        if section.type == SectionType.NOBITS:
            raise ELFError(f"symbols {start}..{end} are in {section.name}, which has no file data")
        base = 0 if self.type == ELFType.REL else section.addr
        lo, hi = first.value - base, last.value - base
        if not 0 <= lo <= hi <= section.size:
            raise ELFError(
                f"symbols {start}..{end} ({first.value:#x}..{last.value:#x}) "
                f"are not an ordered range inside {section.name}"
            )
        return self._data[section.offset + lo : section.offset + hi]

    # --- notes ---------------------------------------------------------------------------------

    def notes(self) -> tuple[Note, ...]:
        """Every note of every SHT_NOTE section, or of every PT_NOTE segment if there are no
        sections. Always 4-byte stepping: Linux notes are 4-aligned even where a binutils 2.40
        link made `.notes` claim 8 (see kheaders_pkg.kernel.notes)."""
        if self.sections:
            blobs = [self.contents(s) for s in self.sections if s.type == SectionType.NOTE]
        else:
            blobs = [
                self._data[seg.offset : seg.offset + seg.filesz]
                for seg in self._segments()
                if seg.type == _PT_NOTE
            ]
        return tuple(note for blob in blobs for note in parse_notes(blob, byteorder=self.byteorder))


def _string(table: bytes, offset: int, what: str) -> str:
    """The NUL-terminated string at `offset` of a string table."""
    end = table.find(b"\0", offset)
    if offset >= len(table) or end < 0:
        raise ELFError(f"{what}: string table offset {offset} out of range or unterminated")
    # Names are bytes to ELF; surrogateescape keeps any non-UTF-8 name exact and round-trippable.
    return table[offset:end].decode("utf-8", "surrogateescape")
