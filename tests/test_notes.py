"""The notes parser against every corpus kernel's /sys/kernel/notes, and malformed tables."""

from __future__ import annotations

import random
import struct
from typing import Literal

import pytest

from kheaders_pkg.errors import NotesError
from kheaders_pkg.kernel.notes import Note, find_build_id, parse_notes, read_build_id
from tests.conftest import CorpusKernel, corpus_kernel


def sysfs_notes(kernel: CorpusKernel) -> bytes:
    return (kernel.sysroot / "sys/kernel/notes").read_bytes()


def encode(
    notes: list[Note] | tuple[Note, ...],
    *,
    byteorder: Literal["little", "big"] = "little",
    align: int = 4,
) -> bytes:
    """A notes table laid out the way a linker would, for building test inputs."""
    out = bytearray()
    prefix = "<" if byteorder == "little" else ">"
    for note in notes:
        name = note.name.encode() + b"\0"
        out += struct.pack(prefix + "III", len(name), len(note.desc), note.type) + name
        out += b"\0" * (-len(out) % align) + note.desc
        out += b"\0" * (-len(out) % align)
    return bytes(out)


# A .note.gnu.property note as gcc emits it for x86-64 IBT (the 6.12 corpus kheaders.ko has one):
# header + "GNU\0" is 16 bytes and the descriptor 16, so it is 8-aligned throughout.
GNU_PROPERTY = Note("GNU", 5, bytes.fromhex("020000c0040000000100000000000000"))


def test_build_id_of_sysfs_notes_matches_expected(kernel: CorpusKernel) -> None:
    assert read_build_id(sysfs_notes(kernel)) == kernel.expected["build_id"]


def test_note_names_and_types_are_read_in_kernel_order(kernel: CorpusKernel) -> None:
    notes = parse_notes(sysfs_notes(kernel))
    assert [[n.name, n.type] for n in notes] == kernel.expected["notes_names"]


@pytest.mark.parametrize(
    ("name", "index"),
    [("debian-6.1.0-56-amd64", 15), ("debian-6.12.107+deb13-amd64", 18)],
)
def test_build_id_is_found_wherever_it_sits(name: str, index: int) -> None:
    # 6.1 Debian: between the Xen notes; 6.12: the last note.
    notes = parse_notes(sysfs_notes(corpus_kernel(name)))
    assert (notes[index].name, notes[index].type) == ("GNU", 3)
    assert find_build_id(notes) == notes[index].desc.hex()


@pytest.mark.parametrize("name", ["debian-6.1.0-56-amd64", "debian-6.12.107+deb13-amd64"])
def test_build_salt_note_is_not_taken_for_a_build_id(name: str) -> None:
    kernel = corpus_kernel(name)
    notes = parse_notes(sysfs_notes(kernel))
    salt = next(n for n in notes if (n.name, n.type) == ("Linux", 0x100))
    # Debian sets CONFIG_BUILD_SALT to the release: it looks like an identity but is not one.
    assert salt.desc.rstrip(b"\0").decode() == kernel.expected["linux_version_note"]
    without_gnu = [n for n in notes if n.name != "GNU"]
    assert find_build_id(without_gnu) is None


def test_notes_table_round_trips_byte_for_byte(kernel: CorpusKernel) -> None:
    blob = sysfs_notes(kernel)
    assert encode(parse_notes(blob)) == blob


def test_every_prefix_parses_or_raises_notes_error(kernel: CorpusKernel) -> None:
    blob = sysfs_notes(kernel)
    parsed = 0
    for length in range(len(blob) + 1):
        try:
            parse_notes(blob[:length])
        except NotesError:
            continue
        parsed += 1
    # Only the note boundaries (and the empty prefix) can parse; the rest must be refused.
    assert 1 + len(kernel.expected["notes_names"]) <= parsed < len(blob) // 4


def test_empty_blob_has_no_notes() -> None:
    assert parse_notes(b"") == ()
    assert read_build_id(b"") is None


@pytest.mark.parametrize("padding", [1, 3, 4, 12, 64])
def test_trailing_zero_padding_is_ignored(padding: int) -> None:
    blob = sysfs_notes(corpus_kernel("kh-6.1.192-kh-a"))
    assert parse_notes(blob + b"\0" * padding) == parse_notes(blob)


def test_blob_without_gnu_build_id_note_has_no_build_id() -> None:
    notes = parse_notes(sysfs_notes(corpus_kernel("debian-6.1.0-56-amd64")))
    blob = encode([n for n in notes if (n.name, n.type) != ("GNU", 3)])
    assert len(parse_notes(blob)) == len(notes) - 1
    assert read_build_id(blob) is None


