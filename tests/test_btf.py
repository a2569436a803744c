"""build/vmlinux.h from the kernel's own BTF: the reader, the tree, the stamp, a consumer's build.

Every corpus kernel carries BTF (CONFIG_DEBUG_INFO_BTF=y): in sysfs as the running kernel shows
it, and inside its image on disk, which is where `sync --kernel KVER` reads it before first boot.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kheaders_pkg.kernel.btf import (
    BtfError,
    btf_blob,
    btf_in_flat_image,
    btf_of_image,
    parse_header,
)
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME
from tests.conftest import (
    KERNELS,
    CorpusKernel,
    copy_sysroot,
    corpus_kernel,
    installed_kernel_root,
    run_cli,
)

ARM64 = "debian-6.1.0-56-arm64"
BTF_KERNELS = (*KERNELS, ARM64)
KH_A = "kh-6.1.192-kh-a"
CORE_PROBE = Path(__file__).parent / "e2e/guest/core_probe.bpf.c"


def sysfs_btf(kernel: CorpusKernel) -> bytes:
    return (kernel.sysroot / "sys/kernel/btf/vmlinux").read_bytes()


# --- the reader -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BTF_KERNELS)
def test_btf_in_the_image_is_the_btf_the_running_kernel_shows(name: str) -> None:
    kernel = corpus_kernel(name)
    btf = sysfs_btf(kernel)
    assert parse_header(btf).size == len(btf)
    assert btf_of_image(kernel.vmlinuz) == btf


def test_flat_image_search_refuses_two_candidates_and_finds_none_in_noise() -> None:
    btf = sysfs_btf(corpus_kernel(KH_A))
    assert btf_in_flat_image(b"\0" * 4096 + btf + b"\0" * 100, "image") == btf
    assert btf_in_flat_image(bytes(range(256)) * 64, "image") is None
    with pytest.raises(BtfError, match="2 places look like BTF"):
        btf_in_flat_image(btf + btf, "image")


def _header(magic: int = 0xEB9F, version: int = 1, hdr_len: int = 24, strings: int = 4) -> bytes:
    head = struct.pack("<HBBIIIII", magic, version, 0, hdr_len, 0, 0, 0, strings)
    return head + b"\0ab\0"


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "no BTF magic"),
        (_header(magic=0x1234), "no BTF magic"),
        (_header()[:20], "header truncated"),
        (_header(version=2), "version 2"),
        (_header(hdr_len=8), "header length 8"),
        (_header(strings=400), "runs past"),
        (_header()[:-1] + b"x", "NUL"),
        (_header() + b"extra", "says 28 bytes, found 33"),
    ],
    ids=["empty", "magic", "truncated", "version", "hdr_len", "past-end", "strings", "trailing"],
)
def test_malformed_btf_is_one_line_error(blob: bytes, message: str) -> None:
    with pytest.raises(BtfError, match=message):
        btf_blob(blob, "test")


def test_big_endian_btf_header_is_read() -> None:
    head = struct.pack(">HBBIIIII", 0xEB9F, 1, 0, 24, 0, 0, 0, 4) + b"\0ab\0"
    assert parse_header(head).byteorder == ">" and parse_header(head).size == 28


# --- the tree, through the installed command ------------------------------------------------------


def tree_of(root: Path, release: str) -> Path:
    return root / os.readlink(root / "lib/modules" / release / "build").lstrip("/")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def archive_args(kernel: CorpusKernel) -> list[str | Path]:
    """Built-in IKHEADERS (kh-a, kh-b): no kheaders.ko on disk, so sync is given the archive."""
    return [] if (kernel.modules / "kheaders.ko").is_file() else ["--archive", kernel.archive]


@dataclass(frozen=True)
class Synced:
    kernel: CorpusKernel
    live: Path  # the tree `sync` made from the running kernel (--kernel-fs)
    installed: Path  # the tree `sync --kernel KVER` made from its files on disk


@pytest.fixture(scope="module", params=BTF_KERNELS)
def synced(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Synced:
    kernel = corpus_kernel(str(request.param))
    work = tmp_path_factory.mktemp(f"btf-{kernel.name}")
    live_root = installed_kernel_root(
        kernel, work / "live"
    )  # kh-a-mod: its archive is in kheaders.ko
    kfs = copy_sysroot(kernel, work / "kfs")
    done = run_cli(live_root, kfs, "sync", *archive_args(kernel))
    assert done.returncode == 0, done.stderr
    disk = installed_kernel_root(kernel, work / "disk")
    done = run_cli(disk, None, "sync", "--kernel", kernel.release, *archive_args(kernel))
    assert done.returncode == 0, done.stderr
    return Synced(kernel, tree_of(live_root, kernel.release), tree_of(disk, kernel.release))


@pytest.mark.integration
def test_vmlinux_h_from_sysfs_and_from_the_image_are_identical(synced: Synced) -> None:
    header = (synced.live / "vmlinux.h").read_bytes()
    assert header == (synced.installed / "vmlinux.h").read_bytes()
    assert header.startswith(b"#ifndef __VMLINUX_H__") and b"struct task_struct {" in header
    for tree in (synced.live, synced.installed):
        stamp = json.loads((tree / STAMP_NAME).read_text())
        assert stamp["btf_sha256"] == synced.kernel.expected["btf_sha256"]
        assert stamp["vmlinux_h"] == "made"
        # The manifest covers it: what `verify` and the emitted packages go by.
        listed = [line.rstrip("\n").split("\t") for line in (tree / MANIFEST_NAME).open()]
        assert ["f", sha256_of(tree / "vmlinux.h"), str(len(header)), "vmlinux.h"] in listed


@pytest.mark.integration
def test_tree_made_before_boot_from_the_installed_files_is_the_tree_made_after_boot(
    synced: Synced,
) -> None:
    live = (synced.live / MANIFEST_NAME).read_text().splitlines()
    installed = (synced.installed / MANIFEST_NAME).read_text().splitlines()
    if not (synced.kernel.modules / "configs.ko").is_file():
        # kh-*: no configs.ko or /boot/config on disk, so no .config before boot (by design).
        config = {".config", "include/config/auto.conf"}
        live = [line for line in live if line.split("\t")[3] not in config]
    assert live == installed


@pytest.fixture
def kfs(tmp_path: Path) -> Path:
    """A writable copy of kh-a's kernel filesystem, for the tests that change what it shows."""
    return copy_sysroot(corpus_kernel(KH_A), tmp_path / "kfs")


