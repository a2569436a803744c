"""Headers archives made to order: tar members, tar and xz bytes, and an xz "zeros bomb".

The archive tests (test_extract, test_tar, test_xz, test_hostile_archives) build their inputs here,
so that each builds them the same way.
"""

from __future__ import annotations

import io
import lzma
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

from kheaders_pkg.archive.extract import ExtractResult, extract_archive
from kheaders_pkg.archive.xz import encode_varint

Member = tuple[tarfile.TarInfo, bytes | None]
MTIME = 1_700_000_000


def regular(name: str, data: bytes = b"x", mode: int = 0o644, mtime: int = MTIME) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    return info, data


def special(
    name: str, kind: bytes, mode: int = 0o644, link: str = "", mtime: int = MTIME
) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, mtime, link
    return info, None


def directory(name: str, mode: int = 0o755, mtime: int = MTIME) -> Member:
    return special(name, tarfile.DIRTYPE, mode, mtime=mtime)


def symlink(name: str, target: str, mtime: int = MTIME) -> Member:
    return special(name, tarfile.SYMTYPE, 0o777, target, mtime)


def hardlink(name: str, target: str) -> Member:
    return special(name, tarfile.LNKTYPE, 0o644, target)


def pax(member: Member, **headers: str) -> Member:
    member[0].pax_headers = dict(headers)
    return member


def tar_bytes(members: list[Member], fmt: int = tarfile.GNU_FORMAT, end: bool = True) -> bytes:
    """The tar bytes; without `end`, no end-of-archive blocks (to append raw members)."""
    buf = io.BytesIO()
    tar = tarfile.open(
        fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
    )
    for info, data in members:
        tar.addfile(info, io.BytesIO(data) if data is not None else None)
    if not end:
        return buf.getvalue()[: tar.offset]
    tar.close()
    return buf.getvalue()


def xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64)


def archive(members: list[Member], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """An xz-compressed tar of exactly `members`."""
    return xz(tar_bytes(members, fmt))


def extract_bytes(data: bytes, tmp_path: Path) -> tuple[Path, ExtractResult]:
    """`data` extracted into a new directory `dest` under `tmp_path`."""
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    return dest, extract_archive(io.BytesIO(data), dest)


def as_multi_block(data: bytes) -> bytes | None:
    """The same tar in a multi-block xz stream (decoded in parallel), if `data` is valid xz."""
    try:
        tar = lzma.decompress(data, format=lzma.FORMAT_XZ)
    except lzma.LZMAError:
        return None
    out = subprocess.run(
        ["xz", "-z", "-c", "-T1", "--block-size=4KiB", "--check=crc64"],
        input=tar,
        capture_output=True,
        check=True,
    ).stdout
    return out


def _lzma2(data: bytes) -> bytes:
    """Raw LZMA2 chunks for `data`, without the end marker; such runs can be concatenated
    (each starts with a dictionary reset)."""
    raw = lzma.compress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    assert raw[-1] == 0
    return raw[:-1]


def zeros_bomb(head: bytes, zeros: int, tail: bytes = b"") -> bytes:
    """An xz stream of `head` + `zeros` zero bytes + `tail`, a few hundred KB for gigabytes: one
    compressed MiB of zeros repeated. No integrity check (it would need a pass over it all)."""
    mib = _lzma2(bytes(1 << 20))
    assert zeros % (1 << 20) == 0
    body = _lzma2(head) + mib * (zeros >> 20) + (_lzma2(tail) if tail else b"") + b"\0"
    # Block header: size ((8 + 4) / 4 - 1), flags (one filter, no sizes), LZMA2 (0x21) with one
    # property byte (0x16: 8 MiB dictionary), padding to 8 bytes, then its CRC32.
    header = bytes([0x02, 0x00, 0x21, 0x01, 0x16, 0x00, 0x00, 0x00])
    header += struct.pack("<I", zlib.crc32(header))
    flags = b"\x00\x00"  # check: none
    stream_header = b"\xfd7zXZ\x00" + flags + struct.pack("<I", zlib.crc32(flags))
    block = header + body + bytes(-len(body) % 4)
    unpadded = len(header) + len(body)
    index = b"\x00\x01" + encode_varint(unpadded) + encode_varint(len(head) + zeros + len(tail))
    index += bytes(-len(index) % 4)
    index += struct.pack("<I", zlib.crc32(index))
    backward = struct.pack("<I", len(index) // 4 - 1) + flags
    footer = struct.pack("<I", zlib.crc32(backward)) + backward + b"YZ"
    return stream_header + block + index + footer
