"""xz: the compressed archive -> decompressed chunks, in a background thread, bounded in memory.

The compressed bytes are hashed as they are read (the archive digest) and decompressed by liblzma
in a background thread (it releases the GIL) into a small bounded queue. A multi-block xz stream
(xz >= 5.4 writes them, as in the 6.12 archive) has its blocks decoded in parallel. The output is
limited to a byte ceiling given by the caller.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import queue
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

from kheaders_pkg.errors import ArchiveError

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
    data: bytes, read: Callable[[int], bytes], meter: _Meter, max_bytes: int
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
            if total > max_bytes:
                raise ArchiveError(f"archive expands to more than {max_bytes} bytes")
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


def encode_varint(value: int) -> bytes:
    """`value` as an xz multibyte integer (the .xz file format, 1.2: little-endian base 128)."""
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
    records = encode_varint(block.unpadded) + encode_varint(block.uncompressed)
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


def block_count(stream: BinaryIO) -> int | None:
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


class Decompressed:
    """The decompressed tar stream as an iterator of chunks, produced by a background thread.

    liblzma and hashlib release the GIL, so decoding overlaps with the parsing and writing done
    by the caller's thread. The queue is bounded: the stream is never held in memory. More than
    `max_bytes` of output is an ArchiveError.
    """

    def __init__(self, stream: BinaryIO, max_bytes: int):
        self.meter = _Meter()
        self._read = safe_reader(stream)
        self._blocks = block_count(stream)
        self._max_bytes = max_bytes
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_QUEUE_ITEMS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kheaders-xz", daemon=True)

    def __enter__(self) -> Decompressed:
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
            for out in _decode_sequential(data, read, self.meter, self._max_bytes):
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
        if total > self._max_bytes:
            raise ArchiveError(f"archive expands to more than {self._max_bytes} bytes")
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


def safe_reader(stream: BinaryIO) -> Callable[[int], bytes]:
    def read(n: int) -> bytes:
        try:
            return stream.read(n) or b""
        except OSError as err:
            raise ArchiveError(f"cannot read archive: {err.strerror or err}") from None

    return read
