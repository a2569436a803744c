"""arm64 kernel images: the corpus `Image` and the forms it is installed in, built here from it.

Debian's arm64 kernel is the plain `Image` (EFI-stub PE header). The signed form is made with
the real `sbsign` (and, for hostile variants, by appending an Authenticode record by hand the way
sbsign lays it out); `Image.gz` with gzip; the EFI zboot wrapper is **built here** per the
kernel's drivers/firmware/efi/libstub/zboot-header.S (no distro zboot image is in the corpus).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import random
import struct
import subprocess
from pathlib import Path

import pytest

from kheaders_pkg.errors import ExitCode, ImageError
from kheaders_pkg.kernel import arm64, pe
from kheaders_pkg.kernel.image import (
    ImageFormat,
    build_id_from_image,
    build_id_of,
    kernel_image,
    read_kernel_image,
)
from kheaders_pkg.kernel.notes import parse_notes
from tests.conftest import CorpusKernel, corpus_kernel

ARM64 = "debian-6.1.0-56-arm64"

# Offsets in the EFI-stub PE header of the corpus Image (PE header at 0x40, PE32+): the optional
# header at 0x58, its six data directories from 0xc8; directory 4 is the certificate table.
CERT_DIRECTORY = 0xC8 + 8 * 4
OFF_IMAGE_SIZE = 16
OFF_FLAGS = 24
PAGE = 4096


@pytest.fixture(scope="module")
def corpus() -> CorpusKernel:
    return corpus_kernel(ARM64)


@pytest.fixture(scope="module")
def image(corpus: CorpusKernel) -> bytes:
    return corpus.vmlinuz.read_bytes()


@pytest.fixture(scope="module")
def sysfs_notes(corpus: CorpusKernel) -> bytes:
    return (corpus.sysroot / "sys/kernel/notes").read_bytes()


def expected_build_id(corpus: CorpusKernel) -> str:
    return str(corpus.expected["build_id"])


# --- building the forms ------------------------------------------------------------------------


def der_blob(size: int = 1400, payload: bytes = b"") -> bytes:
    """Bytes that start like a DER SEQUENCE, as a PKCS#7 SignedData does (content arbitrary)."""
    body = payload + random.Random(size).randbytes(size - len(payload))
    return b"\x30\x82" + struct.pack(">H", len(body)) + body


def appended_signature(
    data: bytes,
    blob: bytes,
    *,
    revision: int = 0x0200,
    cert_type: int = pe.WIN_CERT_TYPE_PKCS_SIGNED_DATA,
    offset: int | None = None,
    length: int | None = None,
) -> bytes:
    """`data` signed the way sbsign appends it: the image padded to 8 bytes, one WIN_CERTIFICATE
    record (dwLength, wRevision, wCertificateType, the PKCS#7 blob) padded to 8 bytes, and data
    directory 4 pointing at it by file offset."""
    padded = data + bytes(-len(data) % 8)
    record = struct.pack("<IHH", 8 + len(blob), revision, cert_type) + blob
    record += bytes(-len(record) % 8)
    out = bytearray(padded + record)
    struct.pack_into(
        "<II",
        out,
        CERT_DIRECTORY,
        len(padded) if offset is None else offset,
        len(record) if length is None else length,
    )
    return bytes(out)


ZBOOT_PE_OFFSET = 0x40


def zboot(image: bytes, name: str) -> bytes:
    """An EFI zboot image around `image`, built per zboot-header.S and Makefile.zboot: the Image
    padded to its image_size, compressed; the DOS header "MZ\\0\\0" "zimg", payload offset and
    size, the compression name at 0x18, LINUX_PE_MAGIC at 0x38, the PE header offset at 0x3c;
    a PE32+ header with one section over the payload. Only gzip counts its own size trailer in
    the payload size: the others have a 4-byte size appended after the payload."""
    image_size = struct.unpack_from("<Q", image, OFF_IMAGE_SIZE)[0]
    padded = image + bytes(image_size - len(image))
    if name == "gzip":
        payload, appended = gzip.compress(padded, compresslevel=1, mtime=0), b""
    elif name == "xzkern":
        payload = lzma.compress(padded, check=lzma.CHECK_CRC32, preset=0)
        appended = struct.pack("<I", len(padded))
    elif name == "zstd22":
        payload = subprocess.run(
            ["zstd", "-1", "-q", "-c"], input=padded, capture_output=True, check=True
        ).stdout
        appended = struct.pack("<I", len(padded))
    else:
        raise ValueError(name)
    directories = 6
    optional = bytearray(108 + 4 + 8 * directories)
    struct.pack_into("<H", optional, 0, 0x20B)  # PE32+
    struct.pack_into("<I", optional, 108, directories)
    headers_end = ZBOOT_PE_OFFSET + 4 + 20 + len(optional) + 40
    payload_offset = (headers_end + 0x1FF) & ~0x1FF
    section = struct.pack(
        "<8sIIIIIIHHI",
        b".data",
        len(payload),
        payload_offset,
        len(payload) + len(appended),
        payload_offset,
        0, 0, 0, 0, 0xC0000040,
    )  # fmt: skip
    coff = struct.pack("<HHIIIHH", 0xAA64, 1, 0, 0, 0, len(optional), 0x206)
    dos = bytearray(ZBOOT_PE_OFFSET)
    dos[0:8] = b"MZ\0\0zimg"
    struct.pack_into("<II", dos, 8, payload_offset, len(payload))
    dos[0x18 : 0x18 + len(name) + 1] = name.encode() + b"\0"
    struct.pack_into("<II", dos, 0x38, arm64.LINUX_PE_MAGIC, ZBOOT_PE_OFFSET)
    headers = bytes(dos) + b"PE\0\0" + coff + bytes(optional) + section
    return headers + bytes(payload_offset - len(headers)) + payload + appended


