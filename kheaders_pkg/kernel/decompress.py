"""Bounded decompression of the formats kernel files come in: xz, lzma, gzip, bzip2, zstd.

The stdlib covers xz/lzma (`lzma`), gzip (`zlib`) and bzip2 (`bz2`); Python 3.11 has no zstd, so
zstd goes through the `zstd` command (Debian package `zstd`). Every decoder stops at the end of its
stream and hands back what follows (`Decompressed.trailing`): the kernel appends a 4-byte size
after its image payload (scripts/Makefile.lib `size_append`), and callers decide what they accept.
"""

from __future__ import annotations

import bz2
import enum
import lzma
import threading
import zlib
from dataclasses import dataclass
from typing import IO, Protocol

from kheaders_pkg.errors import KernelDataError
from kheaders_pkg.run import spawn

# No kernel file we read decompresses to anything near this (a vmlinux is 20-130 MiB, a module
# rarely over 10 MiB); past it the input is hostile or not what we think it is.
MAX_OUTPUT = 512 * 1024 * 1024

_CHUNK = 1024 * 1024
_STDERR_KEEP = 4096


class Compression(enum.StrEnum):
    GZIP = "gzip"
    XZ = "xz"
    ZSTD = "zstd"
    LZMA = "lzma"
    BZIP2 = "bzip2"
    LZ4 = "lz4"
    LZO = "lzo"
    NONE = "none"


# Magic numbers, as the kernel's own decompressors (lib/decompress.c) recognise them, plus ELF
# for CONFIG_KERNEL_UNCOMPRESSED. lzma-alone has no magic: its first byte is the lc/lp/pb
# properties byte, 0x5d for the defaults every kernel build uses, then a 32-bit dictionary size.
_MAGICS: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\x5d\x00\x00", Compression.LZMA),
    (b"BZh", Compression.BZIP2),
    (b"\x02\x21\x4c\x18", Compression.LZ4),  # lz4 legacy frame, as `lz4 -l` writes it
    (b"\x89LZO\x00\r\n\x1a\n", Compression.LZO),  # lzop
    (b"\x7fELF", Compression.NONE),
)


def detect(data: bytes) -> Compression | None:
    """The compression `data` starts with, by magic; None if no known magic matches."""
    for magic, kind in _MAGICS:
        if data.startswith(magic):
            return kind
    return None


@dataclass(frozen=True)
class Decompressed:
    data: bytes
    trailing: bytes  # whatever followed the end of the compressed stream


def decompress(
    data: bytes,
    kind: Compression,
    *,
    limit: int = MAX_OUTPUT,
    error: type[KernelDataError] = KernelDataError,
) -> Decompressed:
    """Decode one stream of `kind`; raise `error` if it is corrupt, truncated or over `limit`."""
    if kind is Compression.NONE:
        if len(data) > limit:
            raise error(f"uncompressed data of {len(data)} bytes is over the {limit}-byte limit")
        return Decompressed(data, b"")
    if kind is Compression.XZ:
        return _decode(_Stdlib(lzma.LZMADecompressor(lzma.FORMAT_XZ)), data, kind, limit, error)
    if kind is Compression.LZMA:
        return _decode(_Stdlib(lzma.LZMADecompressor(lzma.FORMAT_ALONE)), data, kind, limit, error)
    if kind is Compression.BZIP2:
        return _decode(_Stdlib(bz2.BZ2Decompressor()), data, kind, limit, error)
    if kind is Compression.GZIP:
        # wbits 16+15: a gzip member with its header and CRC32/ISIZE trailer checked.
        return _decode(_Zlib(zlib.decompressobj(16 + zlib.MAX_WBITS)), data, kind, limit, error)
    if kind is Compression.ZSTD:
        return _zstd(data, limit, error)
    raise error(f"{kind} decompression is not supported")


