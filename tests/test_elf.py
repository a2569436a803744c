"""The ELF reader against the corpus modules and vmlinux, synthetic ELF32/big-endian files,
and malformed input."""

from __future__ import annotations

import hashlib
import mmap
import struct

import pytest

from kheaders_pkg.errors import ELFError, NotesError
from kheaders_pkg.kernel.elf import ELFClass, ELFData, ELFFile, ELFType, SectionType, SymbolBinding
from kheaders_pkg.kernel.image import vmlinux_of_bzimage
from kheaders_pkg.kernel.notes import Note, find_build_id
from tests.conftest import corpus_kernel

MODULE_KERNELS = ("debian-6.1.0-56-amd64", "debian-6.12.107+deb13-amd64", "kh-6.1.192-kh-a-mod")


def kheaders_ko(name: str) -> bytes:
    return (corpus_kernel(name).modules / "kheaders.ko").read_bytes()


@pytest.fixture(scope="module")
def vmlinux() -> bytes:
    return vmlinux_of_bzimage(corpus_kernel("kh-6.1.192-kh-a").vmlinuz.read_bytes())


# --- the real files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODULE_KERNELS)
def test_kheaders_ko_symbols_bound_the_archive(name: str) -> None:
    kernel = corpus_kernel(name)
    elf = ELFFile(kheaders_ko(name))
    assert (elf.elf_class, elf.elf_data, elf.type) == (ELFClass.C64, ELFData.LSB, ELFType.REL)
    symbols = elf.symbols()
    start, end = symbols["kernel_headers_data"], symbols["kernel_headers_data_end"]
    assert start.binding == end.binding == SymbolBinding.GLOBAL
    assert elf.sections[start.shndx].name == ".rodata"
    archive = elf.bytes_between("kernel_headers_data", "kernel_headers_data_end")
    assert len(archive) == end.value - start.value == kernel.expected["kheaders_tar_xz_size"]
    assert hashlib.sha256(archive).hexdigest() == kernel.expected["kheaders_tar_xz_sha256"]


def test_module_notes_include_an_8_aligned_property_section() -> None:
    # The 6.12 module has .note.gnu.property (sh_addralign 8) before the 4-aligned notes.
    elf = ELFFile(kheaders_ko("debian-6.12.107+deb13-amd64"))
    prop = elf.section(".note.gnu.property")
    assert prop is not None and prop.type == SectionType.NOTE and prop.addralign == 8
    notes = elf.notes()
    assert [(n.name, n.type) for n in notes] == [
        ("GNU", 5),
        ("GNU", 3),
        ("Linux", 257),
        ("Linux", 256),
    ]
    build_id = elf.section_bytes(".note.gnu.build-id")
    assert build_id is not None
    assert find_build_id(notes) == build_id[16:36].hex()  # after header and "GNU\0"
    assert notes[3].desc.rstrip(b"\0") == b"6.12.107+deb13-amd64"


def test_section_lookup_returns_none_for_a_missing_section() -> None:
    elf = ELFFile(kheaders_ko("kh-6.1.192-kh-a-mod"))
    assert elf.section(".no-such-section") is None
    assert elf.section_bytes(".no-such-section") is None


def test_nobits_section_has_no_file_bytes() -> None:
    elf = ELFFile(kheaders_ko("debian-6.1.0-56-amd64"))
    bss = next(s for s in elf.sections if s.type == SectionType.NOBITS)
    assert elf.section_bytes(bss.name) == b""


def test_vmlinux_notes_section_is_the_sysfs_notes(vmlinux: bytes) -> None:
    kernel = corpus_kernel("kh-6.1.192-kh-a")
    elf = ELFFile(vmlinux)
    assert elf.type == ELFType.EXEC
    # /sys/kernel/notes is __start_notes..__stop_notes, i.e. the .notes section (kernel/ksysfs.c).
    assert elf.section_bytes(".notes") == (kernel.sysroot / "sys/kernel/notes").read_bytes()
    assert [[n.name, n.type] for n in elf.notes()] == kernel.expected["notes_names"]
    assert find_build_id(elf.notes()) == kernel.expected["build_id"]