@pytest.fixture(scope="module")
def image_gz(image: bytes) -> bytes:
    return gzip.compress(image, compresslevel=1, mtime=0)


@pytest.fixture(scope="module")
def zboot_gzip(image: bytes) -> bytes:
    return zboot(image, "gzip")


@pytest.fixture(scope="module")
def sbsigned(image: bytes, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The corpus Image signed for real by sbsign with a throwaway key."""
    work = tmp_path_factory.mktemp("sbsign")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kh-test",
         "-days", "1", "-keyout", work / "key.pem", "-out", work / "cert.pem"],
        check=True, capture_output=True,
    )  # fmt: skip
    (work / "Image").write_bytes(image)
    subprocess.run(
        ["sbsign", "--key", work / "key.pem", "--cert", work / "cert.pem",
         "--output", work / "Image.signed", work / "Image"],
        check=True, capture_output=True,
    )  # fmt: skip
    return (work / "Image.signed").read_bytes()


# --- the kernel's notes ------------------------------------------------------------------------


def test_kernel_notes_in_the_image_equal_sys_kernel_notes(
    corpus: CorpusKernel, image: bytes, sysfs_notes: bytes
) -> None:
    found = arm64.kernel_notes(image)
    assert found.blob == sysfs_notes
    assert found.offset == corpus.expected["notes_offset_in_vmlinuz"]
    assert hashlib.sha256(found.blob).hexdigest() == corpus.expected["notes_sha256"]
    assert [[n.name, n.type] for n in found.notes] == corpus.expected["notes_names"]
    assert found.build_id == expected_build_id(corpus)


def test_the_vdsos_build_id_notes_are_not_taken_for_the_kernels(
    corpus: CorpusKernel, image: bytes
) -> None:
    # The Image holds three GNU build-id notes: the 64-bit vDSO's, the compat vDSO's, the
    # kernel's; the vDSOs' come first, so "the first GNU note" would be wrong.
    candidates = arm64._build_id_candidates(image, "little")
    assert len(candidates) == 3
    assert candidates[-1] == corpus.expected["notes_offset_in_vmlinuz"]
    vdso_ids = {parse_notes(image[at : at + 36])[0].desc.hex() for at in candidates[:2]}
    assert expected_build_id(corpus) not in vdso_ids and len(vdso_ids) == 2
    assert [arm64._in_vdso_notes(image, at, "little") for at in candidates] == [True, True, False]


def test_a_vdso_whose_elf_header_is_gone_makes_the_notes_ambiguous(image: bytes) -> None:
    # Without its ELF header a vDSO's notes are indistinguishable from the kernel's: refused,
    # never guessed between.
    vdso = arm64._build_id_candidates(image, "little")[0]
    page = vdso - vdso % PAGE
    broken = image[:page] + b"\0\0\0\0" + image[page + 4 :]
    with pytest.raises(ImageError, match="2 GNU build-id notes outside the vDSOs"):
        arm64.kernel_notes(broken)


def test_a_second_copy_of_the_kernel_notes_is_refused(image: bytes, sysfs_notes: bytes) -> None:
    at = 0x20000  # somewhere in .text, far from the vDSOs
    planted = image[:at] + sysfs_notes + image[at + len(sysfs_notes) :]
    with pytest.raises(ImageError, match="cannot tell which is the kernel's"):
        arm64.kernel_notes(planted)


def test_an_image_without_the_kernels_build_id_note_is_an_error(
    corpus: CorpusKernel, image: bytes
) -> None:
    at = int(corpus.expected["notes_offset_in_vmlinuz"])
    erased = image[:at] + bytes(36) + image[at + 36 :]
    with pytest.raises(ImageError, match="no GNU build-id note outside the vDSOs"):
        arm64.kernel_notes(erased)


# --- every installed form gives the build id ---------------------------------------------------


def test_plain_image_gives_the_build_id(corpus: CorpusKernel) -> None:
    found = read_kernel_image(corpus.vmlinuz)
    assert (found.format, found.signed) == (ImageFormat.ARM64_IMAGE, False)
    assert build_id_from_image(corpus.vmlinuz) == expected_build_id(corpus)


@pytest.mark.integration
def test_image_signed_by_sbsign_gives_the_build_id(
    corpus: CorpusKernel, image: bytes, sbsigned: bytes, sysfs_notes: bytes
) -> None:
    assert len(sbsigned) > len(image)
    found = kernel_image(sbsigned)
    assert (found.format, found.signed) == (ImageFormat.ARM64_IMAGE, True)
    assert len(found.kernel) == len(image)  # the signature is not part of the kernel
    assert arm64.kernel_notes(found.kernel).blob == sysfs_notes
    assert build_id_of(found) == expected_build_id(corpus)


def test_image_with_an_appended_authenticode_record_gives_the_build_id(
    corpus: CorpusKernel, image: bytes, sysfs_notes: bytes
) -> None:
    # A signature that itself carries a copy of the kernel's notes: once stripped, it cannot
    # make the notes ambiguous.
    signed = appended_signature(image, der_blob(payload=b"\0" * 8 + sysfs_notes))
    found = kernel_image(signed)
    assert found.signed and len(found.kernel) == len(image)
    assert build_id_of(found) == expected_build_id(corpus)


def test_image_gz_gives_the_build_id(
    corpus: CorpusKernel, image: bytes, image_gz: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "Image.gz"
    path.write_bytes(image_gz)
    found = read_kernel_image(path)
    assert found.format is ImageFormat.ARM64_IMAGE_GZ and found.kernel == image
    assert build_id_from_image(path) == expected_build_id(corpus)


@pytest.mark.parametrize("name", ["gzip", "zstd22"])
def test_efi_zboot_built_here_gives_the_build_id(
    corpus: CorpusKernel, image: bytes, name: str, tmp_path: Path
) -> None:
    path = tmp_path / "vmlinuz.efi"
    path.write_bytes(zboot(image, name))
    found = read_kernel_image(path)
    assert found.format is ImageFormat.ARM64_ZBOOT and not found.signed
    assert found.kernel.startswith(image) and not any(found.kernel[len(image) :])
    assert build_id_from_image(path) == expected_build_id(corpus)


def test_signed_efi_zboot_gives_the_build_id(corpus: CorpusKernel, zboot_gzip: bytes) -> None:
    # The zboot header built here has its PE header at 0x40 too, so directory 4 sits at the
    # same offset as in the Image.
    assert pe.parse_pe(zboot_gzip).certificates is None
    found = kernel_image(appended_signature(zboot_gzip, der_blob()))
    assert found.format is ImageFormat.ARM64_ZBOOT and found.signed
    assert build_id_of(found) == expected_build_id(corpus)


# --- broken and hostile images: one clear error, exit 7 ----------------------------------------


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def test_image_errors_are_bad_kernel_exit_code() -> None:
    assert ImageError("x").exit_code is ExitCode.BAD_KERNEL


@pytest.mark.parametrize("cut", [0, 60, 64, 0x100, 0x200, 18548476 + 20, -1])
def test_truncated_image_is_refused(image: bytes, cut: int) -> None:
    with pytest.raises(ImageError):
        kernel_image(image[:cut])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(lambda d: _with(d, 0x3C, b"\xff\xff\xff\x7f"), "no PE header", id="pe-offset"),
        pytest.param(lambda d: _with(d, 0x46, b"\0\0"), "0 sections", id="no-sections"),
        pytest.param(lambda d: _with(d, 0x46, b"\xff\xff"), "65535 sections", id="many-sections"),
        pytest.param(lambda d: _with(d, 0x58, b"\x0b\x03"), "unknown magic", id="opt-magic"),
        pytest.param(lambda d: _with(d, 0xC4, b"\xff\0\0\0"), "255 data dir", id="directories"),
        pytest.param(
            lambda d: _with(d, 0xF8 + 16, b"\xff\xff\xff\x0f"), "runs past", id="section-size"
        ),
        pytest.param(
            lambda d: _with(d, OFF_IMAGE_SIZE, struct.pack("<Q", 1 << 20)),
            "less than the",
            id="image-size",
        ),
    ],
)
def test_corrupt_image_header_is_refused(image: bytes, change: object, message: str) -> None:
    assert callable(change)
    with pytest.raises(ImageError, match=message):
        kernel_image(change(image))


def test_big_endian_flag_on_a_little_endian_image_finds_no_notes(image: bytes) -> None:
    flags = struct.unpack_from("<Q", image, OFF_FLAGS)[0] | 1
    with pytest.raises(ImageError, match="no GNU build-id note"):
        build_id_of(kernel_image(_with(image, OFF_FLAGS, struct.pack("<Q", flags))))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"cert_type": 1}, "not an Authenticode", id="x509-type"),
        pytest.param({"revision": 0x0300}, "not an Authenticode", id="revision"),
        pytest.param({"offset": 4096}, "not appended after", id="table-inside-image"),
        pytest.param({"length": 8}, "not appended after", id="table-short"),
        pytest.param({"length": 1 << 20}, "not appended after", id="table-past-end"),
    ],
)
def test_malformed_signature_is_refused(image: bytes, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ImageError, match=message):
        kernel_image(appended_signature(image, der_blob(), **kwargs))


def test_signature_that_is_not_der_is_refused(image: bytes) -> None:
    with pytest.raises(ImageError, match="not DER"):
        kernel_image(appended_signature(image, b"\x01" * 64))


def test_signature_record_longer_than_its_table_is_refused(image: bytes) -> None:
    signed = bytearray(appended_signature(image, der_blob()))
    struct.pack_into("<I", signed, len(image), 1 << 20)  # dwLength of the record
    with pytest.raises(ImageError, match="does not fit the table"):
        kernel_image(bytes(signed))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(lambda d: _with(d, 0x38, b"ARMd"), "LINUX_PE_MAGIC", id="pe-magic"),
        pytest.param(lambda d: _with(d, 0x18, b"brotli\0"), "unknown", id="compression"),
        pytest.param(lambda d: _with(d, 0x18, b"lz4\0"), "not supported", id="lz4"),
        pytest.param(lambda d: _with(d, 8, b"\xff\xff\xff\x0f"), "outside", id="offset"),
        pytest.param(lambda d: _with(d, 12, b"\0\0\0\0"), "empty", id="size-zero"),
        pytest.param(lambda d: _with(d, 12, b"\x00\x10\0\0"), "truncated", id="size-short"),
        pytest.param(lambda d: d[: len(d) // 2], "runs past|outside", id="file-cut"),
        pytest.param(
            lambda d: _with(d, len(d) // 2, b"\x55" * 64), "corrupt|truncated", id="corrupt"
        ),
    ],
)
def test_broken_zboot_is_refused(zboot_gzip: bytes, change: object, message: str) -> None:
    assert callable(change)
    with pytest.raises(ImageError, match=message):
        kernel_image(change(zboot_gzip))


def test_zboot_whose_payload_is_not_an_image_is_refused(image: bytes) -> None:
    not_image = _with(image, 0x38, b"\0\0\0\0")  # not an arm64 Image any more
    wrapped = zboot(not_image[:0x40] + struct.pack("<Q", 0) + not_image[0x48:], "gzip")
    with pytest.raises(ImageError, match="not an arm64 Image"):
        kernel_image(wrapped)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(gzip.compress(b"hello" * 100), "not an arm64 Image", id="gzip-of-text"),
        pytest.param(gzip.compress(b"x" * 100)[:-6], "truncated", id="gzip-truncated"),
        pytest.param(b"", "not a kernel image", id="empty"),
        pytest.param(b"\0" * 8192, "not a kernel image", id="zeros"),
        pytest.param(random.Random(1).randbytes(8192), "not a kernel image", id="random"),
    ],
)
def test_not_an_image_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        kernel_image(data)


def test_gzip_with_junk_after_the_image_is_refused(image_gz: bytes) -> None:
    with pytest.raises(ImageError, match="unexpected bytes after"):
        kernel_image(image_gz + b"junk")


def test_arm64_module_is_not_an_image(corpus: CorpusKernel) -> None:
    with pytest.raises(ImageError, match="not a kernel image"):
        build_id_from_image(corpus.modules / "configs.ko")


@pytest.mark.parametrize("seed", range(4))
def test_random_damage_inside_the_notes_area_is_never_a_wrong_build_id(
    corpus: CorpusKernel, image: bytes, seed: int
) -> None:
    # Flip bytes in and around the kernel's notes: the result is the right id or an error.
    rng = random.Random(seed)
    at = int(corpus.expected["notes_offset_in_vmlinuz"])
    damaged = bytearray(image)
    for _ in range(4):
        damaged[at + rng.randrange(-16, 112)] ^= 1 << rng.randrange(8)
    try:
        found = build_id_of(kernel_image(bytes(damaged)))
    except ImageError:
        return
    wanted = expected_build_id(corpus)
    if found != wanted:  # only a flip inside the descriptor itself changes the id
        assert len(found or "") == len(wanted)
        assert damaged[at + 16 : at + 36] != image[at + 16 : at + 36]