@pytest.mark.integration
def test_resync_shares_an_unchanged_vmlinux_h_with_the_previous_generation(
    kfs: Path,
    tmp_path: Path,
) -> None:
    kernel = corpus_kernel(KH_A)
    root = tmp_path / "root"
    assert run_cli(root, kfs, "sync").returncode == 0
    first = tree_of(root, kernel.release)
    assert run_cli(root, kfs, "sync", "--force").returncode == 0
    second = tree_of(root, kernel.release)
    assert second != first
    assert (second / "vmlinux.h").stat().st_ino == (first / "vmlinux.h").stat().st_ino


@pytest.mark.integration
def test_kernel_without_btf_gets_a_tree_without_vmlinux_h_and_a_remark(
    kfs: Path, tmp_path: Path
) -> None:
    kernel = corpus_kernel(KH_A)
    (kfs / "sys/kernel/btf/vmlinux").unlink()
    root = tmp_path / "root"
    done = run_cli(root, kfs, "sync")
    assert done.returncode == 0, done.stderr
    tree = tree_of(root, kernel.release)
    assert (tree / "include/linux/sched.h").is_file() and not (tree / "vmlinux.h").exists()
    assert json.loads((tree / STAMP_NAME).read_text())["vmlinux_h"] == "no-btf"
    status = json.loads(run_cli(root, kfs, "status", "--json").stdout)
    assert status["verdict"] == "fresh"
    assert any("/sys/kernel/btf/vmlinux" in r for r in status["remarks"]), status
    text = run_cli(root, kfs, "status").stdout
    assert "note: no BTF was found for kernel 6.1.192-kh" in text


