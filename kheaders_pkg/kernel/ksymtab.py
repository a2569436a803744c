"""A kernel's exports read back from its own ELF: `__ksymtab*`, `__kcrctab*`, `__versions`.

The layout is that of Linux >= 5.19 built with PREL32 ksymtab entries (x86_64, arm64;
include/linux/export.h, background.md 10): `__ksymtab` and `__ksymtab_gpl` hold 12-byte entries
`{s32 value, s32 name, s32 namespace}`, each an offset from its own field to its target; names
and namespaces are NUL-terminated strings in `__ksymtab_strings`; the CRC of entry i is the u32
at index i of `__kcrctab` / `__kcrctab_gpl` (before 5.19 it was the value of a `__crc_NAME`
symbol, a layout we do not read). In a module (ELF REL) the ksymtab fields are zero and filled by
PC-relative relocations; its CRCs are literal.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from kheaders_pkg.errors import ELFError
from kheaders_pkg.kernel.elf import ELFFile, ELFType, Section

_ENTRY = 12  # three s32 fields
_CRC = 4
_SHT_RELA = 4
_SHT_SYMTAB = 2

# The machines whose kernels use PREL32 ksymtab entries (CONFIG_HAVE_ARCH_PREL32_RELOCATIONS),
# with the relocation types a module's ksymtab fields carry (`.long sym - .`).
_EM_X86_64 = 62
_EM_AARCH64 = 183
_PC32_RELOCATIONS = {_EM_X86_64: 2, _EM_AARCH64: 261}  # R_X86_64_PC32, R_AARCH64_PREL32
_MACHINE_NAMES = {_EM_X86_64: "x86_64", _EM_AARCH64: "arm64"}

# struct modversion_info (include/linux/module.h): unsigned long crc; char name[64 - 8].
_VERSION_ENTRY = 64
_VERSION_NAME = 56


class ExportKind(enum.StrEnum):
    """The export macro, as Module.symvers spells it."""

    PLAIN = "EXPORT_SYMBOL"
    GPL = "EXPORT_SYMBOL_GPL"


# The table a kind lives in, and its CRC table.
_TABLES = {
    ExportKind.PLAIN: ("__ksymtab", "__kcrctab"),
    ExportKind.GPL: ("__ksymtab_gpl", "__kcrctab_gpl"),
}


class UnsupportedLayout(ELFError):
    """The image holds exports in a layout we do not read (older kernels, other machines)."""


@dataclass(frozen=True)
class Export:
    name: str
    crc: int | None  # None: the kernel was built without CONFIG_MODVERSIONS
    kind: ExportKind
    namespace: str  # "" for none


@dataclass(frozen=True)
class Import:
    """One `__versions` entry of a module: a symbol it uses and the CRC it was built against."""

    name: str
    crc: int


def _machine(elf: ELFFile) -> int:
    if elf.machine not in _PC32_RELOCATIONS:
        raise UnsupportedLayout(
            f"ELF machine {elf.machine}: only x86_64 and arm64 PREL32 export tables are read"
        )
    return int(elf.machine)


def _cstring(table: bytes, offset: int, what: str) -> str:
    end = table.find(b"\0", offset)
    if not 0 <= offset < len(table) or end < 0:
        raise ELFError(f"{what}: offset {offset} is outside __ksymtab_strings")
    return table[offset:end].decode("ascii", "surrogateescape")


def _s32s(elf: ELFFile, data: bytes) -> Iterator[tuple[int, int, int]]:
    order = "<" if elf.byteorder == "little" else ">"
    yield from struct.iter_unpack(order + "iii", data)


def _crcs(elf: ELFFile, name: str, count: int) -> list[int | None]:
    data = elf.section_bytes(name)
    if data is None:
        return [None] * count
    if len(data) != count * _CRC:
        raise UnsupportedLayout(
            f"{name} holds {len(data)} bytes for {count} exports: not the Linux >= 5.19 layout "
            "(one u32 CRC per ksymtab entry)"
        )
    order = "<" if elf.byteorder == "little" else ">"
    return [c for (c,) in struct.iter_unpack(order + "I", data)]


def _table(elf: ELFFile, kind: ExportKind) -> tuple[Section, bytes] | None:
    name = _TABLES[kind][0]
    section = elf.section(name)
    if section is None:
        return None
    data = elf.contents(section)
    if len(data) % _ENTRY:
        raise UnsupportedLayout(
            f"{name} is {len(data)} bytes, not a whole number of 12-byte PREL32 entries "
            "(absolute-pointer or pre-5.4 layout)"
        )
    return section, data


def _require_strings(elf: ELFFile) -> Section:
    strings = elf.section("__ksymtab_strings")
    if strings is None:
        raise UnsupportedLayout("the image has export tables but no __ksymtab_strings")
    return strings


def vmlinux_exports(elf: ELFFile) -> tuple[Export, ...]:
    """Every export of a linked kernel (vmlinux), in table order (by name, as the linker sorts)."""
    _machine(elf)
    if elf.type != ELFType.EXEC:
        raise ELFError(f"ELF type {elf.type} is not a linked kernel (vmlinux)")
    tables = {kind: _table(elf, kind) for kind in ExportKind}
    if all(t is None for t in tables.values()):
        raise UnsupportedLayout("the image has no __ksymtab: a kernel built without exports?")
    strings = _require_strings(elf)
    text = elf.contents(strings)
    exports: list[Export] = []
    for kind, found in tables.items():
        if found is None:
            continue
        section, data = found
        crcs = _crcs(elf, _TABLES[kind][1], len(data) // _ENTRY)
        for i, (_value, name_off, ns_off) in enumerate(_s32s(elf, data)):
            field = section.addr + i * _ENTRY
            name = _cstring(text, field + 4 + name_off - strings.addr, f"{section.name}[{i}] name")
            namespace = (
                ""
                if ns_off == 0
                else _cstring(text, field + 8 + ns_off - strings.addr, "namespace")
            )
            exports.append(Export(name, crcs[i], kind, namespace))
    return tuple(exports)


@dataclass(frozen=True)
class _Reloc:
    offset: int
    symbol: int
    type: int
    addend: int


def _relocations(elf: ELFFile, target: int) -> list[_Reloc]:
    """The RELA entries that apply to section index `target`."""
    order = "<" if elf.byteorder == "little" else ">"
    result: list[_Reloc] = []
    for section in elf.sections:
        if section.type != _SHT_RELA or section.info != target:
            continue
        if section.entsize != 24 or section.size % 24:
            raise UnsupportedLayout(f"{section.name}: only 64-bit RELA relocations are read")
        for offset, info, addend in struct.iter_unpack(order + "QQq", elf.contents(section)):
            result.append(_Reloc(offset, info >> 32, info & 0xFFFFFFFF, addend))
    return result


def _symbol_table(elf: ELFFile) -> list[tuple[int, int]]:
    """(st_shndx, st_value) of every symbol, by index (64-bit layout: the modules we read)."""
    symtab = next((s for s in elf.sections if s.type == _SHT_SYMTAB), None)
    if symtab is None:
        raise ELFError("module has no symbol table")
    order = "<" if elf.byteorder == "little" else ">"
    if symtab.size % 24:
        raise ELFError("module symbol table is not made of 24-byte entries")
    return [
        (shndx, value)
        for _name, _info, _other, shndx, value, _size in struct.iter_unpack(
            order + "IBBHQQ", elf.contents(symtab)
        )
    ]


def module_exports(elf: ELFFile) -> tuple[Export, ...]:
    """Every export of a module (.ko), in table order; names come from the relocations."""
    machine = _machine(elf)
    if elf.type != ELFType.REL:
        raise ELFError(f"ELF type {elf.type} is not a module (relocatable object)")
    tables = {kind: _table(elf, kind) for kind in ExportKind}
    if all(t is None for t in tables.values()):
        return ()
    strings = _require_strings(elf)
    strings_index = elf.sections.index(strings)
    text = elf.contents(strings)
    symbols = _symbol_table(elf)
    exports: list[Export] = []
    for kind, found in tables.items():
        if found is None:
            continue
        section, data = found
        count = len(data) // _ENTRY
        crcs = _crcs(elf, _TABLES[kind][1], count)
        # field offset inside the table -> offset into __ksymtab_strings
        targets: dict[int, int] = {}
        for rel in _relocations(elf, elf.sections.index(section)):
            if rel.offset % _ENTRY == 0:
                continue  # the value field: the exported object itself
            if rel.type != _PC32_RELOCATIONS[machine]:
                raise UnsupportedLayout(f"{section.name}: relocation type {rel.type}, not PREL32")
            if rel.symbol >= len(symbols):
                raise ELFError(f"{section.name}: relocation names symbol {rel.symbol}, not there")
            shndx, value = symbols[rel.symbol]
            if shndx != strings_index:
                raise ELFError(f"{section.name}: a name field points outside __ksymtab_strings")
            targets[rel.offset] = value + rel.addend
        for i in range(count):
            name_at = targets.get(i * _ENTRY + 4)
            if name_at is None:
                raise ELFError(f"{section.name}[{i}]: no relocation gives its name")
            ns_at = targets.get(i * _ENTRY + 8)
            namespace = "" if ns_at is None else _cstring(text, ns_at, "namespace")
            name = _cstring(text, name_at, f"{section.name}[{i}] name")
            exports.append(Export(name, crcs[i], kind, namespace))
    return tuple(exports)


def module_imports(elf: ELFFile) -> tuple[Import, ...]:
    """The `__versions` entries of a module: what it imports and the CRCs it expects."""
    data = elf.section_bytes("__versions")
    if not data:
        return ()
    if len(data) % _VERSION_ENTRY:
        raise ELFError(f"__versions is {len(data)} bytes, not whole 64-byte entries")
    order = "<" if elf.byteorder == "little" else ">"
    imports = []
    for i in range(0, len(data), _VERSION_ENTRY):
        (crc,) = struct.unpack_from(order + "Q", data, i)
        raw = data[i + 8 : i + 8 + _VERSION_NAME]
        name = raw.split(b"\0", 1)[0].decode("ascii", "surrogateescape")
        imports.append(Import(name, crc & 0xFFFFFFFF))
    return tuple(imports)


def machine_name(elf: ELFFile) -> str:
    """x86_64 or arm64, for messages; UnsupportedLayout for anything else."""
    return _MACHINE_NAMES[_machine(elf)]


# --- a kernel image without an ELF (arm64 `Image`) ----------------------------------------------

# __ksymtab_strings: thousands of NUL-terminated identifiers, each name followed by its namespace
# ("" for most: a second NUL). Possessive quantifiers keep the scan linear.
_STRING_RUN = re.compile(rb"(?:[A-Za-z0-9_.]++\0\0?+){1000,}+")
# The linker script (include/asm-generic/vmlinux.lds.h RO_DATA) places __ksymtab, __ksymtab_gpl,
# __kcrctab, __kcrctab_gpl and __ksymtab_strings one after the other, all in the first few MiB
# before the strings; the tables are 4-aligned.
_TABLES_WINDOW = 8 * 1024 * 1024
_STRINGS_ALIGN = 16
_MIN_EXPORTS = 100


@dataclass(frozen=True)
class _Located:
    first: int  # offset of the first __ksymtab entry
    count: int  # entries of __ksymtab and __ksymtab_gpl together
    split: int  # index of the first __ksymtab_gpl entry
    crcs: int | None  # offset of __kcrctab (followed by __kcrctab_gpl), None without MODVERSIONS


def flat_image_exports(image: bytes, byteorder: Literal["little", "big"]) -> tuple[Export, ...]:
    """Every export of a kernel loaded as one flat image (arm64 `Image`), found by structure.

    PREL32 offsets do not depend on where the image is loaded, so the tables read the same from
    the file as from memory. The strings are found first; the tables are the run of 12-byte
    entries before them whose names and namespaces all point into them, sorted by name within
    each table; the CRCs, one u32 per entry, fill the gap between the tables and the strings.
    """
    order = "<" if byteorder == "little" else ">"
    regions = sorted(
        ((m.start(), m.end()) for m in _STRING_RUN.finditer(image)), key=lambda r: r[0] - r[1]
    )
    for start, end in regions:
        found = _locate(image, order, start, end)
        if found is not None:
            return _read_located(image, order, found)
    raise UnsupportedLayout(
        "no __ksymtab of 12-byte PREL32 entries with one u32 CRC each before __ksymtab_strings "
        "was found in the image (not the Linux >= 5.19 layout?)"
    )


def _locate(image: bytes, order: str, s0: int, s1: int) -> _Located | None:
    hi = s0 & ~3
    lo = max(0, hi - _TABLES_WINDOW)
    ints = struct.unpack_from(f"{order}{(hi - lo) // 4}i", image, lo)
    inside = [s0 <= lo + 4 * i + v < s1 for i, v in enumerate(ints)]
    # The longest run of entries whose name and namespace fields both point into the strings
    # (a namespace offset of 0 means none: the assembler's exports write it so).
    best = (0, 0)
    for phase in range(3):
        run = None
        for i in range(phase, len(inside) - 1, 3):
            if inside[i] and (inside[i + 1] or ints[i + 1] == 0):
                run = i if run is None else run
                continue
            if run is not None and i - run > best[1] - best[0]:
                best = (run, i)
            run = None
        if run is not None and len(inside) - 1 - run > best[1] - best[0]:
            best = (run, len(inside) - 1)
    count = (best[1] - best[0]) // 3
    if count < _MIN_EXPORTS:
        return None
    first = lo + 4 * best[0] - 4  # the value field precedes the name field
    end = first + count * _ENTRY
    gap = s0 - end
    if 4 * count <= gap < 4 * count + _STRINGS_ALIGN:
        crcs: int | None = end
    elif 0 <= gap < _STRINGS_ALIGN:
        crcs = None
    else:
        return None
    names = [_flat_name(image, order, first + i * _ENTRY + 4) for i in range(count)]
    descents = [i for i in range(1, count) if names[i] <= names[i - 1]]
    if len(descents) > 1:
        return None
    split = descents[0] if descents else count
    return _Located(first, count, split, crcs)


def _flat_name(image: bytes, order: str, field: int) -> bytes:
    (offset,) = struct.unpack_from(f"{order}i", image, field)
    target = field + offset
    return image[target : image.index(b"\0", target)]


def _read_located(image: bytes, order: str, found: _Located) -> tuple[Export, ...]:
    crcs: tuple[int, ...] | None = None
    if found.crcs is not None:
        crcs = struct.unpack_from(f"{order}{found.count}I", image, found.crcs)
    exports = []
    for i in range(found.count):
        entry = found.first + i * _ENTRY
        name = _flat_name(image, order, entry + 4).decode("ascii", "surrogateescape")
        namespace = _flat_name(image, order, entry + 8).decode("ascii", "surrogateescape")
        if struct.unpack_from(f"{order}i", image, entry + 8)[0] == 0:
            namespace = ""
        kind = ExportKind.PLAIN if i < found.split else ExportKind.GPL
        exports.append(Export(name, None if crcs is None else crcs[i], kind, namespace))
    return tuple(exports)
