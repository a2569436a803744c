"""Identity of the running kernel, read from each corpus kernel's real /proc and /sys files."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from kheaders_pkg.errors import KernelDataError, UnsupportedError
from kheaders_pkg.files import sha256_file
from kheaders_pkg.kernel.identity import live_facts, require_archive
from kheaders_pkg.layout import Layout
from kheaders_pkg.stamp import ArchiveSource, ConfigSource
from tests.conftest import CorpusKernel, copy_sysroot, corpus_kernel


def test_live_identity_equals_expected(kernel: CorpusKernel) -> None:
    facts = live_facts(Layout(kernel_fs=kernel.sysroot), want_btf=True)
    ident = facts.identity
    exp = kernel.expected
    assert ident.release == exp["kernelrelease"]
    assert ident.build_id == exp["build_id"]
    assert ident.config_sha256 == exp["config_sha256"]
    assert ident.config_source is ConfigSource.PROC
    assert ident.btf_sha256 == exp["btf_sha256"]
    assert ident.running
    version = (kernel.sysroot / "proc/sys/kernel/version").read_text().strip()
    assert ident.uts_version == version
    if kernel.name.endswith("-mod"):
        # CONFIG_IKHEADERS=m: no archive until the module is loaded.
        assert ident.archive is None and ident.ikheaders == "m"
    else:
        assert ident.archive is not None
        assert ident.archive.source is ArchiveSource.SYSFS
        assert ident.archive.size == exp["kheaders_tar_xz_size"]
        assert sha256_file(ident.archive.path, "archive") == exp["kheaders_tar_xz_sha256"]


def test_missing_notes_falls_back_with_a_remark(tmp_path: Path) -> None:
    kfs = copy_sysroot(corpus_kernel("kh-6.1.192-kh-a"), tmp_path / "kfs")
    (kfs / "sys/kernel/notes").unlink()
    ident = live_facts(Layout(kernel_fs=kfs)).identity
    assert ident.build_id is None
    assert any("archive digest" in r for r in ident.remarks)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x04\x00\x00\x00\x14\x00\x00\x00", b"\xff" * 40],
    ids=["empty", "truncated-header", "garbage"],
)
def test_corrupt_notes_is_a_kernel_data_error_or_no_build_id(
    tmp_path: Path, content: bytes
) -> None:
    kfs = copy_sysroot(corpus_kernel("kh-6.1.192-kh-a"), tmp_path / "kfs")
    (kfs / "sys/kernel/notes").write_bytes(content)
    try:
        ident = live_facts(Layout(kernel_fs=kfs)).identity
    except KernelDataError as e:
        assert "\n" not in str(e) and "notes" in str(e)
    else:
        assert ident.build_id is None


def test_config_gz_that_is_not_gzip_is_a_clear_error(tmp_path: Path) -> None:
    kfs = copy_sysroot(corpus_kernel("kh-6.1.192-kh-a"), tmp_path / "kfs")
    (kfs / "proc/config.gz").write_bytes(b"CONFIG_X=y\n")
    with pytest.raises(KernelDataError, match="not a gzip"):
        live_facts(Layout(kernel_fs=kfs))


def test_kernel_without_ikheaders_is_unsupported(tmp_path: Path) -> None:
    kfs = copy_sysroot(corpus_kernel("kh-6.1.192-kh-a"), tmp_path / "kfs")
    (kfs / "sys/kernel/kheaders.tar.xz").unlink()
    text = gzip.decompress((kfs / "proc/config.gz").read_bytes()).replace(
        b"CONFIG_IKHEADERS=y", b"# CONFIG_IKHEADERS is not set"
    )
    (kfs / "proc/config.gz").write_bytes(gzip.compress(text))
    ident = live_facts(Layout(kernel_fs=kfs)).identity
    assert ident.ikheaders == "n" and not ident.supported
    with pytest.raises(UnsupportedError, match="without CONFIG_IKHEADERS"):
        require_archive(ident)


def test_missing_osrelease_says_what_kernel_fs_should_be(tmp_path: Path) -> None:
    with pytest.raises(KernelDataError, match="kernel-fs"):
        live_facts(Layout(kernel_fs=tmp_path))
