"""Modules on disk: compressed and signed forms of the corpus kheaders.ko and configs.ko."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kheaders_pkg.errors import ELFError, KernelDataError
from kheaders_pkg.kernel.kmod import (
    MODULE_SIG_STRING,
    MODULE_SUFFIXES,
    config_from_module,
    find_module,
    kheaders_archive_from_module,
    read_module,
    strip_signature,
)
from tests.conftest import corpus_kernel

DEBIAN = ("debian-6.1.0-56-amd64", "debian-6.12.107+deb13-amd64")
WITH_KHEADERS_KO = (*DEBIAN, "kh-6.1.192-kh-a-mod")


def signed(data: bytes, sig_len: int = 455, *, header: bytes | None = None) -> bytes:
    """`data` with a module signature appended as scripts/sign-file lays it out: the PKCS#7
    blob, struct module_signature (id_type 2 = PKEY_ID_PKCS7, sig_len big-endian), the magic."""
    if header is None:
        header = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + struct.pack(">I", sig_len)
    return data + b"\x30\x82" + b"\xa5" * (sig_len - 2) + header + MODULE_SIG_STRING


def run(argv: list[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, stdout=subprocess.PIPE, check=True).stdout


# The compressions kmod applies at install time, through the same tools.
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "": lambda data: data,
    ".xz": lambda data: run(["xz", "--check=crc32", "-0", "-T1", "-c"], data),
    ".zst": lambda data: run(["zstd", "-q", "-c"], data),
    ".gz": lambda data: run(["gzip", "-n", "-c"], data),
}
# Each suffix unsigned, and signed both plain and compressed (xz is the slow one: once per module).
VARIANTS = [*((suffix, False) for suffix in MODULE_SUFFIXES), ("", True), (".zst", True)]


def variant_id(suffix: str, sign: bool) -> str:
    return f"ko{suffix}" + ("-signed" if sign else "")


@pytest.fixture(scope="module")
def module_files(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str, str, bool], Path]:
    """Every corpus kheaders.ko/configs.ko in every suffix, unsigned and signed (signed first,
    compressed after, as kbuild's modules_install does)."""
    files = {}
    for name in WITH_KHEADERS_KO:
        for module in ("kheaders", "configs"):
            source = corpus_kernel(name).modules / f"{module}.ko"
            if not source.exists():
                continue
            for suffix, sign in VARIANTS:
                directory = tmp_path_factory.mktemp(f"{name}-{variant_id(suffix, sign)}")
                data = source.read_bytes()
                path = directory / f"{module}.ko{suffix}"
                path.write_bytes(COMPRESSORS[suffix](signed(data) if sign else data))
                files[name, module, suffix, sign] = path
    return files


@pytest.mark.parametrize(("suffix", "sign"), VARIANTS, ids=[variant_id(*v) for v in VARIANTS])
@pytest.mark.parametrize("name", WITH_KHEADERS_KO)
def test_archive_from_module_equals_the_sysfs_archive(
    module_files: dict[tuple[str, str, str, bool], Path], name: str, suffix: str, sign: bool
) -> None:
    kernel = corpus_kernel(name)
    archive = kheaders_archive_from_module(module_files[name, "kheaders", suffix, sign])
    if kernel.archive.exists():
        assert archive == kernel.archive.read_bytes()
    # -a-mod has no sysfs archive until the module is loaded: expected.json has its digest.
    assert hashlib.sha256(archive).hexdigest() == kernel.expected["kheaders_tar_xz_sha256"]


@pytest.mark.parametrize(("suffix", "sign"), VARIANTS, ids=[variant_id(*v) for v in VARIANTS])
@pytest.mark.parametrize("name", DEBIAN)
def test_config_from_configs_module_hashes_to_the_build_config(
    module_files: dict[tuple[str, str, str, bool], Path], name: str, suffix: str, sign: bool
) -> None:
    config = config_from_module(module_files[name, "configs", suffix, sign])
    assert hashlib.sha256(config).hexdigest() == corpus_kernel(name).expected["config_sha256"]
    assert config.startswith(b"#\n# Automatically generated file; DO NOT EDIT.\n")


@pytest.mark.parametrize("name", DEBIAN)
def test_config_from_module_equals_proc_config_gz(name: str) -> None:
    kernel = corpus_kernel(name)
    proc = gzip.decompress((kernel.sysroot / "proc/config.gz").read_bytes())
    assert config_from_module(kernel.modules / "configs.ko") == proc


def test_compression_is_told_by_magic_not_by_suffix(
    module_files: dict[tuple[str, str, str, bool], Path], tmp_path: Path
) -> None:
    zst = module_files["kh-6.1.192-kh-a-mod", "kheaders", ".zst", True]
    misnamed = tmp_path / "kheaders.ko.gz"
    shutil.copyfile(zst, misnamed)
    plain = (corpus_kernel("kh-6.1.192-kh-a-mod").modules / "kheaders.ko").read_bytes()
    assert read_module(misnamed) == plain


def test_signature_is_stripped_to_the_original_elf() -> None:
    plain = (corpus_kernel("debian-6.1.0-56-amd64").modules / "configs.ko").read_bytes()
    assert strip_signature(signed(plain)) == plain
    assert strip_signature(plain) == plain


def _header(**fields: int) -> bytes:
    values = {"algo": 0, "hash": 0, "id_type": 2, "signer_len": 0, "key_id_len": 0, "pad": 0}
    values.update(fields)
    sig_len = fields.get("sig_len", 455)
    return (
        bytes([values[k] for k in ("algo", "hash", "id_type", "signer_len", "key_id_len")])
        + bytes([values["pad"], 0, 0])
        + struct.pack(">I", sig_len)
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\0" * 8 + MODULE_SIG_STRING, "without its header", id="no-header"),
        pytest.param(signed(b"\x7fELF", header=_header(id_type=1)), "id type 1", id="pgp"),
        pytest.param(signed(b"\x7fELF", header=_header(algo=4)), "non-zero", id="algo-set"),
        pytest.param(signed(b"\x7fELF", header=_header(pad=1)), "non-zero", id="pad-set"),
        pytest.param(
            signed(b"\x7fELF", header=_header(sig_len=1 << 30)), "length", id="sig-len-huge"
        ),
        pytest.param(signed(b"\x7fELF", header=_header(sig_len=0)), "length 0", id="sig-len-0"),
    ],
)
def test_malformed_signature_raises_kernel_data_error(data: bytes, message: str) -> None:
    with pytest.raises(KernelDataError, match=message):
        strip_signature(data)


