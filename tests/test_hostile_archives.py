"""Hostile and broken archives: each one is refused with one line, and nothing outside `dest`
is created or changed."""

from __future__ import annotations

import io
import os
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kheaders_pkg.archive.extract import DEFAULT_LIMITS, Limits, extract_archive
from kheaders_pkg.errors import ArchiveError, ExitCode
from tests.archive_util import (
    MTIME,
    Member,
    as_multi_block,
    directory,
    hardlink,
    pax,
    regular,
    special,
    symlink,
    tar_bytes,
    xz,
    zeros_bomb,
)
from tests.conftest import corpus_kernel

# Every hostile archive starts like a real one, so that only the planted member is wrong.
PREAMBLE: list[Member] = [
    directory("./"),
    directory("./include/"),
    directory("./include/linux/"),
    regular("./include/linux/types.h", b"#define X 1\n"),
]


def _tar(
    members: list[Member], fmt: int = tarfile.GNU_FORMAT, preamble: bool = True, end: bool = True
) -> bytes:
    """The tar bytes after the preamble; without `end`, no end-of-archive blocks."""
    return tar_bytes((PREAMBLE if preamble else []) + members, fmt, end)


def _archive(members: list[Member], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    return xz(_tar(members, fmt))


def _raw_header(name: bytes, typeflag: bytes, size: int = 0, mode: int = 0o644) -> bytes:
    """A GNU tar header built by hand, for what tarfile will not write."""
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"%07o\0" % mode
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % MTIME
    h[156:157] = typeflag
    h[257:265] = b"ustar  \0"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _with_raw(member: bytes, data: bytes = b"") -> bytes:
    body = member + data + bytes(-len(data) % 512)
    return xz(_preamble_tar() + body + bytes(10240))


def _xz_check_offset(data: bytes) -> int:
    """Where the last block's check sits: just before the index (from the stream footer)."""
    backward: int = struct.unpack("<I", data[-8:-4])[0]
    index_start = len(data) - 12 - (backward + 1) * 4
    return index_start - 8  # CRC64


def _preamble_tar() -> bytes:
    return _tar([], end=False)


# -- the cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], bytes]  # gets the directory to attack (the parent of dest)
    expect: str  # a piece of the one-line message
    limits: Limits = DEFAULT_LIMITS


def _corpus_612() -> bytes:
    return corpus_kernel("debian-6.12.107+deb13-amd64").archive.read_bytes()


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x55
    return bytes(out)


def _612_flip_block2_check(_: Path) -> bytes:
    data = _corpus_612()
    return _flip(data, _xz_check_offset(data))


def _612_flip_block1_data(_: Path) -> bytes:
    return _flip(_corpus_612(), 1_000_000)


CASES = [
    Case("absolute-path", lambda t: _archive([regular(str(t / "abs-evil"))]), "absolute path"),
    Case("dotdot-first", lambda t: _archive([regular("../evil")]), "'..' component"),
    Case("dotdot-inside", lambda t: _archive([regular("./include/../../evil")]), "'..' component"),
    Case(
        "symlink-escapes",
        lambda t: _archive([symlink("./include/esc", "../../outside")]),
        "escapes the tree",
    ),
    Case(
        "symlink-escapes-then-write-through",
        lambda t: _archive([symlink("./include/esc", "../.."), regular("./include/esc/evil")]),
        "escapes the tree",
    ),
    Case(
        "write-through-an-inside-symlink",
        lambda t: _archive([symlink("./include/lnk", "linux"), regular("./include/lnk/evil.h")]),
        "is a symlink, not a directory",
    ),
    Case(
        "symlink-absolute",
        lambda t: _archive([symlink("./include/abs", str(t / "outside"))]),
        "absolute target",
    ),
    Case(
        "symlink-dotdot-after-a-name",
        lambda t: _archive([symlink("./include/linux/x", "../linux/../../..")]),
        "'..' after a name",
    ),
    Case(
        "hardlink-outside",
        lambda t: _archive([hardlink("./include/h", "../outside/canary")]),
        "'..' component",
    ),
    Case(
        "hardlink-absolute",
        lambda t: _archive([hardlink("./include/h", str(t / "canary"))]),
        "absolute path",
    ),
    Case(
        "hardlink-to-a-symlink",
        lambda t: _archive([symlink("./include/s", "linux"), hardlink("./include/h", "include/s")]),
        "not an earlier regular file",
    ),
    Case(
        "hardlink-to-a-later-member",
        lambda t: _archive(
            [hardlink("./include/h", "include/later.h"), regular("include/later.h")]
        ),
        "not an earlier regular file",
    ),
    Case("char-device", lambda t: _archive([special("./include/c", tarfile.CHRTYPE)]), "character"),
    Case("block-device", lambda t: _archive([special("./include/b", tarfile.BLKTYPE)]), "block"),
    Case("fifo", lambda t: _archive([special("./include/f", tarfile.FIFOTYPE)]), "fifo"),
    Case("setuid", lambda t: _archive([regular("./include/s.h", mode=0o4755)]), "setuid"),
    Case("setgid", lambda t: _archive([regular("./include/s.h", mode=0o2755)]), "setgid"),
    Case("sticky-dir", lambda t: _archive([directory("./include/tmp/", 0o1755)]), "sticky"),
    Case(
        "world-writable-file", lambda t: _archive([regular("./include/w.h", mode=0o666)]), "world"
    ),
    Case("world-writable-dir", lambda t: _archive([directory("./include/w/", 0o777)]), "world"),
    Case(
        "duplicate-file",
        lambda t: _archive([regular("./include/linux/types.h", b"other")]),
        "duplicate of an earlier file",
    ),
    Case(
        "duplicate-dir",
        lambda t: _archive([directory("./include/linux/")]),
        "duplicate of an earlier directory",
    ),
    Case(
        "directory-replaced-by-file",
        lambda t: _archive([regular("./include/linux")]),
        "file would replace an earlier directory",
    ),
    Case(
        "file-replaced-by-directory",
        lambda t: _archive([directory("./include/linux/types.h/")]),
        "directory would replace an earlier file",
    ),
    Case(
        "file-used-as-parent",
        lambda t: _archive([regular("./include/linux/types.h/x.h")]),
        "is a file, not a directory",
    ),
    Case(
        "symlink-replaces-directory",
        lambda t: _archive([symlink("./include/linux", "../..")]),
        "symlink would replace an earlier directory",
    ),
    Case(
        "name-not-utf8",
        lambda t: _archive([regular("./include/\udcff\udcfe.h")]),
        "not valid UTF-8",
    ),
    Case(
        "component-over-255-bytes",
        lambda t: _archive([regular("./include/" + "a" * 256 + ".h")]),
        "longer than 255 bytes",
    ),
    Case(
        "path-over-4095-bytes",
        lambda t: _archive(
            [regular("./include/" + ("b" * 200 + "/") * 21 + "c.h")], tarfile.PAX_FORMAT
        ),
        "longer than 4095 bytes",
    ),
    Case(
        "pax-path-escapes",
        lambda t: _archive(
            [pax(regular("./include/innocent.h"), path="../evil")], tarfile.PAX_FORMAT
        ),
        "'..' component",
    ),
    Case(
        "pax-path-absolute",
        lambda t: _archive(
            [pax(regular("./include/innocent.h"), path=str(t / "abs-evil"))], tarfile.PAX_FORMAT
        ),
        "absolute path",
    ),
    Case(
        "pax-linkpath-escapes",
        lambda t: _archive(
            [pax(symlink("./include/l", "linux"), linkpath="../../outside")], tarfile.PAX_FORMAT
        ),
        "escapes the tree",
    ),
    Case(
        "gnu-longname-escapes",
        lambda t: _archive([regular("../" + "a" * 150 + "/evil")]),
        "'..' component",
    ),
    Case(
        "gnu-longlink-escapes",
        lambda t: _archive([symlink("./include/l", "../" * 60 + "etc/passwd")]),
        "escapes the tree",
    ),
    Case(
        "gnu-longname-with-nul",
        lambda t: _with_raw(_raw_header(b"././@LongLink", b"L", 20), b"include/a\0/../../x\0"),
        "NUL byte",
    ),
    Case(
        "name-with-newline",
        lambda t: _archive([regular("./include/new\nline.h")]),
        "control character",
    ),
    Case("name-with-tab", lambda t: _archive([regular("./include/a\tb.h")]), "control character"),
    Case(
        "reserved-manifest-name",
        lambda t: _archive([regular("./.kheaders-pkg.manifest")]),
        "reserved",
    ),
    Case(
        "member-over-the-size-limit",
        lambda t: _archive([regular("./include/big.h", bytes(2 << 20))]),
        "over the limit",
        Limits(max_member_bytes=1 << 20),
    ),
    Case(
        "zeros-bomb-small-limit",
        lambda t: zeros_bomb(_preamble_tar() + bytes(1024), 64 << 20),
        "expands to more than",
        Limits(max_total_bytes=8 << 20),
    ),
    Case(
        "too-many-members",
        lambda t: _archive([regular(f"./include/f{i}.h") for i in range(20)]),
        "more than 10 members",
        Limits(max_members=10),
    ),
    Case("truncated-xz-half", lambda t: _archive([])[: len(_archive([])) // 2], "truncated xz"),
    Case("truncated-xz-last-byte", lambda t: _archive([])[:-1], "truncated xz"),
    Case(
        "corrupt-xz-check",
        lambda t: _flip(_archive([]), _xz_check_offset(_archive([]))),
        "corrupt xz data",
    ),
    Case("gzip", lambda t: b"\x1f\x8b\x08\x00" + bytes(60), "not an xz archive (gzip data)"),
    Case("plain-text", lambda t: b"#include <linux/types.h>\n", "not an xz archive"),
    Case("empty-file", lambda t: b"", "archive is empty (0 bytes)"),
    Case("empty-xz", lambda t: xz(b""), "tar archive is empty"),
    Case("empty-tar", lambda t: xz(_tar([], preamble=False)), "tar archive has no members"),
    Case(
        "no-include",
        lambda t: xz(_tar([directory("./"), regular("./Makefile")], preamble=False)),
        "archive has no include/ directory: not a kernel headers archive",
    ),
    Case("trailing-garbage", lambda t: _archive([]) + b"garbage", "trailing data"),
    Case("trailing-second-stream", lambda t: _archive([]) + xz(b"x"), "trailing data"),
    Case(
        "garbage-after-tar-end",
        lambda t: xz(_tar([]) + b"more" + bytes(508)),
        "after the tar end-of-archive marker",
    ),
    Case(
        "tar-without-end-marker",
        lambda t: xz(_preamble_tar()),
        "no end-of-archive marker",
    ),
    Case(
        "tar-member-data-truncated",
        lambda t: xz(_preamble_tar() + _raw_header(b"include/x.h", b"0", 5000) + b"x" * 100),
        "truncated tar archive",
    ),
    Case(
        "bad-header-checksum",
        lambda t: xz(_flip(_tar([]), 512 * 3 + 10)),
        "bad tar header checksum",
    ),
    Case(
        "gnu-sparse-member",
        lambda t: _with_raw(_raw_header(b"include/sparse.h", b"S")),
        "GNU sparse file not allowed",
    ),
    Case(
        "pax-sparse-member",
        lambda t: _archive(
            [pax(regular("./include/s.h"), **{"GNU.sparse.major": "1"})], tarfile.PAX_FORMAT
        ),
        "sparse files are not supported",
    ),
    Case(
        "global-pax-path",
        lambda t: _with_raw(_raw_header(b"pax_global_header", b"g", 16), b"16 path=../evil\n"),
        "global pax header may not set 'path'",
    ),
    Case(
        "multi-block-corrupt-check",  # the 6.12 archive: blocks decoded in parallel
        _612_flip_block2_check,
        "corrupt xz data",
    ),
    Case("multi-block-corrupt-data", _612_flip_block1_data, "corrupt xz data"),
    Case(
        "multi-block-truncated",
        lambda t: _corpus_612()[:-100],
        "truncated xz",
    ),
    Case("multi-block-trailing-garbage", lambda t: _corpus_612() + b"\0\0\0\0", "trailing data"),
]


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under root (not under skip): type+mode, size, mtime, symlink target."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p == skip:
                continue
            st = p.lstat()
            target = os.readlink(p) if p.is_symlink() else ""
            found[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return found


# The cases about the xz layer itself; the others are about the tar inside it.
XZ_CASES = {
    "zeros-bomb-small-limit",
    "truncated-xz-half",
    "truncated-xz-last-byte",
    "corrupt-xz-check",
    "gzip",
    "plain-text",
    "empty-file",
    "trailing-garbage",
    "trailing-second-stream",
}
TAR_CASES = [c for c in CASES if c.name not in XZ_CASES and not c.name.startswith("multi-block")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("source", ["path", "stream"])
def test_hostile_archive_is_refused_and_nothing_escapes(
    case: Case, source: str, tmp_path: Path
) -> None:
    """path: a file (index checked, blocks decoded in parallel); stream: a pipe (one decoder)."""
    _assert_refused(case, source, case.build(tmp_path / "area"), tmp_path)


@pytest.mark.parametrize("case", TAR_CASES, ids=[c.name for c in TAR_CASES])
def test_hostile_tar_in_many_xz_blocks_is_refused_and_nothing_escapes(
    case: Case, tmp_path: Path
) -> None:
    """The same tar recompressed in 4 KiB xz blocks: decoded in parallel, cancelled early."""
    data = as_multi_block(case.build(tmp_path / "area"))
    assert data is not None
    _assert_refused(case, "path", data, tmp_path)


def _assert_refused(case: Case, source: str, data: bytes, tmp_path: Path) -> None:
    area = tmp_path / "area"
    (area / "outside").mkdir(parents=True)
    canary = area / "canary"
    canary.write_text("canary\n")
    (area / "outside" / "canary").write_text("outside canary\n")
    dest = area / "dest"
    dest.mkdir(mode=0o700)
    archive = tmp_path / "archive.tar.xz"
    archive.write_bytes(data)
    before = _snapshot(area, dest)

    with pytest.raises(ArchiveError) as caught:
        if source == "path":
            extract_archive(archive, dest, limits=case.limits)
        else:
            with open(archive, "rb") as f:
                extract_archive(io.BufferedReader(_Unseekable(f)), dest, limits=case.limits)

    message = str(caught.value)
    assert "\n" not in message
    assert case.expect in message
    assert caught.value.exit_code == ExitCode.BAD_ARCHIVE
    assert int(caught.value.exit_code) == 6
    assert _snapshot(area, dest) == before
    assert canary.read_text() == "canary\n"
    assert not (area / "abs-evil").exists()
    assert not (tmp_path / "evil").exists()


class _Unseekable(io.RawIOBase):
    def __init__(self, f: io.BufferedReader) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._f.readinto(b)


def test_there_are_at_least_thirty_hostile_cases() -> None:
    assert len(CASES) >= 30


def test_a_two_gib_member_fails_at_its_header_under_the_default_limits(tmp_path: Path) -> None:
    """A real 2 GiB run of zeros compressed to ~300 KB: refused before a byte of it is written."""
    size = 2 << 30
    head = _preamble_tar() + _raw_header(b"./include/bomb.h", b"0", size)
    data = zeros_bomb(head, size, bytes(1024))
    assert len(data) < 1 << 20
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)

    with pytest.raises(ArchiveError) as caught:
        extract_archive(io.BytesIO(data), dest)

    assert f"{size} bytes, over the limit of {DEFAULT_LIMITS.max_member_bytes}" in str(caught.value)
    assert "include/bomb.h" in str(caught.value)
    assert not (dest / "include/bomb.h").exists()
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert written <= DEFAULT_LIMITS.max_member_bytes