@pytest.mark.integration
def test_without_bpftool_the_tree_is_published_and_status_says_what_is_missing(
    kfs: Path,
    tmp_path: Path,
) -> None:
    kernel = corpus_kernel(KH_A)
    root = tmp_path / "root"
    bare = tmp_path / "bin"  # a PATH without bpftool
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    done = run_cli(root, kfs, "sync", env=env)
    assert done.returncode == 0, done.stderr
    assert "bpftool was not installed" in done.stderr and "command not found" in done.stderr
    tree = tree_of(root, kernel.release)
    assert not (tree / "vmlinux.h").exists()
    stamp = json.loads((tree / STAMP_NAME).read_text())
    assert stamp["vmlinux_h"] == "no-bpftool"
    assert stamp["btf_sha256"] == kernel.expected["btf_sha256"]
    status = json.loads(run_cli(root, kfs, "status", "--json").stdout)
    assert any("install it (Debian: bpftool)" in r for r in status["remarks"]), status

    # With bpftool back, a forced sync adds it.
    done = run_cli(root, kfs, "sync", "--force")
    assert done.returncode == 0, done.stderr
    assert (tree_of(root, kernel.release) / "vmlinux.h").is_file()


@pytest.mark.integration
def test_unreadable_btf_leaves_the_headers_published_with_a_warning(
    kfs: Path, tmp_path: Path
) -> None:
    kernel = corpus_kernel(KH_A)
    btf = kfs / "sys/kernel/btf/vmlinux"
    btf.write_bytes(btf.read_bytes()[:-100])  # truncated
    root = tmp_path / "root"
    done = run_cli(root, kfs, "sync")
    assert done.returncode == 0, done.stderr
    assert "could not be converted" in done.stderr and "runs past" in done.stderr
    tree = tree_of(root, kernel.release)
    assert (tree / "include/linux/sched.h").is_file() and not (tree / "vmlinux.h").exists()
    assert json.loads((tree / STAMP_NAME).read_text())["vmlinux_h"] == "failed"


# --- consumers: a CO-RE program compiles against the tree's vmlinux.h alone ----------------------


def compile_core_probe(vmlinux_h_dir: Path, out: Path, arch: str = "x86") -> Path:
    """core_probe.bpf.c (task_struct and struct file, CO-RE reads) against `vmlinux_h_dir`, as
    a libbpf program is built: host clang, -target bpf, libbpf's bpf_helpers.h."""
    done = subprocess.run(
        ["clang", "-target", "bpf", f"-D__TARGET_ARCH_{arch}", "-O2", "-g", "-Wall", "-Werror",
         f"-I{vmlinux_h_dir}", "-c", str(CORE_PROBE), "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.integration
def test_core_program_using_task_struct_and_file_compiles_against_the_tree(
    synced: Synced, tmp_path: Path
) -> None:
    arch = "arm64" if synced.kernel.name == ARM64 else "x86"
    obj = compile_core_probe(synced.live, tmp_path / "probe.o", arch)
    # The object's own BTF names both kernel structures it relocates against.
    types = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(obj)], capture_output=True, text=True, check=True
    ).stdout
    assert "STRUCT 'task_struct'" in types and "STRUCT 'file'" in types


@pytest.mark.integration
def test_emitted_deb_and_rpm_carry_vmlinux_h(kfs: Path, tmp_path: Path) -> None:
    kernel = corpus_kernel(KH_A)
    root = tmp_path / "root"
    env = {**os.environ, "HOME": str(tmp_path)}  # rpmbuild's macros and database: not ours
    assert run_cli(root, kfs, "sync").returncode == 0
    inside = os.readlink(root / "lib/modules" / kernel.release / "build")
    listings = {}
    for fmt, lister in (("deb", ["dpkg-deb", "--contents"]), ("rpm", ["rpm", "-qlp"])):
        out = tmp_path / fmt
        done = run_cli(root, kfs, "emit", "--format", fmt, "--out", out, env=env)
        assert done.returncode == 0, done.stderr
        (package,) = out.iterdir()
        listings[fmt] = subprocess.run(
            [*lister, str(package)], capture_output=True, text=True, check=True, env=env
        ).stdout
    assert f".{inside}/vmlinux.h" in listings["deb"]
    assert f"{inside}/vmlinux.h\n" in listings["rpm"]


@pytest.mark.integration
def test_verify_catches_a_changed_vmlinux_h(kfs: Path, tmp_path: Path) -> None:
    kernel = corpus_kernel(KH_A)
    root = tmp_path / "root"
    assert run_cli(root, kfs, "sync").returncode == 0
    assert run_cli(root, kfs, "verify").returncode == 0
    header = tree_of(root, kernel.release) / "vmlinux.h"
    header.chmod(0o644)
    with header.open("r+b") as f:  # same size, one byte different
        f.write(b"/")
    done = run_cli(root, kfs, "verify")
    assert done.returncode == 13 and "vmlinux.h" in done.stderr + done.stdout, done
