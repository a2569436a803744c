"""bzImage -> payload -> vmlinux -> build id, against every corpus vmlinuz, and broken images."""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
import struct
from pathlib import Path

import pytest

from kheaders_pkg.errors import ImageError, KernelDataError
from kheaders_pkg.kernel.decompress import decompress
from kheaders_pkg.kernel.image import (
    Compression,
    build_id_from_image,
    payload_of_bzimage,
    vmlinux_of_bzimage,
)
from tests.conftest import CorpusKernel, corpus_kernel

# The self-built kh-* kernels use the x86 default, xz; expected.json names the Debian ones.
KH_COMPRESSION = "xz"


def expected_compression(kernel: CorpusKernel) -> Compression:
    return Compression(kernel.expected.get("vmlinuz_compression", KH_COMPRESSION))


def payload_span(data: bytes) -> tuple[int, int]:
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    return (setup_sects + 1) * 512 + offset, length


def bzimage(payload: bytes, *, setup_sects: int = 4, version: int = 0x020F) -> bytes:
    """A minimal bzImage setup header around `payload` (boot protocol fields only)."""
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, version)
    struct.pack_into("<II", image, 0x248, 0, len(payload))
    return bytes(image) + payload


def size_appended(stream: bytes, size: int) -> bytes:
    return stream + struct.pack("<I", size)


# A header-only ELF64: valid, no sections, no segments, hence no notes.
BARE_ELF = (
    b"\x7fELF\x02\x01\x01"
    + b"\0" * 9
    + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0)
)


def test_build_id_of_vmlinuz_matches_expected(kernel: CorpusKernel) -> None:
    assert build_id_from_image(kernel.vmlinuz) == kernel.expected["build_id"]


def test_payload_compression_is_detected_by_magic(kernel: CorpusKernel) -> None:
    kind, payload = payload_of_bzimage(kernel.vmlinuz.read_bytes())
    assert kind is expected_compression(kernel)


@pytest.mark.parametrize("name", ["debian-6.1.0-56-amd64", "debian-6.12.107+deb13-amd64"])
def test_size_appended_to_the_payload_is_checked(name: str) -> None:
    data = bytearray(corpus_kernel(name).vmlinuz.read_bytes())
    start, length = payload_span(bytes(data))
    # The last 4 payload bytes are the vmlinux size (size_append); a wrong value is refused.
    data[start + length - 1] ^= 0xFF
    with pytest.raises(ImageError, match="unexpected bytes after the"):
        vmlinux_of_bzimage(bytes(data))


@pytest.mark.parametrize("name", ["kh-6.1.192-kh-a-mod", "debian-6.12.107+deb13-amd64"])
def test_payload_cut_short_raises_image_error(name: str) -> None:
    data = bytearray(corpus_kernel(name).vmlinuz.read_bytes())
    start, length = payload_span(bytes(data))
    struct.pack_into("<I", data, 0x24C, length // 2)
    with pytest.raises(ImageError, match="truncated"):
        vmlinux_of_bzimage(bytes(data))


@pytest.mark.parametrize("name", ["kh-6.1.192-kh-a-mod", "debian-6.12.107+deb13-amd64"])
def test_corrupt_payload_raises_image_error(name: str) -> None:
    data = bytearray(corpus_kernel(name).vmlinuz.read_bytes())
    start, length = payload_span(bytes(data))
    for i in range(start + length // 2, start + length // 2 + 64):
        data[i] ^= 0x55
    with pytest.raises(ImageError, match="corrupt|truncated"):
        vmlinux_of_bzimage(bytes(data))


@pytest.mark.parametrize("name", ["kh-6.1.192-kh-a-mod", "debian-6.12.107+deb13-amd64"])
def test_decompression_over_the_limit_is_refused(name: str) -> None:
    kind, payload = payload_of_bzimage(corpus_kernel(name).vmlinuz.read_bytes())
    with pytest.raises(ImageError, match="more than 1000000 bytes"):
        decompress(payload, kind, limit=1_000_000, error=ImageError)


def test_missing_zstd_command_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kernel = corpus_kernel("debian-6.12.107+deb13-amd64")
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without zstd
    with pytest.raises(ImageError, match="zstd: command not found"):
        build_id_from_image(kernel.vmlinuz)


STDLIB_STREAMS = [
    (gzip.compress(BARE_ELF * 50, mtime=0), Compression.GZIP),
    (bz2.compress(BARE_ELF * 50), Compression.BZIP2),
    (lzma.compress(BARE_ELF * 50, lzma.FORMAT_ALONE), Compression.LZMA),
    (lzma.compress(BARE_ELF * 50, check=lzma.CHECK_CRC32), Compression.XZ),
]


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        *[pytest.param(s, k, id=f"{k}") for s, k in STDLIB_STREAMS],
        *[
            pytest.param(size_appended(s, len(BARE_ELF) * 50), k, id=f"{k}-size-appended")
            for s, k in STDLIB_STREAMS
        ],
        pytest.param(BARE_ELF * 50, Compression.NONE, id="uncompressed"),
    ],
)
def test_every_stdlib_compression_yields_the_vmlinux(payload: bytes, kind: Compression) -> None:
    image = bzimage(payload)
    assert payload_of_bzimage(image) == (kind, payload)
    assert vmlinux_of_bzimage(image) == BARE_ELF * 50