def test_notes_come_from_pt_note_segments_without_section_headers(vmlinux: bytes) -> None:
    elf = ELFFile(vmlinux)
    stripped = bytearray(vmlinux)
    # e_shoff (0x28), e_shnum (0x3c), e_shstrndx (0x3e) of an ELF64 header: no sections left.
    struct.pack_into("<Q", stripped, 0x28, 0)
    struct.pack_into("<HH", stripped, 0x3C, 0, 0)
    without_sections = ELFFile(bytes(stripped))
    assert without_sections.sections == ()
    assert without_sections.notes() == elf.notes()


def test_stripped_vmlinux_has_no_symbols(vmlinux: bytes) -> None:
    elf = ELFFile(vmlinux)
    assert elf.symbols() == {}
    with pytest.raises(ELFError, match="symbol __start_notes not found"):
        elf.bytes_between("__start_notes", "__stop_notes")


# --- synthetic files: every class and byte order ---------------------------------------------


def build_elf(
    elf_class: ELFClass,
    order: ELFData,
    *,
    elf_type: ELFType = ELFType.REL,
    rodata_addr: int = 0,
    symbols: tuple[tuple[str, int, int, int], ...] = (),
) -> bytes:
    """A small ELF with .rodata, .note, .bss, .symtab, .strtab, .shstrtab, laid out like `ld -r`.

    `symbols` holds (name, value, shndx, binding); .rodata is section 1.
    """
    p = "<" if order is ELFData.LSB else ">"
    is64 = elf_class is ELFClass.C64
    ehdr = struct.Struct(p + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH"))
    shdr = struct.Struct(p + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII"))
    sym = struct.Struct(p + ("IBBHQQ" if is64 else "IIIBBH"))
    rodata = b"<before>" + b"PAYLOAD-" * 8 + b"<after>"
    note = struct.pack(p + "III", 4, 8, 3) + b"GNU\0" + bytes(range(1, 9))
    strtab = b"\0"
    symtab = sym.size * b"\0"
    for name, value, shndx, binding in symbols:
        entry = (len(strtab), binding << 4, 0, shndx, value, 0)
        if not is64:
            entry = (len(strtab), value, 0, binding << 4, 0, shndx)
        symtab += sym.pack(*entry)
        strtab += name.encode() + b"\0"
    names = [b"", b".rodata", b".note", b".bss", b".symtab", b".strtab", b".shstrtab"]
    shstrtab = b"\0".join(names) + b"\0"
    name_offsets = [shstrtab.index(b"\0" + n + b"\0") + 1 if n else 0 for n in names]
    contents = [b"", rodata, note, b"", symtab, strtab, shstrtab]
    types = [0, SectionType.PROGBITS, SectionType.NOTE, SectionType.NOBITS, SectionType.SYMTAB,
             SectionType.STRTAB, SectionType.STRTAB]  # fmt: skip
    body = bytearray(16 + ehdr.size)
    offsets = []
    for blob in contents:
        body += b"\0" * (-len(body) % 8)
        offsets.append(len(body))
        body += blob
    body += b"\0" * (-len(body) % 8)
    shoff = len(body)
    for i, blob in enumerate(contents):
        link = 5 if i == 4 else 0
        entsize = sym.size if i == 4 else 0
        addr = rodata_addr if i == 1 else 0
        size = 64 if i == 3 else len(blob)
        body += shdr.pack(name_offsets[i], types[i], 0, addr, offsets[i], size, link, 0, 4, entsize)
    body[0:16] = b"\x7fELF" + bytes([elf_class, order, 1]) + b"\0" * 9
    ehdr.pack_into(body, 16, elf_type, 62, 1, 0, 0, shoff, 0, 16 + ehdr.size, 0, 0, shdr.size, 7, 6)
    return bytes(body)


ALL_KINDS = [(c, d) for c in ELFClass for d in ELFData]
PAYLOAD_SYMBOLS = (("start", 8, 1, 1), ("end", 72, 1, 1), ("local", 0, 1, 0))


@pytest.mark.parametrize(("elf_class", "order"), ALL_KINDS)
def test_synthetic_elf_of_each_class_and_byte_order_is_read(
    elf_class: ELFClass, order: ELFData
) -> None:
    elf = ELFFile(build_elf(elf_class, order, symbols=PAYLOAD_SYMBOLS))
    assert (elf.elf_class, elf.elf_data) == (elf_class, order)
    assert [s.name for s in elf.sections] == [
        "",
        ".rodata",
        ".note",
        ".bss",
        ".symtab",
        ".strtab",
        ".shstrtab",
    ]
    assert elf.bytes_between("start", "end") == b"PAYLOAD-" * 8
    assert elf.notes() == (Note("GNU", 3, bytes(range(1, 9))),)
    assert elf.symbols()["local"].binding == SymbolBinding.LOCAL


@pytest.mark.parametrize(("elf_class", "order"), ALL_KINDS)
def test_symbol_values_are_addresses_in_a_linked_file(elf_class: ELFClass, order: ELFData) -> None:
    base = 0x1000
    linked = tuple((n, v + base, s, b) for n, v, s, b in PAYLOAD_SYMBOLS)
    data = build_elf(elf_class, order, elf_type=ELFType.EXEC, rodata_addr=base, symbols=linked)
    assert ELFFile(data).bytes_between("start", "end") == b"PAYLOAD-" * 8


def test_global_symbol_wins_over_a_local_of_the_same_name() -> None:
    symbols = (("dup", 0, 1, 0), ("dup", 8, 1, 1), ("dup", 16, 1, 0))
    elf = ELFFile(build_elf(ELFClass.C64, ELFData.LSB, symbols=symbols))
    assert elf.symbols()["dup"].value == 8


# --- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbols", "start", "end", "message"),
    [
        pytest.param(PAYLOAD_SYMBOLS, "nope", "end", "symbol nope not found", id="start-missing"),
        pytest.param(PAYLOAD_SYMBOLS, "start", "nope", "symbol nope not found", id="end-missing"),
        pytest.param(PAYLOAD_SYMBOLS, "end", "start", "not an ordered range", id="reversed"),
        pytest.param(
            (("a", 0, 1, 1), ("b", 0, 2, 1)), "a", "b", "different sections", id="two-sections"
        ),
        pytest.param(
            (("a", 0, 1, 1), ("b", 999, 1, 1)), "a", "b", "not an ordered range", id="past-section"
        ),
        pytest.param((("a", 0, 0, 1), ("b", 8, 0, 1)), "a", "b", "not defined", id="undefined"),
        pytest.param(
            (("a", 0, 0xFFF1, 1), ("b", 8, 0xFFF1, 1)), "a", "b", "not defined", id="absolute"
        ),
        pytest.param((("a", 0, 9, 1), ("b", 8, 9, 1)), "a", "b", "does not exist", id="bad-shndx"),
        pytest.param((("a", 0, 3, 1), ("b", 8, 3, 1)), "a", "b", "no file data", id="in-bss"),
    ],
)
def test_bad_symbol_range_raises_elf_error(
    symbols: tuple[tuple[str, int, int, int], ...], start: str, end: str, message: str
) -> None:
    elf = ELFFile(build_elf(ELFClass.C64, ELFData.LSB, symbols=symbols))
    with pytest.raises(ELFError, match=message):
        elf.bytes_between(start, end)


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


SYNTH = build_elf(ELFClass.C64, ELFData.LSB, symbols=PAYLOAD_SYMBOLS)
SHOFF = struct.unpack_from("<Q", SYNTH, 0x28)[0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "bad magic", id="empty"),
        pytest.param(b"\x7fEL", "bad magic", id="short-magic"),
        pytest.param(b"MZ" + SYNTH[2:], "bad magic", id="pe-magic"),
        pytest.param(SYNTH[:4] + b"\x03" + SYNTH[5:], "unknown ELF class", id="class-3"),
        pytest.param(SYNTH[:5] + b"\x00" + SYNTH[6:], "data encoding", id="data-0"),
        pytest.param(SYNTH[:6] + b"\x02" + SYNTH[7:], "ident version", id="version-2"),
        pytest.param(SYNTH[:40], "header truncated", id="header-truncated"),
        pytest.param(SYNTH[: SHOFF + 100], "runs past the end", id="section-table-cut"),
        pytest.param(_patched(SYNTH, 0x28, "<Q", 1 << 40), "runs past the end", id="shoff-huge"),
        pytest.param(_patched(SYNTH, 0x3A, "<H", 32), "entry size 32", id="shentsize"),
        pytest.param(_patched(SYNTH, 0x3C, "<H", 2000), "runs past the end", id="shnum-huge"),
        pytest.param(_patched(SYNTH, 0x3E, "<H", 7), "index 7 out of range", id="shstrndx"),
        pytest.param(
            _patched(SYNTH, SHOFF + 64 + 0x18, "<Q", 1 << 32), "section 1", id="sh-offset-past-end"
        ),
        pytest.param(
            _patched(SYNTH, SHOFF + 64 + 0x20, "<Q", 1 << 20), "section 1", id="sh-size-past-end"
        ),
        pytest.param(
            _patched(SYNTH, SHOFF + 64, "<I", 10_000), "name of section 1", id="sh-name-offset"
        ),
    ],
)
def test_malformed_elf_raises_elf_error(data: bytes, message: str) -> None:
    with pytest.raises(ELFError, match=message):
        ELFFile(data)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        pytest.param(4 * 64 + 0x38, "<Q", 16, "entry size 16", id="symtab-entsize"),
        pytest.param(4 * 64 + 0x28, "<I", 99, "string table index 99", id="symtab-link-range"),
        pytest.param(4 * 64 + 0x28, "<I", 1, "not a string table", id="symtab-link-type"),
    ],
)
def test_malformed_symbol_table_raises_elf_error(
    offset: int, fmt: str, value: int, message: str
) -> None:
    elf = ELFFile(_patched(SYNTH, SHOFF + offset, fmt, value))
    with pytest.raises(ELFError, match=message):
        elf.symbols()


