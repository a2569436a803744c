"""The kernel's headers archive -> a staging directory, streaming and safe; returns the manifest.

The archive (`kheaders.tar.xz`, made by the kernel's `gen_kheaders.sh`) is read once, in chunks:
the compressed bytes are hashed as they are read (the archive digest), decompressed by liblzma in
a background thread (it releases the GIL) into a small bounded queue, and the tar stream is parsed
here, header by header, without `tarfile` (Debian 12's Python 3.11.2 has no `filter=`, and its
stream mode is ~3x slower than GNU tar). Nothing in the archive is trusted: each member is checked
before anything is written, every parent of a member must be a directory this extraction created
(tracked in memory), and files are opened with O_NOFOLLOW|O_EXCL, so nothing is ever written
outside `dest`. A multi-block xz stream (xz >= 5.4 writes them, as in the 6.12 archive) has its
blocks decoded in parallel.
"""

from __future__ import annotations

import errno
import hashlib
import lzma
import os
import queue
import re
import stat
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

from kheaders_pkg.errors import ArchiveError, FilesystemError, ManifestError
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME  # no member may take these names

NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
PATH_MAX = 4095  # bytes in a path, without the NUL (Linux PATH_MAX - 1)

_XZ_MAGIC = b"\xfd7zXZ\x00"
_XZ_FOOTER_MAGIC = b"YZ"
_GZIP_MAGIC = b"\x1f\x8b"
# liblzma may allocate the whole dictionary up front: a hostile header asking for 1.5 GiB must fail,
# not exhaust memory. gen_kheaders.sh uses xz's default preset (8 MiB dictionary, 9 MiB to decode).
_XZ_MEMLIMIT = 32 << 20
_IN_CHUNK = 256 << 10  # compressed bytes per read
_OUT_CHUNK = 256 << 10  # decompressed bytes per queue item; the queue holds a few of these
_QUEUE_ITEMS = 8
# A block decoded ahead of the one being consumed buffers its output: at most this much. Memory
# (the whole sync stays under 64 MiB): ~19 MiB interpreter, 9 MiB per decoder, this, the input.
_LOOKAHEAD_BYTES = 6 << 20
# The whole compressed input is held in memory (so the digest covers exactly the decoded bytes)
# only for the parallel path, and only up to this size (real archives are 4-5 MB): memory.
_PARALLEL_MAX_INPUT = 8 << 20
_META_MAX = 64 << 10  # a pax extended header (path, linkpath, xattrs) is far smaller than this
_REUSE_BUFFER_MAX = 8 << 20  # a reuse candidate is held in memory until its hash is known
_WHOLE_MAX = 1 << 20  # larger files are streamed to disk, never whole in memory
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_DIR_FDS = 32  # directory descriptors kept open (members arrive sorted, so few are needed)

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# os.link from the previous tree is an optimisation: when it cannot be done, write the file.
_LINK_FALLBACK = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOENT, errno.ENOTDIR, errno.ELOOP}
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SIZE_TEXT = re.compile(r"0|[1-9][0-9]{0,19}")
_PAX_MTIME = re.compile(rb"(-?)([0-9]{1,19})(?:\.([0-9]{1,30}))?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one archive; real archives are ~6.4k-7.1k members and 30-38 MB of tar."""

    max_members: int = 100_000
    max_total_bytes: int = 1 << 30  # decompressed tar bytes, headers and padding included
    max_member_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name in ("max_members", "max_total_bytes", "max_member_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Entry:
    """One manifest line: a regular file or a symlink in the generated tree."""

    path: str  # relative, no "./", no trailing slash
    kind: Literal["f", "l"]
    size: int  # file size (0 for links)
    sha256: str | None  # files
    target: str | None  # links


@dataclass(frozen=True)
class ExtractResult:
    entries: tuple[Entry, ...]  # sorted by path; files and symlinks only
    archive_sha256: str  # sha256 of the compressed bytes read
    archive_size: int
    total_bytes: int  # sum of file sizes
    directories: int
    reused: int = 0  # files hard-linked from `previous` instead of written


# --------------------------------------------------------------------------------------------
# Names


def _show(name: bytes | str) -> str:
    """A name for a one-line message: quoted, control characters and bad UTF-8 escaped."""
    text = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
    if len(text) > 160:
        text = f"{text[:100]}...{text[-40:]}"
    return repr(text)


def _decode_name(raw: bytes, what: str) -> str:
    """Raw name bytes -> text, or ArchiveError naming `what` (e.g. "member 'x'")."""
    if len(raw) > PATH_MAX:
        raise ArchiveError(f"{what}: name longer than {PATH_MAX} bytes")
    if b"\0" in raw:
        raise ArchiveError(f"{what}: name contains a NUL byte")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveError(f"{what}: name is not valid UTF-8") from None
    if _CONTROL.search(text):
        # A tab or newline would break the manifest's line format; no header has either.
        raise ArchiveError(f"{what}: name contains a control character (tab, newline, ...)")
    return text


def _check_components(parts: list[str], what: str) -> None:
    for part in parts:
        if part == "..":
            raise ArchiveError(f"{what}: '..' component")
        if part in ("", "."):
            raise ArchiveError(f"{what}: empty or '.' component")
        if len(part.encode()) > NAME_MAX:
            raise ArchiveError(f"{what}: a path component is longer than {NAME_MAX} bytes")


# A path every check below would pass: printable ASCII components of 1-255 bytes, none "." or "..",
# separated by single slashes. One C call for the common case; anything else is checked piecewise.
_PLAIN_COMPONENT = rb"(?!\.\.?(?:/|\Z))[\x20-\x2e\x30-\x7e]{1,255}"
_PLAIN_PATH = re.compile(rb"(?:%s/)*%s" % (_PLAIN_COMPONENT, _PLAIN_COMPONENT))
_PLAIN_TEXT_PATH = re.compile(_PLAIN_PATH.pattern.decode("ascii"))
_RESERVED = frozenset({MANIFEST_NAME.encode(), STAMP_NAME.encode()})


def _member_path(raw: bytes, is_dir: bool) -> str:
    """A member name -> its normalised relative path ("" for the top directory), checked."""
    name = raw[2:] if raw.startswith(b"./") else raw
    if is_dir and name.endswith(b"/"):
        name = name[:-1]
    if len(raw) <= PATH_MAX and _PLAIN_PATH.fullmatch(name) and name not in _RESERVED:
        return name.decode("ascii")
    return _member_path_checked(raw, is_dir)


def _member_path_checked(raw: bytes, is_dir: bool) -> str:
    what = f"member {_show(raw)}"
    text = _decode_name(raw, what)
    if not text:
        raise ArchiveError(f"{what}: empty name")
    if text.startswith("/"):
        raise ArchiveError(f"{what}: absolute path")
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
    _check_components(text.split("/"), what)
    if text in (MANIFEST_NAME, STAMP_NAME):
        raise ArchiveError(f"{what}: name is reserved for kheaders-pkg's own files")
    return text


def _symlink_target(path: str, raw: bytes) -> str:
    """Check a symlink's target; it must stay inside the tree.

    Only `(../)*name(/name)*` is accepted, with at most as many `..` as the link's directory is
    deep. A purely lexical check of e.g. `s/../x` is not enough: if `s` is itself a symlink the
    kernel resolves `..` from wherever `s` points. With `..` only in front, resolution starts from
    the link's real directory (one this extraction created) and then only descends, so every link
    in the tree stays inside it. The kernel's own links (`../../uapi/linux/input-event-codes.h`,
    `qcom,dispcc-sm8250.h`) have this form.
    """
    what = f"member {_show(path)}: symlink target {_show(raw)}"
    target = _decode_name(raw, what)
    if not target:
        raise ArchiveError(f"{what}: empty target")
    if target.startswith("/"):
        raise ArchiveError(f"{what}: absolute target")
    parts = target.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ups > path.count("/"):
        raise ArchiveError(f"{what}: escapes the tree")
    rest = parts[ups:]
    if not rest and ups == 0:
        raise ArchiveError(f"{what}: empty target")
    for part in rest:
        if part == "..":
            raise ArchiveError(f"{what}: '..' after a name may escape the tree through a symlink")
    _check_components(rest, what)
    return target


# --------------------------------------------------------------------------------------------
# The manifest


def render_manifest(entries: Iterable[Entry]) -> str:
    """The manifest text: one tab-separated line per file or symlink, sorted by path, path last."""
    lines = []
    for e in sorted(entries, key=lambda e: e.path):
        _check_entry(e)
        if e.kind == "f":
            lines.append(f"f\t{e.sha256}\t{e.size}\t{e.path}\n")
        else:
            lines.append(f"l\t{e.target}\t-\t{e.path}\n")
    return "".join(lines)


def _check_entry(e: Entry) -> None:
    if not _PLAIN_TEXT_PATH.fullmatch(e.path):
        what = f"manifest entry {_show(e.path)}"
        if not e.path or e.path.startswith("/") or _CONTROL.search(e.path):
            raise ManifestError(f"{what}: bad path")
        try:
            _check_components(e.path.split("/"), what)
        except ArchiveError as err:
            raise ManifestError(str(err)) from None
    if e.kind == "f":
        if e.sha256 is None or not _SHA256_HEX.fullmatch(e.sha256) or e.size < 0 or e.target:
            what = f"manifest entry {_show(e.path)}"
            raise ManifestError(f"{what}: a file needs a size and a sha256, and no target")
    elif e.kind == "l":
        if not e.target or _CONTROL.search(e.target) or e.size != 0 or e.sha256 is not None:
            what = f"manifest entry {_show(e.path)}"
            raise ManifestError(f"{what}: a symlink needs a target, and no size or sha256")
    else:
        raise ManifestError(f"manifest entry {_show(e.path)}: unknown kind {e.kind!r}")


def parse_manifest(text: str) -> tuple[Entry, ...]:
    """The manifest text -> entries; strict: anything render_manifest would not write is refused."""
    if text and not text.endswith("\n"):
        raise ManifestError("manifest: last line is not terminated")
    entries: list[Entry] = []
    previous = ""
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 4:
            raise ManifestError(f"manifest line {number}: expected 4 tab-separated fields")
        kind, value, size, path = fields
        entry: Entry
        if kind == "f" and _SIZE_TEXT.fullmatch(size):
            entry = Entry(path, "f", int(size), value, None)
        elif kind == "l" and size == "-":
            entry = Entry(path, "l", 0, None, value)
        else:
            raise ManifestError(f"manifest line {number}: bad kind or size field")
        try:
            _check_entry(entry)
        except ManifestError as err:
            raise ManifestError(f"manifest line {number}: {err}") from None
        if entries and path <= previous:
            raise ManifestError(f"manifest line {number}: {_show(path)} is not sorted or repeated")
        if entries and path.startswith(previous + "/"):
            raise ManifestError(f"manifest line {number}: {_show(path)} is under a file or link")
        entries.append(entry)
        previous = path
    # Sorted by code point, a path "a/b" can follow "a-x" and still be under "a": check fully.
    names = {e.path for e in entries}
    for e in entries:
        parent = e.path.rpartition("/")[0]
        while parent:
            if parent in names:
                raise ManifestError(f"manifest: {_show(e.path)} is under a file or link")
            parent = parent.rpartition("/")[0]
    return tuple(entries)


def verify_tree(tree: Path, entries: Iterable[Entry]) -> list[str]:
    """Compare a tree with its manifest entries; returns the problems found, [] if it matches."""
    problems: list[str] = []
    for e in entries:
        where = tree / e.path
        try:
            st = os.lstat(where)
        except FileNotFoundError:
            problems.append(f"missing: {e.path}")
            continue
        except OSError as err:
            problems.append(f"unreadable: {e.path}: {err.strerror}")
            continue
        if e.kind == "l":
            if not stat.S_ISLNK(st.st_mode):
                problems.append(f"kind: {e.path}: expected a symlink")
            elif os.readlink(where) != e.target:
                problems.append(f"target: {e.path}: expected {e.target!r}")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"kind: {e.path}: expected a regular file")
        elif st.st_size != e.size:
            problems.append(f"size: {e.path}: expected {e.size}, found {st.st_size}")
        else:
            try:
                digest = _hash_file(where)
            except OSError as err:
                problems.append(f"unreadable: {e.path}: {err.strerror}")
                continue
            if digest != e.sha256:
                problems.append(f"hash: {e.path}: content differs")
    return problems


def _hash_file(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# xz: compressed chunks -> decompressed chunks


class _Meter:
    """The archive digest and size: every compressed byte read, in order."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def add(self, data: bytes) -> bytes:
        self.sha256.update(data)
        self.size += len(data)
        return data


def _start(read: Callable[[int], bytes], meter: _Meter) -> bytes:
    """The first bytes of the input, checked to be xz."""
    data = meter.add(read(_IN_CHUNK))
    if not data:
        raise ArchiveError("archive is empty (0 bytes)")
    while len(data) < len(_XZ_MAGIC) and (more := read(_IN_CHUNK)):
        data += meter.add(more)
    if not data.startswith(_XZ_MAGIC):
        kind = " (gzip data)" if data.startswith(_GZIP_MAGIC) else ""
        raise ArchiveError(f"not an xz archive{kind}: first bytes are {data[:6].hex()}")
    return data


def _decode_sequential(
    data: bytes, read: Callable[[int], bytes], meter: _Meter, limits: Limits
) -> Iterator[bytes]:
    """One liblzma decoder over the whole stream; `data` is what was read so far."""
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_XZ_MEMLIMIT)
    total = 0
    while True:
        try:
            out = dec.decompress(data, _OUT_CHUNK)
        except lzma.LZMAError as err:
            raise ArchiveError(f"corrupt xz data at or before byte {meter.size}: {err}") from None
        if out:
            total += len(out)
            if total > limits.max_total_bytes:
                raise ArchiveError(f"archive expands to more than {limits.max_total_bytes} bytes")
            yield out
        if dec.eof:
            break
        data = b""
        if dec.needs_input:
            data = meter.add(read(_IN_CHUNK))
            if not data:
                raise ArchiveError(f"truncated xz stream: input ends after {meter.size} bytes")
    # One stream and nothing after it: the kernel writes exactly that, and anything more (stream
    # padding, another stream, garbage) would not be covered by what we checked.
    if dec.unused_data or meter.add(read(_IN_CHUNK)):
        raise ArchiveError("trailing data after the end of the xz stream")


def _varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """An xz multibyte integer at `pos` -> (value, next position)."""
    value = 0
    for i in range(9):
        if pos + i >= len(buf):
            raise ValueError("truncated integer")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i:
                raise ValueError("non-minimal integer")
            return value, pos + i + 1
    raise ValueError("integer too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(frozen=True)
class _XzBlock:
    offset: int  # of the block header in the file
    unpadded: int  # header + compressed data + check (as the index records it)
    uncompressed: int


_CHECK_SIZES = {0: 0, 1: 4, 4: 8, 10: 32}


def _xz_blocks(buf: bytearray) -> list[_XzBlock] | None:
    """The blocks of a single-stream xz file, from its index; None if the layout is not exactly
    that (the sequential decoder then reports the problem)."""
    try:
        if len(buf) < 32 or buf[-2:] != _XZ_FOOTER_MAGIC or buf[:6] != _XZ_MAGIC:
            return None
        flags = buf[6:8]
        if zlib.crc32(flags) != struct.unpack("<I", buf[8:12])[0]:
            return None
        footer = buf[-12:]
        if footer[8:10] != flags or zlib.crc32(footer[4:10]) != struct.unpack("<I", footer[:4])[0]:
            return None
        check_size = _CHECK_SIZES.get(flags[1] & 0x0F)
        if flags[0] != 0 or check_size is None:
            return None
        index_size = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
        index_start = len(buf) - 12 - index_size
        if index_start < 12:
            return None
        index = buf[index_start : len(buf) - 12]
        if index[0] != 0 or zlib.crc32(index[:-4]) != struct.unpack("<I", index[-4:])[0]:
            return None
        count, pos = _varint(index, 1)
        blocks: list[_XzBlock] = []
        offset = 12
        for _ in range(count):
            unpadded, pos = _varint(index, pos)
            uncompressed, pos = _varint(index, pos)
            blocks.append(_XzBlock(offset, unpadded, uncompressed))
            offset += (unpadded + 3) & ~3
        if offset != index_start or index[pos:-4] != bytes(len(index) - 4 - pos):
            return None
        if (len(index) - 4 - pos) > 3:
            return None
        return blocks
    except (ValueError, IndexError, struct.error):
        return None


def _block_as_stream(buf: bytearray, block: _XzBlock) -> Iterator[bytes | memoryview]:
    """One block of `buf` as a complete xz stream of its own, in pieces (no copy of the block):
    the original stream header, the block, a one-record index and a footer, so that liblzma checks
    it fully (block header CRC, the integrity check, both sizes)."""
    padded = (block.unpadded + 3) & ~3
    records = _encode_varint(block.unpadded) + _encode_varint(block.uncompressed)
    index = b"\x00\x01" + records
    index += bytes(-len(index) % 4)
    index += struct.pack("<I", zlib.crc32(index))
    backward = struct.pack("<I", len(index) // 4 - 1) + bytes(buf[6:8])
    footer = struct.pack("<I", zlib.crc32(backward)) + backward + _XZ_FOOTER_MAGIC
    yield bytes(buf[:12])
    view = memoryview(buf)
    for start in range(block.offset, block.offset + padded, _IN_CHUNK):
        yield view[start : min(start + _IN_CHUNK, block.offset + padded)]
    yield index + footer


def _decode_one(pieces: Iterator[bytes | memoryview], put: Callable[[bytes], bool]) -> None:
    """Decode one complete xz stream given in pieces; feed more input only when liblzma needs
    it (it copies what it has not consumed)."""
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_XZ_MEMLIMIT)
    while not dec.eof:
        data: bytes | memoryview = b""
        if dec.needs_input:
            data = next(pieces, b"")
            if not data:
                raise lzma.LZMAError("block ends early")
        out = dec.decompress(data, _OUT_CHUNK)
        if out and not put(out):
            return
    if dec.unused_data or next(pieces, b""):
        raise lzma.LZMAError("data after the block")


def _xz_block_count(stream: BinaryIO) -> int | None:
    """How many blocks the (single) xz stream in a seekable file has, from its index; None if
    it cannot be told. Only chooses the strategy: what is decoded is checked as it is read."""
    try:
        if not stream.seekable():
            return None
        start = stream.tell()
        try:
            end = stream.seek(0, os.SEEK_END)
            if end - start < 32 or end - start > _PARALLEL_MAX_INPUT:
                return None
            stream.seek(end - 12)
            footer = stream.read(12)
            if len(footer) != 12 or footer[10:] != _XZ_FOOTER_MAGIC:
                return None
            index_size = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
            if index_size > end - start - 24:
                return None
            stream.seek(end - 12 - index_size)
            index = stream.read(min(index_size, 16))
            if len(index) < 2 or index[0] != 0:
                return None
            return _varint(index, 1)[0]
        finally:
            stream.seek(start)
    except (OSError, ValueError, AttributeError, struct.error):
        return None


# --------------------------------------------------------------------------------------------
# The producer thread


class _Decompressed:
    """The decompressed tar stream as an iterator of chunks, produced by a background thread.

    liblzma and hashlib release the GIL, so decoding overlaps with the parsing and writing done
    by the caller's thread. The queue is bounded: the stream is never held in memory.
    """

    def __init__(self, read: Callable[[int], bytes], blocks: int | None, limits: Limits):
        self.meter = _Meter()
        self._read = read
        self._blocks = blocks
        self._limits = limits
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_QUEUE_ITEMS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kheaders-xz", daemon=True)

    def __enter__(self) -> _Decompressed:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            data = _start(self._read, self.meter)
            read = self._read
            if self._blocks is not None and self._blocks > 1:
                # Read it all (4-5 MB): the digest then covers exactly the bytes decoded.
                whole = bytearray(data)
                while len(whole) <= _PARALLEL_MAX_INPUT and (chunk := read(_IN_CHUNK)):
                    whole += self.meter.add(chunk)
                blocks = _xz_blocks(whole) if len(whole) <= _PARALLEL_MAX_INPUT else None
                if blocks is not None and len(blocks) > 1:
                    self._run_parallel(whole, blocks)
                    return
                # Not what the index promised: decode in one go, what was read first.
                data, read = bytes(whole), self._read
                del whole
            for out in _decode_sequential(data, read, self.meter, self._limits):
                if not self._put(out):
                    return
            self._put(None)
        except BaseException as err:  # handed to the consumer, raised there
            self._put(err)

    def _run_parallel(self, data: bytearray, blocks: list[_XzBlock]) -> None:
        """Decode the blocks concurrently; hand their output on in order.

        Block 0 streams through the main queue; each later block buffers at most
        _LOOKAHEAD_BYTES ahead (then waits), so memory stays bounded whatever the block sizes.
        """
        total = sum(b.uncompressed for b in blocks)
        if total > self._limits.max_total_bytes:
            raise ArchiveError(f"archive expands to more than {self._limits.max_total_bytes} bytes")
        # Workers take blocks in order, so the block being consumed is always being decoded
        # (or done): a later block waiting on its full lookahead can never starve it.
        cancel = threading.Event()
        # The block being consumed needs no more buffer than the main queue; later ones get more.
        outputs = [
            _BlockOutput(cancel, _LOOKAHEAD_BYTES if i else _OUT_CHUNK) for i in range(len(blocks))
        ]
        next_block = iter(range(len(blocks)))
        take = threading.Lock()

        def work() -> None:
            while not cancel.is_set():
                with take:
                    i = next(next_block, None)
                if i is None:
                    return
                out = outputs[i]
                try:
                    _decode_one(_block_as_stream(data, blocks[i]), out.put)
                    out.put_end(None)
                except lzma.LZMAError as err:
                    out.put_end(ArchiveError(f"corrupt xz data in block {i + 1}: {err}"))
                except BaseException as err:
                    out.put_end(err)

        workers = [
            threading.Thread(target=work, name=f"kheaders-xz-{n}", daemon=True)
            for n in range(max(1, min(len(blocks), os.cpu_count() or 1)))
        ]
        for t in workers:
            t.start()
        try:
            for out in outputs:
                out.limit = _OUT_CHUNK  # read without a lock: a stale value only delays a put
                for chunk in out:
                    if not self._put(chunk):
                        return
            self._put(None)
        finally:
            cancel.set()
            for t in workers:
                t.join()


class _BlockOutput:
    """One block's decoded chunks, at most `limit` bytes of them buffered."""

    def __init__(self, stop: threading.Event, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._bytes = 0
        self._end: BaseException | None = None
        self._done = False
        self._cond = threading.Condition()
        self._stop = stop

    def put(self, chunk: bytes) -> bool:
        with self._cond:
            while self._bytes >= self.limit and not self._stop.is_set():
                self._cond.wait(0.05)
            if self._stop.is_set():
                return False
            self._chunks.append(chunk)
            self._bytes += len(chunk)
            self._cond.notify_all()
            return True

    def put_end(self, err: BaseException | None) -> None:
        with self._cond:
            self._end = err
            self._done = True
            self._cond.notify_all()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while not self._chunks and not self._done:
                    if self._stop.is_set():
                        return
                    self._cond.wait(0.05)
                if self._chunks:
                    chunk = self._chunks.pop(0)
                    self._bytes -= len(chunk)
                    self._cond.notify_all()
                elif self._end is not None:
                    raise self._end
                else:
                    return
            yield chunk


# --------------------------------------------------------------------------------------------
# tar: decompressed chunks -> members


class _Truncated(Exception):
    pass


class _TarInput:
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
                raise _Truncated
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
                    raise _Truncated
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


def _nul_terminated(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _parse_pax(data: bytes, what: str) -> dict[str, bytes]:
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


def _pax_mtime_ns(value: bytes, what: str) -> int:
    m = _PAX_MTIME.fullmatch(value)
    if not m:
        raise ArchiveError(f"{what}: malformed pax mtime")
    frac = (m.group(3) or b"").decode()[:9].ljust(9, "0")
    ns = int(m.group(2)) * 1_000_000_000 + int(frac)
    return -ns if m.group(1) else ns


_TYPE_NAMES = {
    b"3": "character device",
    b"4": "block device",
    b"6": "fifo",
    b"S": "GNU sparse file",
    b"V": "GNU volume header",
    b"M": "GNU multi-volume continuation",
    b"D": "GNU dump directory",
}
_KIND_WORDS = {"d": "directory", "i": "directory", "f": "file", "l": "symlink"}


def _read_umask() -> int:
    """The process umask, without changing it (os.umask would, racily, for other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777  # unknown: always chmod explicitly


class _DirFds:
    """Directory descriptors under a root, opened one component at a time with O_NOFOLLOW, and a
    few kept (LRU): members arrive sorted, so the same directories come back."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._fds: OrderedDict[str, int] = OrderedDict()

    def get(self, path: str) -> int:
        if not path:
            return self.root_fd
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        # Start from the deepest ancestor already open.
        base, base_fd, rest = "", self.root_fd, path
        probe = path
        while "/" in probe:
            probe = probe.rpartition("/")[0]
            found = self._fds.get(probe)
            if found is not None:
                base, base_fd, rest = probe, found, path[len(probe) + 1 :]
                break
        del base
        fd = base_fd
        for part in rest.split("/"):
            new = os.open(part, _O_DIR, dir_fd=fd)
            if fd != base_fd:
                os.close(fd)
            fd = new
        self._fds[path] = fd
        while len(self._fds) > _DIR_FDS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


class _Reuse:
    """Files of the previous generated tree that can be hard-linked instead of written.

    Published trees are never modified (a new generation is a new directory), so sharing inodes
    between generations is safe. A file is shared only if its mode and mtime match too: both live
    in the shared inode, and changing them would modify the published tree.
    """

    def __init__(self, root_fd: int, files: dict[str, Entry]) -> None:
        self.files = files
        self.dirs = _DirFds(root_fd)
        self.count = 0

    @classmethod
    def open(cls, previous: Path) -> _Reuse | None:
        """None if the previous tree or its manifest cannot be used: then nothing is reused."""
        try:
            root_fd = os.open(previous, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fd = os.open(MANIFEST_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
            with open(fd, encoding="utf-8") as f:
                entries = parse_manifest(f.read())
        except (OSError, UnicodeDecodeError, ManifestError):
            os.close(root_fd)
            return None
        return cls(root_fd, {e.path: e for e in entries if e.kind == "f"})

    def close(self) -> None:
        self.dirs.close()
        os.close(self.dirs.root_fd)

    def link(self, path: str, dest_dir_fd: int, mode: int, mtime_ns: int, size: int) -> bool:
        parent, _, leaf = path.rpartition("/")
        try:
            src_dir_fd = self.dirs.get(parent)
            st = os.stat(leaf, dir_fd=src_dir_fd, follow_symlinks=False)
            if not (
                stat.S_ISREG(st.st_mode)
                and st.st_size == size
                and stat.S_IMODE(st.st_mode) == mode
                and st.st_mtime_ns == mtime_ns
            ):
                return False
            os.link(
                leaf, leaf, src_dir_fd=src_dir_fd, dst_dir_fd=dest_dir_fd, follow_symlinks=False
            )
        except OSError as err:
            if err.errno in _LINK_FALLBACK:
                return False
            raise
        self.count += 1
        return True


class _Extraction:
    """The state of one extraction: what exists under `dest` (in memory), and the manifest."""

    def __init__(self, root_fd: int, limits: Limits, reuse: _Reuse | None, umask: int) -> None:
        self.root_fd = root_fd
        self.limits = limits
        self.reuse = reuse
        self.umask = umask
        self.dirs = _DirFds(root_fd)
        # What this extraction made, by path: "d" directory (a member), "i" directory made as
        # a parent (or the top), "f" file, "l" symlink. Only "d"/"i" may be written into.
        self.kinds: dict[str, str] = {"": "i"}
        self.files: dict[str, Entry] = {}
        self.entries: list[Entry] = []
        self.dir_mtimes: list[tuple[str, int]] = []
        self.members = 0
        self.directories = 0
        self.has_include = False

    # -- the loop ---------------------------------------------------------------------------

    def run(self, tar: _TarInput) -> None:
        limits = self.limits
        long_name: bytes | None = None
        long_link: bytes | None = None
        pax: dict[str, bytes] = {}
        while True:
            try:
                header = tar.block()
            except _Truncated:
                raise ArchiveError("truncated tar archive: partial header block") from None
            if header is None:
                if self.members or long_name or long_link or pax:
                    raise ArchiveError("truncated tar archive: no end-of-archive marker")
                raise ArchiveError("tar archive is empty")
            if header == _ZERO_BLOCK:
                if long_name is not None or long_link is not None or pax:
                    raise ArchiveError("tar archive ends after an extended header")
                if not tar.rest_is_zero():
                    raise ArchiveError("data after the tar end-of-archive marker")
                return
            raw_name, typeflag, size, mode, mtime = _header_fields(header)
            try:
                if typeflag in _EXTENDED:
                    what = f"member {_show(raw_name)}"
                    limit = PATH_MAX + 1 if typeflag in (b"L", b"K") else _META_MAX
                    if size > limit:
                        raise ArchiveError(f"{what}: extended header of {size} bytes is too large")
                    data = tar.read(size)
                    if typeflag == b"L":
                        long_name = _gnu_long(data, "GNU long name")
                    elif typeflag == b"K":
                        long_link = _gnu_long(data, "GNU long link name")
                    elif typeflag == b"x":
                        pax = _parse_pax(data, f"{what}: pax header")
                        for key in pax:
                            if key.startswith("GNU.sparse."):
                                raise ArchiveError(f"{what}: sparse files are not supported")
                    else:
                        _check_global_pax(_parse_pax(data, f"{what}: global pax header"), what)
                    continue
                # A real member: apply the extended headers, then check the final name.
                raw_link = _nul_terminated(header[157:257]) if typeflag in _LINKS else b""
                mtime_ns = mtime * 1_000_000_000
                if pax or long_name is not None or long_link is not None:
                    if "path" in pax:
                        raw_name = pax["path"]
                    elif long_name is not None:
                        raw_name = long_name
                    if "linkpath" in pax:
                        raw_link = pax["linkpath"]
                    elif long_link is not None:
                        raw_link = long_link
                    if "size" in pax:
                        if not pax["size"].isdigit():
                            raise ArchiveError(f"member {_show(raw_name)}: malformed pax size")
                        size = int(pax["size"])
                    if "mtime" in pax:
                        mtime_ns = _pax_mtime_ns(pax["mtime"], f"member {_show(raw_name)}")
                    long_name = long_link = None
                    pax = {}
                self.members += 1
                if self.members > limits.max_members:
                    raise ArchiveError(f"archive has more than {limits.max_members} members")
                self.member(tar, typeflag, raw_name, raw_link, size, mode, mtime_ns)
            except _Truncated:
                raise ArchiveError(f"truncated tar archive: member {_show(raw_name)}") from None
            except OSError as err:
                raise FilesystemError(
                    f"cannot extract member {_show(raw_name)}: {err.strerror or err}"
                ) from None

    def member(
        self,
        tar: _TarInput,
        typeflag: bytes,
        raw_name: bytes,
        raw_link: bytes,
        size: int,
        mode: int,
        mtime_ns: int,
    ) -> None:
        kind = _KINDS.get(typeflag)
        if kind is None:
            name = _TYPE_NAMES.get(typeflag, f"unsupported member type {typeflag!r}")
            raise ArchiveError(f"member {_show(raw_name)}: {name} not allowed")
        path = _member_path(raw_name, kind == "d")
        if (
            mode & 0o7000
            or (mode & 0o002 and kind in ("f", "d"))
            or (size and kind != "f")
            or size > self.limits.max_member_bytes
        ):
            self.refuse(path, kind, size, mode)
        if path == "include" or path.startswith("include/"):
            self.has_include = True

        if kind == "d":
            self.directory(path, mtime_ns)
            return
        self.claim(path, kind)
        target = _symlink_target(path, raw_link) if kind == "l" else ""
        parent, _, leaf = path.rpartition("/")
        parent_fd = self.parent_fd(path, parent)
        if kind == "f":
            perm = 0o755 if mode & 0o111 else 0o644
            self.regular(tar, path, leaf, parent_fd, size, perm, mtime_ns)
        elif kind == "l":
            os.symlink(target, leaf, dir_fd=parent_fd)
            os.utime(leaf, ns=(mtime_ns, mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
            self.kinds[path] = "l"
            self.entries.append(Entry(path, "l", 0, None, target))
        else:
            target_path = _member_path(raw_link, False)
            original = self.files.get(target_path)
            if original is None:
                raise ArchiveError(
                    f"member {_show(path)}: hard link to {_show(target_path)}, "
                    "which is not an earlier regular file in the archive"
                )
            os.link(
                target_path,
                leaf,
                src_dir_fd=self.root_fd,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            )
            self.kinds[path] = "f"
            entry = Entry(path, "f", original.size, original.sha256, None)
            self.files[path] = entry
            self.entries.append(entry)

    def refuse(self, path: str, kind: str, size: int, mode: int) -> None:
        """Raise the error for a member with a mode or size that is not allowed."""
        what = f"member {_show(path)}"
        if mode & 0o7000:
            raise ArchiveError(f"{what}: setuid, setgid or sticky bit set (mode {mode:o})")
        if mode & 0o002 and kind in ("f", "d"):
            raise ArchiveError(f"{what}: world-writable (mode {mode:o})")
        if kind != "f" and size:
            raise ArchiveError(f"{what}: a {_KIND_WORDS.get(kind, 'hard link')} with data")
        limit = self.limits.max_member_bytes
        raise ArchiveError(f"{what}: {size} bytes, over the limit of {limit} per member")

    # -- the tree ---------------------------------------------------------------------------

    def claim(self, path: str, kind: str) -> None:
        old = self.kinds.get(path)
        if old is None:
            return
        new_word = _KIND_WORDS.get(kind, "hard link")
        old_word = _KIND_WORDS[old]
        if old_word == new_word:
            raise ArchiveError(f"member {_show(path)}: duplicate of an earlier {old_word}")
        raise ArchiveError(f"member {_show(path)}: {new_word} would replace an earlier {old_word}")

    def parent_fd(self, path: str, parent: str) -> int:
        """The directory `parent` (created if missing, like tar): it must be one of ours."""
        kind = self.kinds.get(parent)
        if kind is None:
            self.make_parents(path, parent)
        elif kind not in ("d", "i"):
            raise ArchiveError(
                f"member {_show(path)}: parent {_show(parent)} is a {_KIND_WORDS[kind]}, "
                "not a directory: refusing to write through it"
            )
        return self.dirs.get(parent)

    def make_parents(self, path: str, parent: str) -> None:
        missing = []
        probe = parent
        while probe not in self.kinds:
            missing.append(probe)
            probe = probe.rpartition("/")[0]
        if self.kinds[probe] not in ("d", "i"):
            word = _KIND_WORDS[self.kinds[probe]]
            raise ArchiveError(
                f"member {_show(path)}: parent {_show(probe)} is a {word}, "
                "not a directory: refusing to write through it"
            )
        for p in reversed(missing):
            self.mkdir(p)
            self.kinds[p] = "i"

    def mkdir(self, path: str) -> None:
        parent, _, leaf = path.rpartition("/")
        fd = self.dirs.get(parent)
        os.mkdir(leaf, 0o755, dir_fd=fd)
        if self.umask & 0o755:
            os.chmod(leaf, 0o755, dir_fd=fd, follow_symlinks=True)
        self.directories += 1

    def directory(self, path: str, mtime_ns: int) -> None:
        old = self.kinds.get(path)
        if old == "i":  # made earlier as a parent, or the top directory
            self.kinds[path] = "d"
        elif old is not None:
            self.claim(path, "d")
        else:
            self.parent_fd(path, path.rpartition("/")[0])
            self.mkdir(path)
            self.kinds[path] = "d"
        if path:  # the top directory's mode and mtime are the caller's
            self.dir_mtimes.append((path, mtime_ns))

    def regular(
        self,
        tar: _TarInput,
        path: str,
        leaf: str,
        parent_fd: int,
        size: int,
        mode: int,
        mtime_ns: int,
    ) -> None:
        self.kinds[path] = "f"
        reuse = self.reuse
        known = reuse.files.get(path) if reuse is not None else None
        if known is not None and known.size == size <= _REUSE_BUFFER_MAX:
            assert reuse is not None
            data = tar.read(size)
            digest = hashlib.sha256(data).hexdigest()
            if not (digest == known.sha256 and reuse.link(path, parent_fd, mode, mtime_ns, size)):
                self.create(leaf, parent_fd, (data,), mode, mtime_ns)
        elif size <= _WHOLE_MAX:
            data = tar.read(size)
            digest = hashlib.sha256(data).hexdigest()
            self.create(leaf, parent_fd, (data,), mode, mtime_ns)
        else:  # large: streamed, never whole in memory
            h = hashlib.sha256()
            self.create(leaf, parent_fd, _hashing(tar.pieces(size), h), mode, mtime_ns)
            digest = h.hexdigest()
        self.add_file(path, size, digest)

    def create(
        self,
        leaf: str,
        parent_fd: int,
        pieces: Iterable[bytes | memoryview],
        mode: int,
        mtime_ns: int,
    ) -> None:
        """A new file `leaf` in `parent_fd` (it must not exist) with its data, mode and mtime."""
        fd = os.open(leaf, _O_NEWFILE, mode, dir_fd=parent_fd)
        try:
            for piece in pieces:
                while piece:
                    piece = piece[os.write(fd, piece) :]
            if self.umask & mode:
                os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def add_file(self, path: str, size: int, digest: str) -> None:
        entry = Entry(path, "f", size, digest, None)
        self.files[path] = entry
        self.entries.append(entry)

    def finish_tree(self) -> None:
        # Directory mtimes last: creating their contents changed them.
        for path, mtime_ns in self.dir_mtimes:
            os.utime(path, ns=(mtime_ns, mtime_ns), dir_fd=self.root_fd, follow_symlinks=False)


def _hashing(pieces: Iterable[memoryview], h: hashlib._Hash) -> Iterator[memoryview]:
    for piece in pieces:
        h.update(piece)
        yield piece


def _gnu_long(data: bytes, what: str) -> bytes:
    name = data.rstrip(b"\0")
    if b"\0" in name:
        raise ArchiveError(f"{what} {_show(name)}: contains a NUL byte")
    return name


def _check_global_pax(records: dict[str, bytes], what: str) -> None:
    for key in ("path", "linkpath", "size"):
        if key in records:
            raise ArchiveError(f"{what}: a global pax header may not set {key!r}")
    if any(key.startswith("GNU.sparse.") for key in records):
        raise ArchiveError(f"{what}: sparse files are not supported")


# GNU tar's own layout, as gen_kheaders.sh writes it: mode, uid, gid, size and mtime in zero-padded
# octal ending in NUL, then the checksum as six digits, NUL, space. Anything else: the long way.
_GNU_FIELDS = re.compile(rb"([0-7]{7})\0.{16}([0-7]{11})\0([0-7]{11})\0([0-7]{6})\0 ", re.DOTALL)
_GNU_MAGIC = b"ustar  \0"
_EXTENDED = frozenset({b"L", b"K", b"x", b"g"})
_LINKS = frozenset({b"1", b"2"})
_KINDS = {b"0": "f", b"\0": "f", b"7": "f", b"5": "d", b"2": "l", b"1": "h"}


def _header_fields(header: bytes) -> tuple[bytes, bytes, int, int, int]:
    """A header block -> (raw name, typeflag, size, mode, mtime), checked."""
    m = _GNU_FIELDS.match(header, 100)
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
    return _header_fields_checked(header)


def _header_fields_checked(header: bytes) -> tuple[bytes, bytes, int, int, int]:
    """_header_fields for any header: each field parsed and checked on its own."""
    raw_name = _nul_terminated(header[:100])
    what = f"member {_show(raw_name)}"
    _check_header(header, what)
    size = _number(header[124:136])
    mode = _number(header[100:108])
    mtime = _number(header[136:148])
    if size is None or mode is None or mtime is None:
        raise ArchiveError(f"{what}: malformed numeric field in tar header")
    if header[257:263] == b"ustar\0" and header[345] != 0:
        # POSIX ustar splits long names into prefix + name; GNU format uses that space for
        # other fields, hence the magic check.
        raw_name = _nul_terminated(header[345:500]) + b"/" + raw_name
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


# --------------------------------------------------------------------------------------------
# The entry point


def extract_archive(
    src: BinaryIO | Path,
    dest: Path,
    *,
    limits: Limits = DEFAULT_LIMITS,
    previous: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExtractResult:
    """Extract the headers archive `src` into the empty directory `dest`.

    Raises ArchiveError for anything wrong with the archive and FilesystemError for a write that
    failed; either way the caller removes `dest`, and nothing outside it was touched. With
    `previous` (an earlier tree of ours, with its manifest), unchanged files are hard-linked from
    it instead of written. `progress`, if given, is called with the tar bytes consumed so far.
    """
    try:
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise FilesystemError(f"cannot open staging directory {dest}: {err.strerror}") from None
    try:
        if os.listdir(root_fd):
            raise FilesystemError(f"staging directory {dest} is not empty")
        reuse = _Reuse.open(previous) if previous is not None else None
        try:
            if isinstance(src, Path):
                try:
                    opened = open(src, "rb", buffering=0)
                except OSError as err:
                    raise ArchiveError(f"cannot read archive {src}: {err.strerror}") from None
                with opened:
                    return _extract_stream(opened, root_fd, limits, reuse, progress)
            return _extract_stream(src, root_fd, limits, reuse, progress)
        finally:
            if reuse is not None:
                reuse.close()
    finally:
        os.close(root_fd)


def _extract_stream(
    stream: BinaryIO,
    root_fd: int,
    limits: Limits,
    reuse: _Reuse | None,
    progress: Callable[[int], None] | None,
) -> ExtractResult:
    read = _safe_reader(stream)
    blocks = _xz_block_count(stream)
    state = _Extraction(root_fd, limits, reuse, _read_umask())
    try:
        with _Decompressed(read, blocks, limits) as decompressed:
            # run() returns only after reading the decoder's output to its end, so the xz
            # stream's index and check were verified and nothing follows it.
            chunks = iter(decompressed)
            state.run(_TarInput(chunks if progress is None else _reporting(chunks, progress)))
        if not state.members:
            raise ArchiveError("tar archive has no members")
        if not state.has_include:
            raise ArchiveError("archive has no include/ directory: not a kernel headers archive")
        state.finish_tree()
    except OSError as err:
        raise FilesystemError(f"cannot extract: {err.strerror or err}") from None
    finally:
        state.dirs.close()
    return ExtractResult(
        entries=tuple(sorted(state.entries, key=lambda e: e.path)),
        archive_sha256=decompressed.meter.sha256.hexdigest(),
        archive_size=decompressed.meter.size,
        total_bytes=sum(e.size for e in state.entries),
        directories=state.directories,
        reused=reuse.count if reuse is not None else 0,
    )


def _reporting(chunks: Iterator[bytes], progress: Callable[[int], None]) -> Iterator[bytes]:
    done = 0
    for chunk in chunks:
        done += len(chunk)
        progress(done)
        yield chunk


def _safe_reader(stream: BinaryIO) -> Callable[[int], bytes]:
    def read(n: int) -> bytes:
        try:
            return stream.read(n) or b""
        except OSError as err:
            raise ArchiveError(f"cannot read archive: {err.strerror or err}") from None

    return read
