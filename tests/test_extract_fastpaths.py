"""tar.py's shortcuts for the common case give exactly what its full checks give.

A header in GNU tar's own layout is parsed with one regular expression, and a plain ASCII path
is checked with another; anything else takes the field-by-field and component-by-component
route that produces the precise error messages. These tests hold the two routes to the same
answer: on every header and name of the real archives, and on headers and names made to sit
just inside or just outside what the shortcut accepts.
"""

from __future__ import annotations

import io
import lzma
import tarfile

import pytest

from kheaders_pkg.archive.tar import (
    GNU_FIELDS,
    header_fields,
    header_fields_checked,
    member_path,
    member_path_checked,
)
from kheaders_pkg.errors import ArchiveError
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME
from tests.conftest import KERNELS_WITH_ARCHIVE, corpus_kernel


def _outcome(fn: object, *args: object) -> tuple[str, object]:
    """("ok", value) or ("error", message): what a call gave, comparable across routes."""
    assert callable(fn)
    try:
        return "ok", fn(*args)
    except ArchiveError as err:
        return "error", str(err)


def _tar_of(kernel: str) -> bytes:
    return lzma.decompress(corpus_kernel(kernel).archive.read_bytes())


def _headers(data: bytes) -> list[bytes]:
    """Every member's (first) header block, found by tarfile."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [data[m.offset : m.offset + 512] for m in tar]


@pytest.fixture(scope="module", params=KERNELS_WITH_ARCHIVE)
def corpus_tar(request: pytest.FixtureRequest) -> bytes:
    return _tar_of(str(request.param))


def test_every_real_header_takes_the_shortcut_and_parses_the_same(corpus_tar: bytes) -> None:
    headers = _headers(corpus_tar)
    assert len(headers) > 6000
    for header in headers:
        assert GNU_FIELDS.match(header, 100) is not None  # the shortcut is really taken
        assert header_fields(header) == header_fields_checked(header)


def _with_checksum(header: bytearray) -> bytes:
    """`header` with its checksum recomputed in GNU tar's form ("%06o\\0 ")."""
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


# (offset, bytes) edits to a real header: inside the shortcut's layout, or just outside it.
_EDITS = [
    (100, b"0000777"),  # mode, still canonical
    (100, b"   644 "),  # mode with spaces: the field parser's job
    (100, b"0000648"),  # not octal
    (107, b" "),  # mode's NUL replaced
    (124, b"00000000000"),  # size 0
    (124, b"77777777777"),  # the largest canonical size
    (124, b"\x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00"),  # GNU base-256
    (124, b"\xff" * 12),  # negative base-256
    (124, b"0000000001 "),  # size ending in space
    (136, b"-0000000001"),  # signed mtime
    (136, b"0_000000001"),  # what int() would take and a tar field must not
    (156, b"5"),  # a directory
    (156, b"x"),  # a pax header
    (156, b"3"),  # a device
    (257, b"ustar\x0000"),  # POSIX magic: the prefix field counts
    (345, b"prefix"),  # a prefix under GNU magic is not a prefix
    (257, b"garbage!"),  # no magic at all
]


@pytest.mark.parametrize(("offset", "edit"), _EDITS)
def test_edited_headers_give_the_same_answer_by_both_routes(offset: int, edit: bytes) -> None:
    headers = _headers(_tar_of(KERNELS_WITH_ARCHIVE[0]))
    for original in headers[:50]:
        header = bytearray(original)
        header[offset : offset + len(edit)] = edit
        edited = _with_checksum(header)
        assert _outcome(header_fields, edited) == _outcome(header_fields_checked, edited)
        # A wrong checksum is refused by both, whatever else the header holds.
        broken = bytearray(edited)
        broken[150] = ord("7") if broken[150] != ord("7") else ord("6")
        assert _outcome(header_fields, bytes(broken))[0] == "error"
        assert _outcome(header_fields, bytes(broken)) == _outcome(
            header_fields_checked, bytes(broken)
        )


def test_the_signed_checksum_of_old_tars_is_still_accepted() -> None:
    header = bytearray(_headers(_tar_of(KERNELS_WITH_ARCHIVE[0]))[1])
    header[0:100] = "./include/é.h".encode().ljust(100, b"\0")  # bytes > 127: the sums differ
    header[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in header)
    header[148:156] = b"%06o\0 " % signed
    assert GNU_FIELDS.match(header, 100) is not None  # the layout fits; the checksum does not
    assert header_fields(bytes(header)) == header_fields_checked(bytes(header))
    assert header_fields(bytes(header))[0] == "./include/é.h".encode()


_NAMES = [
    b"",
    b".",
    b"./",
    b"/abs",
    b"./include",
    b"./include/",
    b"include//a.h",
    b"include/./a.h",
    b"include/../a.h",
    b"..",
    b"./..",
    b"...",
    b"include/.hidden",
    b"include/...",
    b"include/a.h/",
    b"./include/a b.h",
    b"include/caf\xc3\xa9.h",  # valid UTF-8, not ASCII: the long route accepts it
    b"include/\xff.h",
    b"include/a\tb.h",
    b"include/a\x7fb.h",
    b"x" * 255,
    b"x" * 256,
    b"include/" + b"x" * 255,
    b"include/" + b"x" * 256,
    b"a/" * 2047 + b"b",  # 4095 bytes
    b"a/" * 2048 + b"b",  # 4097 bytes
    MANIFEST_NAME.encode(),
    b"./" + STAMP_NAME.encode(),
    b"include/" + MANIFEST_NAME.encode(),
    b"././include/a.h",
]


@pytest.mark.parametrize("raw", _NAMES)
@pytest.mark.parametrize("is_dir", [False, True])
def test_member_names_give_the_same_answer_by_both_routes(raw: bytes, is_dir: bool) -> None:
    assert _outcome(member_path, raw, is_dir) == _outcome(member_path_checked, raw, is_dir)


def test_every_real_member_name_gives_the_same_path_by_both_routes(corpus_tar: bytes) -> None:
    headers = _headers(corpus_tar)
    for header in headers:
        raw, typeflag, *_ = header_fields_checked(header)
        if typeflag not in (b"L", b"K", b"x", b"g"):
            is_dir = typeflag == b"5"
            assert member_path(raw, is_dir) == member_path_checked(raw, is_dir)
