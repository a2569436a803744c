"""archive/xz.py: the digest of what was read, the byte ceiling, and the multi-block path."""

from __future__ import annotations

import io
import lzma
import os
import struct

import pytest

from kheaders_pkg.archive.xz import Decompressed
from kheaders_pkg.errors import ArchiveError
from tests.archive_util import archive, as_multi_block, regular, tar_bytes, zeros_bomb
from tests.conftest import KERNELS_WITH_ARCHIVE, corpus_kernel

_NO_CEILING = 1 << 40


@pytest.mark.parametrize("name", KERNELS_WITH_ARCHIVE)
def test_archive_digest_is_the_sha256_of_the_compressed_file(name: str) -> None:
    kernel = corpus_kernel(name)
    with open(kernel.archive, "rb", buffering=0) as f, Decompressed(f, _NO_CEILING) as chunks:
        decoded = sum(len(chunk) for chunk in chunks)
    assert decoded > 0
    assert chunks.meter.sha256.hexdigest() == kernel.expected["kheaders_tar_xz_sha256"]
    assert chunks.meter.size == kernel.archive.stat().st_size


def test_the_zeros_bomb_builder_makes_valid_xz() -> None:
    data = zeros_bomb(b"head", 2 << 20, b"tail")
    assert lzma.decompress(data) == b"head" + bytes(2 << 20) + b"tail"


def test_the_multi_block_recompression_really_makes_several_blocks() -> None:
    data = as_multi_block(
        archive([regular(f"./include/f{i}.h", os.urandom(3000)) for i in range(9)])
    )
    assert data is not None
    # The index (before the 12-byte footer): indicator 0, then the number of records.
    backward: int = struct.unpack("<I", data[-8:-4])[0]
    index = data[len(data) - 12 - (backward + 1) * 4 :]
    assert index[0] == 0 and index[1] > 1


def test_a_zeros_bomb_fails_as_soon_as_the_ceiling_is_passed() -> None:
    """Padding after the tar end marker decompresses to 1 GiB; the ceiling is 16 MiB, and the
    decoder is stopped right after it (not after the whole gigabyte)."""
    data = zeros_bomb(tar_bytes([]), 1 << 30)
    source = _Trickle(io.BytesIO(data), 1024)

    with (
        pytest.raises(ArchiveError, match="expands to more than 16777216 bytes"),
        Decompressed(source, 16 << 20) as chunks,  # type: ignore[arg-type]
    ):
        for _ in chunks:
            pass

    # The decoder read only the compressed bytes it needed for the first ~16 MiB.
    assert source.consumed < len(data) // 4


class _Trickle(io.RawIOBase):
    """A raw stream that returns at most `step` bytes per read, and counts them."""

    def __init__(self, inner: io.BytesIO, step: int) -> None:
        self._inner = inner
        self._step = step
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._inner.readinto(memoryview(b)[: self._step])
        self.consumed += n
        return n