def test_big_endian_notes_are_read_with_big_byteorder() -> None:
    notes = parse_notes(sysfs_notes(corpus_kernel("debian-6.12.107+deb13-amd64")))
    blob = encode(notes, byteorder="big")
    assert parse_notes(blob, byteorder="big") == notes
    with pytest.raises(NotesError):
        parse_notes(blob, byteorder="little")


def test_binutils_240_property_note_after_linker_padding_is_read() -> None:
    # The binutils 2.40 case: kernel notes (4-aligned, 84 bytes here, so ending at 4 mod 8),
    # then 4 zero bytes the linker inserts before the 8-aligned .note.gnu.property.
    kernel = corpus_kernel("kh-6.1.192-kh-a")
    blob = sysfs_notes(kernel)
    assert len(blob) % 8 == 4
    mixed = blob + b"\0" * 4 + encode([GNU_PROPERTY])
    notes = parse_notes(mixed)
    assert notes == (*parse_notes(blob), GNU_PROPERTY)
    assert find_build_id(notes) == kernel.expected["build_id"]
    # Trusting the section's 8-byte alignment is what broke readelf and pahole on such kernels.
    with pytest.raises(NotesError):
        parse_notes(mixed, align=8)


def test_gabi_8_byte_aligned_notes_need_align_8() -> None:
    notes = parse_notes(sysfs_notes(corpus_kernel("kh-6.1.192-kh-a")))
    blob = encode(notes, align=8)
    assert parse_notes(blob, align=8) == notes
    assert find_build_id(parse_notes(blob, align=8)) == notes[0].desc.hex()


def _header(namesz: int, descsz: int, note_type: int) -> bytes:
    return struct.pack("<III", namesz, descsz, note_type)


GOOD = _header(4, 4, 1) + b"GNU\0" + b"abcd"


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        pytest.param(b"\x04\x00\x00", "truncated header", id="header-3-bytes"),
        pytest.param(_header(4, 4, 1)[:11], "truncated header", id="header-11-bytes"),
        pytest.param(GOOD + _header(4, 0, 1), "namesz 4 runs past", id="header-only"),
        pytest.param(_header(0xFFFFFFFF, 0, 3) + b"GNU\0", "namesz", id="namesz-huge"),
        pytest.param(_header(8, 0, 3) + b"GNU\0", "namesz 8 runs past", id="namesz-too-big"),
        pytest.param(_header(4, 20, 3) + b"GNU\0" + b"x" * 19, "descsz 20", id="descsz-too-big"),
        pytest.param(_header(4, 0xFFFFFFF0, 3) + b"GNU\0", "descsz", id="descsz-huge"),
        pytest.param(_header(4, 4, 1) + b"GNUX" + b"abcd", "not NUL-terminated", id="no-nul"),
        pytest.param(_header(0, 4, 1) + b"abcd", "empty name", id="namesz-zero"),
        pytest.param(_header(4, 0, 1) + b"G\0U\0", "printable", id="nul-inside-name"),
        pytest.param(_header(4, 0, 1) + b"\xffNU\0", "printable", id="non-ascii-name"),
        # "Linux\0" written without its 2 padding bytes: the next note header lands mid-field.
        pytest.param(
            _header(6, 4, 0x101) + b"Linux\0" + b"\0\0\0\0" + GOOD,
            "note at offset",
            id="misaligned",
        ),
        pytest.param(b"\x01" + GOOD, "note at offset 0", id="shifted-by-one"),
        pytest.param(b"\xff" * 64, "note at offset 0", id="all-ones"),
        pytest.param(b"Linux version 6.1.0\n" * 4, "note at offset 0", id="text"),
    ],
)
def test_malformed_notes_table_raises_notes_error(blob: bytes, message: str) -> None:
    with pytest.raises(NotesError, match=message):
        parse_notes(blob)


@pytest.mark.parametrize("seed", range(20))
def test_random_garbage_raises_notes_error(seed: int) -> None:
    blob = random.Random(seed).randbytes(256)
    with pytest.raises(NotesError):
        parse_notes(blob)


def test_two_different_build_ids_are_refused() -> None:
    notes = [Note("GNU", 3, b"\x01" * 20), Note("GNU", 3, b"\x02" * 20)]
    with pytest.raises(NotesError, match="two different GNU build ids"):
        read_build_id(encode(notes))


def test_empty_build_id_is_refused() -> None:
    with pytest.raises(NotesError, match="empty descriptor"):
        read_build_id(encode([Note("GNU", 3, b"")]))
