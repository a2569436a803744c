"""Config text: hash, options, auto.conf, and the archive's autoconf.h cross-check."""

from __future__ import annotations

import gzip
import lzma
import subprocess
import tarfile
from pathlib import Path

import pytest

from kheaders_pkg.errors import KernelDataError
from kheaders_pkg.kernel.kconfig import (
    autoconf_disagreements,
    config_sha256,
    gunzip_config,
    option,
    parse_config,
    render_auto_conf,
)
from tests.conftest import CorpusKernel, corpus_kernel


def _config(k: CorpusKernel) -> bytes:
    return gunzip_config((k.sysroot / "proc/config.gz").read_bytes(), "config.gz")


def test_hash_is_of_the_decompressed_config(kernel: CorpusKernel) -> None:
    assert config_sha256(_config(kernel)) == kernel.expected["config_sha256"]


def test_option_lookup_matches_the_parser(kernel: CorpusKernel) -> None:
    cfg = _config(kernel)
    parsed = parse_config(cfg)
    assert option(cfg, "CONFIG_IKHEADERS") == parsed.get("CONFIG_IKHEADERS")
    assert option(cfg, "CONFIG_LOCALVERSION") == parsed.get("CONFIG_LOCALVERSION")
    assert option(cfg, "CONFIG_NO_SUCH_OPTION") is None


def test_auto_conf_holds_every_set_option_and_nothing_unset() -> None:
    cfg = _config(corpus_kernel("debian-6.1.0-56-amd64"))
    auto = render_auto_conf(cfg)
    lines = [ln for ln in auto.decode().splitlines() if not ln.startswith("#")]
    assert dict(ln.split("=", 1) for ln in lines).keys() == parse_config(cfg).keys()
    assert b"is not set" not in auto


@pytest.mark.integration
def test_auto_conf_is_the_one_debian_ships(tmp_path: Path) -> None:
    """Linux >= 5.18 writes string values unquoted (CONFIG_CC_VERSION_TEXT=gcc-12 (Debian ...)),
    which the top Makefile's compiler check relies on: Debian's own auto.conf, from its headers
    package, is the reference, option for option."""
    kernel = corpus_kernel("debian-6.1.0-56-amd64")
    deb = next(kernel.debs.glob(f"linux-headers-{kernel.release}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    debian = tmp_path / f"usr/src/linux-headers-{kernel.release}/include/config/auto.conf"

    def options(text: str) -> set[str]:
        return {ln for ln in text.splitlines() if ln.startswith("CONFIG_")}

    ours, theirs = options(render_auto_conf(_config(kernel)).decode()), options(debian.read_text())
    assert "CONFIG_CC_VERSION_TEXT=gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0" in ours
    assert ours == theirs


def test_archive_autoconf_is_checked_against_the_running_config(
    kernel_with_archive: CorpusKernel,
) -> None:
    kernel = kernel_with_archive
    with lzma.open(kernel.archive) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
        for m in tar:
            if m.name == "./include/generated/autoconf.h":
                f = tar.extractfile(m)
                assert f is not None
                autoconf = f.read()
                break
    diffs = autoconf_disagreements(_config(kernel), autoconf)
    if kernel.name.startswith("kh-"):
        assert diffs == []
    else:
        # The corpus README: Debian's kheaders.ko was built from Debian's config plus
        # IKHEADERS=m, IKCONFIG=m, IKCONFIG_PROC=y, so its autoconf.h says so; the running
        # config (Debian's build config) does not. Exactly the case we must report.
        assert diffs == [
            "CONFIG_IKCONFIG_MODULE",
            "CONFIG_IKCONFIG_PROC",
            "CONFIG_IKHEADERS_MODULE",
        ]


def test_a_stale_autoconf_is_reported() -> None:
    cfg = b'CONFIG_A=y\nCONFIG_B=m\nCONFIG_C="x"\n'
    autoconf = b'#define CONFIG_A 1\n#define CONFIG_B_MODULE 1\n#define CONFIG_C "y"\n'
    assert autoconf_disagreements(cfg, autoconf) == ["CONFIG_C"]


def test_not_gzip_is_a_kernel_data_error() -> None:
    with pytest.raises(KernelDataError, match="not a gzip"):
        gunzip_config(b"plain text", "x")


def test_truncated_gzip_is_a_kernel_data_error() -> None:
    data = gzip.compress(b"CONFIG_A=y\n" * 1000)
    with pytest.raises(KernelDataError):
        gunzip_config(data[: len(data) // 2], "x")