class _StdlibDecompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def needs_input(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


class _Decoder(Protocol):
    def step(self, data: bytes, max_length: int) -> bytes: ...
    def done(self) -> bool: ...
    def starved(self) -> bool: ...
    def trailing(self) -> bytes: ...


class _Stdlib:
    """lzma/bz2 decompressors: input not yet used is kept inside the object."""

    def __init__(self, dec: _StdlibDecompressor) -> None:
        self._dec = dec

    def step(self, data: bytes, max_length: int) -> bytes:
        return self._dec.decompress(data, max_length)

    def done(self) -> bool:
        return self._dec.eof

    def starved(self) -> bool:
        return self._dec.needs_input

    def trailing(self) -> bytes:
        return self._dec.unused_data


class _Zlib:
    """zlib hands unused input back in `unconsumed_tail`; feed it again on the next step."""

    def __init__(self, dec: zlib._Decompress) -> None:
        self._dec = dec
        self._tail = b""

    def step(self, data: bytes, max_length: int) -> bytes:
        out = self._dec.decompress(self._tail + data, max_length)
        self._tail = self._dec.unconsumed_tail
        return out

    def done(self) -> bool:
        return self._dec.eof

    def starved(self) -> bool:
        return not self._tail

    def trailing(self) -> bytes:
        return self._dec.unused_data


def _decode(
    dec: _Decoder, data: bytes, kind: Compression, limit: int, error: type[KernelDataError]
) -> Decompressed:
    out = bytearray()
    pending = data
    stalls = 0
    try:
        while not dec.done():
            # One byte over the limit tells "exactly at the limit" from "over it".
            chunk = dec.step(pending, min(_CHUNK, limit + 1 - len(out)))
            pending = b""
            out += chunk
            if len(out) > limit:
                raise error(f"{kind} data decompresses to more than {limit} bytes")
            if not chunk and not dec.done():
                if dec.starved():
                    raise error(f"{kind} data is truncated ({len(data)} bytes of input)")
                stalls += 1
                if stalls > 1:  # a decoder that neither eats input nor yields output
                    raise error(f"{kind} decoder made no progress")
            else:
                stalls = 0
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as exc:
        raise error(f"{kind} data is corrupt: {exc}") from None
    return Decompressed(bytes(out), dec.trailing())


# --- zstd --------------------------------------------------------------------------------------

_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # ..0x184D2A5F


def zstd_frames_length(data: bytes, error: type[KernelDataError] = KernelDataError) -> int:
    """Length of the zstd frames at the start of `data` (RFC 8878 section 3.1), walked by header.

    The `zstd` command rejects trailing bytes, and the kernel's image payload ends with a 4-byte
    size, so we find where the frames end ourselves. Only headers are read, never decoded.
    """
    pos = 0
    while pos + 4 <= len(data):
        magic = int.from_bytes(data[pos : pos + 4], "little")
        if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
            if pos + 8 > len(data):
                raise error(f"zstd skippable frame at offset {pos} is truncated")
            pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
            if pos > len(data):
                raise error("zstd skippable frame runs past the end of the data")
            continue
        if magic != _ZSTD_MAGIC:
            break
        pos = _zstd_frame_end(data, pos, error)
    if pos == 0:
        raise error("data does not start with a zstd frame")
    return pos


def _zstd_frame_end(data: bytes, start: int, error: type[KernelDataError]) -> int:
    pos = start + 4
    if pos >= len(data):
        raise error(f"zstd frame at offset {start} is truncated")
    fhd = data[pos]
    if fhd & 0x08:
        raise error(f"zstd frame at offset {start} sets the reserved header bit")
    single_segment = bool(fhd & 0x20)
    fcs_size = (1 if single_segment else 0, 2, 4, 8)[fhd >> 6]
    dict_size = (0, 1, 2, 4)[fhd & 0x03]
    pos += 1 + (0 if single_segment else 1) + dict_size + fcs_size
    while True:
        if pos + 3 > len(data):
            raise error(f"zstd frame at offset {start} is truncated")
        header = int.from_bytes(data[pos : pos + 3], "little")
        last, block_type, size = header & 1, (header >> 1) & 3, header >> 3
        if block_type == 3:
            raise error(f"zstd block at offset {pos} has the reserved block type")
        pos += 3 + (1 if block_type == 1 else size)  # an RLE block stores one byte
        if last:
            break
    if fhd & 0x04:
        pos += 4  # content checksum
    if pos > len(data):
        raise error(f"zstd frame at offset {start} is truncated")
    return pos


def _zstd(data: bytes, limit: int, error: type[KernelDataError]) -> Decompressed:
    end = zstd_frames_length(data, error)
    return Decompressed(_run_zstd(data[:end], limit, error), data[end:])


def _run_zstd(frames: bytes, limit: int, error: type[KernelDataError]) -> bytes:
    """`zstd -d` from stdin to stdout, reading at most `limit` bytes before killing it."""
    # --memory: allow the 128 MiB window of `zstd -22 --ultra` (the kernel's zstd22) and more.
    argv = ["zstd", "-d", "-c", "-q", "--no-progress", "--memory=2048MB"]
    stderr = bytearray()
    out = bytearray()
    threads: list[threading.Thread] = []
    try:
        with spawn(argv, error=error) as proc:
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            threads = [
                threading.Thread(target=_feed, args=(proc.stdin, frames), daemon=True),
                threading.Thread(target=_drain, args=(proc.stderr, stderr), daemon=True),
            ]
            for thread in threads:
                thread.start()
            while chunk := proc.stdout.read(_CHUNK):
                out += chunk
                if len(out) > limit:
                    raise error(f"zstd data decompresses to more than {limit} bytes")
    finally:
        for thread in threads:
            thread.join()
    if proc.returncode != 0:
        message = bytes(stderr).decode(errors="replace").strip().splitlines()
        reason = message[-1] if message else f"exit status {proc.returncode}"
        raise error(f"zstd data is corrupt: {reason}")
    return bytes(out)


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
    except BrokenPipeError:
        pass  # zstd stopped reading (corrupt input or killed); its exit status says why
    finally:
        try:
            pipe.close()
        except BrokenPipeError:
            pass


def _drain(pipe: IO[bytes], keep: bytearray) -> None:
    while chunk := pipe.read(_STDERR_KEEP):
        if len(keep) < _STDERR_KEEP:
            keep += chunk[: _STDERR_KEEP - len(keep)]
    pipe.close()