@pytest.mark.parametrize("name", MODULE_KERNELS)
def test_truncated_module_raises_elf_error(name: str) -> None:
    # A .ko keeps its section header table at the end: any cut loses part of it.
    data = kheaders_ko(name)
    for length in [0, 3, 16, 63, 64, *range(65, len(data), len(data) // 50), len(data) - 1]:
        with pytest.raises(ELFError):
            ELFFile(data[:length])


def test_module_with_a_bad_note_raises_notes_error() -> None:
    elf = ELFFile(kheaders_ko("kh-6.1.192-kh-a-mod"))
    note = elf.section(".note.gnu.build-id")
    assert note is not None
    data = _patched(kheaders_ko("kh-6.1.192-kh-a-mod"), note.offset, "<I", 0xFFFF)
    with pytest.raises(NotesError, match="namesz 65535"):
        ELFFile(data).notes()


def test_elf_reads_an_mmap_of_a_file_without_copying_it_whole() -> None:
    kernel = corpus_kernel("debian-6.12.107+deb13-amd64")
    with (
        open(kernel.modules / "kheaders.ko", "rb") as file,
        mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
    ):
        elf = ELFFile(mapped)
        archive = elf.bytes_between("kernel_headers_data", "kernel_headers_data_end")
        notes = elf.notes()
        del elf  # the mmap cannot close while the reader still holds it
    assert isinstance(archive, bytes)
    assert archive == kernel.archive.read_bytes()
    assert notes == ELFFile(kheaders_ko(kernel.name)).notes()