def test_find_module_prefers_the_uncompressed_file(tmp_path: Path) -> None:
    for suffix in reversed(MODULE_SUFFIXES):
        (tmp_path / f"kheaders.ko{suffix}").write_bytes(b"")
        assert find_module(tmp_path, "kheaders") == tmp_path / f"kheaders.ko{suffix}"
    assert find_module(tmp_path, "configs") is None


@pytest.mark.parametrize("name", ["", "../kheaders", ".", ".."])
def test_find_module_refuses_a_path_for_a_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(KernelDataError, match="invalid module name"):
        find_module(tmp_path, name)


def test_find_module_ignores_a_directory(tmp_path: Path) -> None:
    (tmp_path / "kheaders.ko").mkdir()
    (tmp_path / "kheaders.ko.zst").write_bytes(b"")
    assert find_module(tmp_path, "kheaders") == tmp_path / "kheaders.ko.zst"


KO = (corpus_kernel("debian-6.1.0-56-amd64").modules / "configs.ko").read_bytes()
KO_XZ = lzma.compress(KO, check=lzma.CHECK_CRC32, preset=0)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        pytest.param(b"", ELFError, "not an ELF", id="empty"),
        pytest.param(b"obj-m += kheaders.o\n", ELFError, "not an ELF", id="text"),
        pytest.param(gzip.compress(b"hello"), ELFError, "not an ELF", id="gzip-of-text"),
        pytest.param(KO_XZ[:-100], KernelDataError, "truncated", id="xz-truncated"),
        pytest.param(KO_XZ + b"junk", KernelDataError, "bytes after", id="xz-junk"),
        pytest.param(b"\xfd7zXZ\x00" + bytes(64), KernelDataError, "corrupt", id="xz-garbage"),
        pytest.param(b"\x1f\x8b" + bytes(64), KernelDataError, "corrupt", id="gzip-garbage"),
        pytest.param(
            run(["zstd", "-q", "-c"], KO)[:-100], KernelDataError, "zstd", id="zstd-truncated"
        ),
    ],
)
def test_unreadable_module_raises(
    tmp_path: Path, data: bytes, error: type[Exception], message: str
) -> None:
    path = tmp_path / "configs.ko"
    path.write_bytes(data)
    with pytest.raises(error, match=message):
        read_module(path)


def test_zero_padding_after_a_compressed_module_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "configs.ko.xz"
    path.write_bytes(KO_XZ + bytes(8))
    assert read_module(path) == KO


def test_missing_module_raises_kernel_data_error(tmp_path: Path) -> None:
    with pytest.raises(KernelDataError, match="cannot read module"):
        read_module(tmp_path / "kheaders.ko")


def test_kheaders_symbols_missing_from_configs_module_raise_elf_error() -> None:
    configs = corpus_kernel("debian-6.1.0-56-amd64").modules / "configs.ko"
    with pytest.raises(ELFError, match="symbol kernel_headers_data not found"):
        kheaders_archive_from_module(configs)


def test_kheaders_module_has_no_config() -> None:
    ko = corpus_kernel("kh-6.1.192-kh-a-mod").modules / "kheaders.ko"
    with pytest.raises(KernelDataError, match="no IKCFG_ST"):
        config_from_module(ko)


def test_config_without_end_marker_is_refused(tmp_path: Path) -> None:
    data = (corpus_kernel("debian-6.12.107+deb13-amd64").modules / "configs.ko").read_bytes()
    assert data.count(b"IKCFG_ED") == 1
    path = tmp_path / "configs.ko"
    path.write_bytes(data.replace(b"IKCFG_ED", b"IKCFG_XX"))
    with pytest.raises(KernelDataError, match="no IKCFG_ED marker"):
        config_from_module(path)
