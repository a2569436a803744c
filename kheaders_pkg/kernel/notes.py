"""ELF notes: the raw `/sys/kernel/notes` blob, an SHT_NOTE section or a PT_NOTE segment.

Each note is `{u32 namesz, u32 descsz, u32 type}`, then the name (NUL-terminated, `namesz`
bytes counting the NUL) and the descriptor, each padded to the note alignment.

Alignment. Linux writes its notes with 4-byte alignment (`ELFNOTE` in include/linux/elfnote.h
uses `.balign 4`), also in ELF64, and so do the GNU build-id notes; `/sys/kernel/notes` is the
`.notes` section verbatim (kernel/ksysfs.c) and carries no alignment of its own. With binutils
2.40 the compiler's 8-byte aligned `.note.gnu.property` could be linked into `.notes`: the
section then claims `sh_addralign` 8, but the Linux and Xen notes in it are still 4-aligned (the
section was not re-laid out), and the linker may insert 4 zero bytes before the 8-aligned
property note. Upstream fixed it by discarding that section (commit f7ba52f302fd,
"vmlinux.lds.h: Discard .note.gnu.property section"). So:

- `align=4` (the default, and what we use for every kernel blob) steps by 4 and skips one zero
  word at an offset that is 4 mod 8, where the linker pads before an 8-aligned input section. A
  real note always has a name (we reject `namesz` 0), so a zero word cannot be a note header.
  This also reads a `.note.gnu.property` note correctly (header + "GNU\\0" is 16 bytes, its
  descriptor a multiple of 8), so a binutils-2.40 `.notes` parses as the kernel wrote it.
- `align=8` is the gABI layout for ELF64 (descriptor and next note at multiples of 8), for a
  caller that knows its producer used it. We never guess between the two: a guess could
  misread a descriptor.
- Zero bytes after the last note (section padding) end the list.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from kheaders_pkg.errors import NotesError

NT_GNU_BUILD_ID = 3
_HEADER_SIZE = 12
_BYTE_ORDERS = {"little": "<", "big": ">"}


@dataclass(frozen=True)
class Note:
    name: str
    type: int
    desc: bytes


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def parse_notes(
    blob: bytes,
    *,
    byteorder: Literal["little", "big"] = "little",
    align: Literal[4, 8] = 4,
) -> tuple[Note, ...]:
    """Every note in `blob`, in order; NotesError naming the offset of anything malformed."""
    if byteorder not in _BYTE_ORDERS:
        raise NotesError(f"unknown byte order {byteorder!r}")
    if align not in (4, 8):
        raise NotesError(f"note alignment must be 4 or 8, not {align}")
    header = struct.Struct(_BYTE_ORDERS[byteorder] + "III")
    notes: list[Note] = []
    offset = 0
    size = len(blob)
    while offset < size:
        if not any(blob[offset:]):
            break  # zero padding after the last note
        if align == 4 and offset % 8 == 4 and blob[offset : offset + 4] == b"\0\0\0\0":
            offset += 4  # linker padding before an 8-aligned note (see module docstring)
            continue
        if offset + _HEADER_SIZE > size:
            raise NotesError(f"note at offset {offset}: truncated header ({size - offset} bytes)")
        namesz, descsz, note_type = header.unpack_from(blob, offset)
        name_start = offset + _HEADER_SIZE
        if namesz == 0:
            raise NotesError(f"note at offset {offset}: empty name (namesz 0)")
        if namesz > size - name_start:
            raise NotesError(f"note at offset {offset}: namesz {namesz} runs past the end")
        desc_start = _align_up(name_start + namesz, align)
        if descsz and (desc_start > size or descsz > size - desc_start):
            raise NotesError(f"note at offset {offset}: descsz {descsz} runs past the end")
        raw_name = blob[name_start : name_start + namesz]
        if raw_name[-1] != 0:
            raise NotesError(f"note at offset {offset}: name is not NUL-terminated")
        desc = blob[desc_start : desc_start + descsz]
        notes.append(Note(_note_name(raw_name[:-1], offset), note_type, desc))
        # The padding after the last descriptor may be missing if the blob ends there.
        offset = min(_align_up(desc_start + descsz, align), size)
    return tuple(notes)


def _note_name(raw: bytes, offset: int) -> str:
    # Note names are short ASCII owner strings ("GNU", "Linux", "Xen"); anything else means we
    # are not looking at a notes table.
    if b"\0" in raw or not all(0x20 <= byte < 0x7F for byte in raw):
        raise NotesError(f"note at offset {offset}: name {raw!r} is not printable ASCII")
    return raw.decode("ascii")


def find_build_id(notes: Iterable[Note]) -> str | None:
    """The GNU build id (`GNU`/NT_GNU_BUILD_ID) as lowercase hex, or None if there is none.

    `Linux`/0x100 is CONFIG_BUILD_SALT and never a build id or a release: it is ignored.
    """
    found: str | None = None
    for note in notes:
        if note.name != "GNU" or note.type != NT_GNU_BUILD_ID:
            continue
        if not note.desc:
            raise NotesError("GNU build-id note has an empty descriptor")
        value = note.desc.hex()
        if found is not None and found != value:
            raise NotesError(f"two different GNU build ids: {found} and {value}")
        found = value
    return found


def read_build_id(blob: bytes, *, byteorder: Literal["little", "big"] = "little") -> str | None:
    """The build id in a raw notes blob such as `/sys/kernel/notes` (native byte order)."""
    return find_build_id(parse_notes(blob, byteorder=byteorder))
