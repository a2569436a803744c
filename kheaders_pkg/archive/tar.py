"""tar: the decompressed stream -> header blocks, pax records, GNU long names and member names.

The stream is parsed here, header by header, without `tarfile` (Debian 12's Python 3.11.2 has no
`filter=`, and its stream mode is ~3x slower than GNU tar). Each parser has a shortcut for the
common case (GNU tar's own header layout, a plain ASCII path) beside its checked twin, which parses
field by field and gives the precise error; tests/test_extract_fastpaths.py holds the twins equal.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from kheaders_pkg.archive.names import PATH_MAX, PLAIN_PATH, check_components, decode_relative, show
from kheaders_pkg.errors import ArchiveError
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME  # no member may take these names

META_MAX = 64 << 10  # a pax extended header (path, linkpath, xattrs) is far smaller than this
_BLOCK = 512
ZERO_BLOCK = bytes(_BLOCK)
_PAX_MTIME = re.compile(rb"(-?)([0-9]{1,19})(?:\.([0-9]{1,30}))?")
_RESERVED = frozenset({MANIFEST_NAME.encode(), STAMP_NAME.encode()})


class Truncated(Exception):
    pass


class TarInput:
    """The decompressed stream as 512-byte header blocks and member data pieces."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0

    def _more(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._buf = chunk
        self._pos = 0
        return True

    def block(self) -> bytes | None:
        """The next 512 bytes; None at a clean end of the stream."""
        pos = self._pos
        if len(self._buf) - pos >= _BLOCK:
            self._pos = pos + _BLOCK
            return self._buf[pos : pos + _BLOCK]
        parts = [self._buf[pos:]]
        have = len(parts[0])
        self._pos = len(self._buf)
        while have < _BLOCK:
            if not self._more():
                if have == 0:
                    return None
                raise Truncated
            take = min(_BLOCK - have, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            have += take
        return b"".join(parts)

    def pieces(self, size: int) -> Iterator[memoryview]:
        """`size` bytes of member data, as views into the chunks, then the padding is skipped."""
        yield from self.pieces_raw(size)
        self.skip(-size % _BLOCK)

    def read(self, size: int) -> bytes:
        """`size` bytes of member data, then the padding is skipped."""
        pos = self._pos
        end = pos + size
        if end + (-size % _BLOCK) <= len(self._buf):  # the common case: all in this chunk
            self._pos = end + (-size % _BLOCK)
            return self._buf[pos:end]
        return b"".join(self.pieces(size))

    def skip(self, size: int) -> None:
        for _ in self.pieces_raw(size):
            pass

    def pieces_raw(self, size: int) -> Iterator[memoryview]:
        left = size
        while left:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._more():
                    raise Truncated
                continue
            take = left if left < avail else avail
            yield memoryview(self._buf)[self._pos : self._pos + take]
            self._pos += take
            left -= take

    def rest_is_zero(self) -> bool:
        """Consume the rest of the stream; True if it is all zero bytes (GNU tar pads with them)."""
        if self._buf.count(0, self._pos) != len(self._buf) - self._pos:
            return False
        while self._more():
            if self._buf.count(0) != len(self._buf):
                return False
        return True


def _number(field: bytes) -> int | None:
    """A tar numeric field (octal text, or GNU base-256); None if malformed."""
    if field and field[0] & 0x80:
        if field[0] != 0x80:
            return None  # negative
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        return None
    return int(text, 8)


def nul_terminated(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def parse_pax(data: bytes, what: str) -> dict[str, bytes]:
    """A pax extended header's records (`LEN KEY=VALUE\\n`) -> {key: raw value}."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if not data[pos:].strip(b"\0"):
            break  # NUL padding after the last record
        space = data.find(b" ", pos, pos + 21)
        length = data[pos:space]
        if space < 0 or not length.isdigit() or int(length) <= space - pos + 1:
            raise ArchiveError(f"{what}: malformed pax record at offset {pos}")
        end = pos + int(length)
        if end > len(data) or data[end - 1] != 0x0A:
            raise ArchiveError(f"{what}: malformed pax record at offset {pos}")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise ArchiveError(f"{what}: malformed pax record at offset {pos}")
        try:
            records[key.decode("utf-8")] = value
        except UnicodeDecodeError:
            raise ArchiveError(f"{what}: pax key is not valid UTF-8") from None
        pos = end
    return records


def pax_mtime_ns(value: bytes, what: str) -> int:
    m = _PAX_MTIME.fullmatch(value)
    if not m:
        raise ArchiveError(f"{what}: malformed pax mtime")
    frac = (m.group(3) or b"").decode()[:9].ljust(9, "0")
    ns = int(m.group(2)) * 1_000_000_000 + int(frac)
    return -ns if m.group(1) else ns


TYPE_NAMES = {
    b"3": "character device",
    b"4": "block device",
    b"6": "fifo",
    b"S": "GNU sparse file",
    b"V": "GNU volume header",
    b"M": "GNU multi-volume continuation",
    b"D": "GNU dump directory",
}


def gnu_long(data: bytes, what: str) -> bytes:
    name = data.rstrip(b"\0")
    if b"\0" in name:
        raise ArchiveError(f"{what} {show(name)}: contains a NUL byte")
    return name


def check_global_pax(records: dict[str, bytes], what: str) -> None:
    for key in ("path", "linkpath", "size"):
        if key in records:
            raise ArchiveError(f"{what}: a global pax header may not set {key!r}")
    if any(key.startswith("GNU.sparse.") for key in records):
        raise ArchiveError(f"{what}: sparse files are not supported")


# GNU tar's own layout, as gen_kheaders.sh writes it: mode, uid, gid, size and mtime in zero-padded
# octal ending in NUL, then the checksum as six digits, NUL, space. Anything else: the long way.
GNU_FIELDS = re.compile(rb"([0-7]{7})\0.{16}([0-7]{11})\0([0-7]{11})\0([0-7]{6})\0 ", re.DOTALL)
_GNU_MAGIC = b"ustar  \0"
EXTENDED = frozenset({b"L", b"K", b"x", b"g"})
LINKS = frozenset({b"1", b"2"})
KINDS = {b"0": "f", b"\0": "f", b"7": "f", b"5": "d", b"2": "l", b"1": "h"}


def header_fields(header: bytes) -> tuple[bytes, bytes, int, int, int]:
    """A header block -> (raw name, typeflag, size, mode, mtime), checked."""
    m = GNU_FIELDS.match(header, 100)
    # The checksum counts its own field as eight spaces: "dddddd\0 " sums to digits + 32.
    if (
        m is not None
        and header[257:265] == _GNU_MAGIC
        and int(m[4], 8) == sum(header) - sum(header[148:154]) + 224
    ):
        name = header[:100]
        end = name.find(0)
        return (
            name if end < 0 else name[:end],
            header[156:157],
            int(m[2], 8),
            int(m[1], 8),
            int(m[3], 8),
        )
    return header_fields_checked(header)


def header_fields_checked(header: bytes) -> tuple[bytes, bytes, int, int, int]:
    """header_fields for any header: each field parsed and checked on its own."""
    raw_name = nul_terminated(header[:100])
    what = f"member {show(raw_name)}"
    _check_header(header, what)
    size = _number(header[124:136])
    mode = _number(header[100:108])
    mtime = _number(header[136:148])
    if size is None or mode is None or mtime is None:
        raise ArchiveError(f"{what}: malformed numeric field in tar header")
    if header[257:263] == b"ustar\0" and header[345] != 0:
        # POSIX ustar splits long names into prefix + name; GNU format uses that space for
        # other fields, hence the magic check.
        raw_name = nul_terminated(header[345:500]) + b"/" + raw_name
    return raw_name, header[156:157], size, mode, mtime


def _check_header(header: bytes, what: str) -> None:
    magic = header[257:265]
    if magic != b"ustar  \0" and magic[:6] != b"ustar\0":
        raise ArchiveError(f"{what}: not a ustar or GNU tar header")
    stored = _number(header[148:156])
    # The checksum counts its own field as eight spaces; old tars summed signed bytes.
    unsigned = sum(header) - sum(header[148:156]) + 8 * 0x20
    if stored != unsigned:
        signed = unsigned - 256 * sum(1 for b in header if b > 127)
        signed += 256 * sum(1 for b in header[148:156] if b > 127)
        if stored != signed:
            raise ArchiveError(f"{what}: bad tar header checksum")


def member_path(raw: bytes, is_dir: bool) -> str:
    """A member name -> its normalised relative path ("" for the top directory), checked."""
    name = raw[2:] if raw.startswith(b"./") else raw
    if is_dir and name.endswith(b"/"):
        name = name[:-1]
    if len(raw) <= PATH_MAX and PLAIN_PATH.fullmatch(name) and name not in _RESERVED:
        return name.decode("ascii")
    return member_path_checked(raw, is_dir)


def member_path_checked(raw: bytes, is_dir: bool) -> str:
    what = f"member {show(raw)}"
    text = decode_relative(raw, what, "path")
    # gen_kheaders.sh runs `tar -C dir .`, so every name starts with "./" and the first is "./".
    if text.startswith("./"):
        text = text[2:]
    elif text == ".":
        text = ""
    if is_dir and text.endswith("/"):
        text = text[:-1]
    if not text:
        if not is_dir:
            raise ArchiveError(f"{what}: empty name")
        return ""
    check_components(text.split("/"), what)
    if text in (MANIFEST_NAME, STAMP_NAME):
        raise ArchiveError(f"{what}: name is reserved for kheaders-pkg's own files")
    return text
