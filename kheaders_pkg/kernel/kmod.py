"""Kernel modules on disk: `.ko[.xz|.zst|.gz]`, signed or not -> ELF bytes, and the data the
kheaders and configs modules carry (the headers archive, the gzip'd build config)."""

from __future__ import annotations

from pathlib import Path

from kheaders_pkg.errors import ELFError, KernelDataError
from kheaders_pkg.files import read_bounded
from kheaders_pkg.kernel.decompress import Compression, decompress, detect
from kheaders_pkg.kernel.elf import ELF_MAGIC, ELFFile

# The order kmod's depmod prefers when a module exists in several forms.
MODULE_SUFFIXES = ("", ".xz", ".zst", ".gz")

# kmod/the kernel decompress modules compressed with these (kernel/module/decompress.c).
_MODULE_COMPRESSIONS = (Compression.XZ, Compression.ZSTD, Compression.GZIP)
MAX_MODULE = 256 * 1024 * 1024  # file and decompressed size; kheaders.ko is ~4-5 MiB
MAX_CONFIG = 16 * 1024 * 1024  # a full distro .config is ~300 KiB

# include/linux/module_signature.h: the signature, then struct module_signature (12 bytes:
# algo, hash, id_type, signer_len, key_id_len, __pad[3], __be32 sig_len), then this string.
MODULE_SIG_STRING = b"~Module signature appended~\n"
_SIG_STRUCT_SIZE = 12
_PKEY_ID_PKCS7 = 2

# kernel/configs.c wraps the gzip'd config in these markers (`.ascii "IKCFG_ST"` ... "IKCFG_ED").
_IKCFG_START = b"IKCFG_ST"
_IKCFG_END = b"IKCFG_ED"
_XZ_MAGIC = b"\xfd7zXZ\x00"


def find_module(directory: Path, name: str) -> Path | None:
    """`directory/name.ko`, else its first compressed form in MODULE_SUFFIXES order, else None."""
    if not name or "/" in name or name in (".", ".."):
        raise KernelDataError(f"invalid module name {name!r}")
    for suffix in MODULE_SUFFIXES:
        candidate = directory / f"{name}.ko{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_module(path: Path) -> bytes:
    """The module's ELF bytes: decompressed (told by magic, not by suffix), signature removed."""
    data = read_bounded(path, MAX_MODULE, "module", KernelDataError)
    kind = detect(data)
    if kind in _MODULE_COMPRESSIONS:
        assert kind is not None
        result = decompress(data, kind, limit=MAX_MODULE)
        # The kernel stops at the end of the stream; we accept only zero padding after it.
        if result.trailing.strip(b"\0"):
            raise KernelDataError(
                f"module {path}: {len(result.trailing)} bytes after the {kind} data"
            )
        data = result.data
    data = strip_signature(data)
    if not data.startswith(ELF_MAGIC):
        raise ELFError(f"module {path} is not an ELF file")
    return data


def strip_signature(data: bytes) -> bytes:
    """`data` without an appended module signature; unchanged if there is none.

    Signing happens before compression, so this applies to the decompressed bytes. The checks
    are those of the kernel's mod_check_sig() (kernel/module_signature.c).
    """
    if not data.endswith(MODULE_SIG_STRING):
        return data
    end = len(data) - len(MODULE_SIG_STRING)
    if end < _SIG_STRUCT_SIZE:
        raise KernelDataError("module signature trailer without its header")
    header = data[end - _SIG_STRUCT_SIZE : end]
    algo, hash_algo, id_type, signer_len, key_id_len = header[:5]
    sig_len = int.from_bytes(header[8:12], "big")
    if id_type != _PKEY_ID_PKCS7:
        raise KernelDataError(f"module signature has id type {id_type}, not PKCS#7")
    if any((algo, hash_algo, signer_len, key_id_len)) or any(header[5:8]):
        raise KernelDataError("module signature header has non-zero fields PKCS#7 leaves unset")
    if sig_len == 0 or sig_len > end - _SIG_STRUCT_SIZE:
        raise KernelDataError(f"module signature length {sig_len} does not fit the module")
    return data[: end - _SIG_STRUCT_SIZE - sig_len]


def kheaders_archive_from_module(path: Path) -> bytes:
    """The headers archive (kheaders.tar.xz) inside kheaders.ko, byte for byte.

    kernel/kheaders_data.S places it in .rodata between kernel_headers_data and
    kernel_headers_data_end, the same bytes /sys/kernel/kheaders.tar.xz serves.
    """
    archive = ELFFile(read_module(path)).bytes_between(
        "kernel_headers_data", "kernel_headers_data_end"
    )
    if not archive.startswith(_XZ_MAGIC):
        raise KernelDataError(f"module {path}: kernel_headers_data is not an xz archive")
    return archive


def config_from_module(path: Path) -> bytes:
    """The build config text carried by configs.ko (CONFIG_IKCONFIG=m), decompressed."""
    elf = ELFFile(read_module(path))
    for section in elf.sections:
        blob = elf.contents(section)
        start = blob.find(_IKCFG_START)
        while start >= 0:
            gz = blob[start + len(_IKCFG_START) :]
            if detect(gz) is Compression.GZIP:
                result = decompress(gz, Compression.GZIP, limit=MAX_CONFIG)
                # The end marker follows the gzip member directly: anything else means the
                # bytes we decoded are not the config the kernel would serve.
                if not result.trailing.startswith(_IKCFG_END):
                    raise KernelDataError(f"module {path}: no IKCFG_ED marker after the config")
                return result.data
            start = blob.find(_IKCFG_START, start + 1)
    raise KernelDataError(f"module {path} has no IKCFG_ST config data (not configs.ko?)")