def test_image_without_build_id_note_gives_none(tmp_path: Path) -> None:
    path = tmp_path / "vmlinuz"
    path.write_bytes(bzimage(size_appended(gzip.compress(BARE_ELF), len(BARE_ELF))))
    assert build_id_from_image(path) is None


def test_setup_sects_zero_means_four() -> None:
    image = bytearray(bzimage(gzip.compress(BARE_ELF), setup_sects=4))
    image[0x1F1] = 0
    assert vmlinux_of_bzimage(bytes(image)) == BARE_ELF


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


GOOD = bzimage(gzip.compress(BARE_ELF))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "not a bzImage", id="empty"),
        pytest.param(b"\0" * 4096, "not a bzImage", id="zeros"),
        pytest.param(GOOD[:0x200], "not a bzImage", id="cut-in-header"),
        pytest.param(_with(GOOD, 0x202, b"HdrX"), "not a bzImage", id="no-hdrs"),
        pytest.param(_with(GOOD, 0x1FE, b"\0\0"), "not a bzImage", id="no-boot-flag"),
        pytest.param(_with(GOOD, 0x206, b"\x07\x02"), "2.07 has no payload", id="protocol-2.07"),
        pytest.param(GOOD[:-1], "runs past the end", id="payload-cut"),
        pytest.param(_with(GOOD, 0x248, b"\xff\xff\xff\x7f"), "runs past", id="offset-huge"),
        pytest.param(_with(GOOD, 0x24C, b"\0\0\0\0"), "empty", id="length-zero"),
        pytest.param(bzimage(b"\x02\x21\x4c\x18" + b"\0" * 32), "lz4", id="lz4"),
        pytest.param(bzimage(b"\x89LZO\x00\r\n\x1a\n" + b"\0" * 32), "lzo", id="lzo"),
        pytest.param(bzimage(b"PK\x03\x04" + b"\0" * 32), "unknown payload", id="zip"),
        pytest.param(bzimage(gzip.compress(b"not an ELF file")), "not an ELF", id="not-elf"),
        pytest.param(bzimage(gzip.compress(BARE_ELF)[:-10]), "truncated", id="gzip-truncated"),
        pytest.param(bzimage(gzip.compress(BARE_ELF) + b"junk"), "unexpected", id="junk-after"),
        pytest.param(bzimage(b"\x1f\x8b" + bytes(40)), "corrupt", id="gzip-garbage"),
        pytest.param(bzimage(b"\xfd7zXZ\x00" + bytes(40)), "corrupt", id="xz-garbage"),
        pytest.param(bzimage(b"\x28\xb5\x2f\xfd" + bytes(40)), "zstd", id="zstd-garbage"),
    ],
)
def test_broken_image_raises_image_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        vmlinux_of_bzimage(data)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_not_an_image(seed: int) -> None:
    with pytest.raises(ImageError):
        vmlinux_of_bzimage(random.Random(seed).randbytes(8192))


def test_module_is_not_an_image(tmp_path: Path) -> None:
    ko = corpus_kernel("kh-6.1.192-kh-a-mod").modules / "kheaders.ko"
    with pytest.raises(ImageError, match="not a kernel image"):
        build_id_from_image(ko)


def test_unreadable_image_raises_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read kernel image"):
        build_id_from_image(tmp_path / "missing")


def test_decompression_errors_are_kernel_data_errors() -> None:
    # Callers that do not pass `error` still get an error of our hierarchy.
    with pytest.raises(KernelDataError, match="xz data is corrupt"):
        decompress(b"\xfd7zXZ\x00" + bytes(40), Compression.XZ)
