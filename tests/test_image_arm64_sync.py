"""An arm64 kernel prepared on this (x86) host before its first boot, through the installed
command: `sync --kernel` from its installed files (the image, kheaders.ko.xz, configs.ko), and the
packages emitted for the tree, which carry the kernel's architecture and install as such."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kheaders_pkg.kernel.kmod import config_from_module, find_module, kheaders_archive_from_module
from kheaders_pkg.kernel.machine import KernelArch, autoconf_as_config, kernel_arch, tree_arch
from tests.conftest import CorpusKernel, corpus_kernel, make_dpkg_root, run_cli

ARM64 = "debian-6.1.0-56-arm64"
MODULES = "kernel/kernel"  # where a distro installs kheaders.ko and configs.ko


@pytest.fixture(scope="module")
def corpus() -> CorpusKernel:
    return corpus_kernel(ARM64)


def install_kernel_files(corpus: CorpusKernel, root: Path, *, gzip_image: bool = False) -> None:
    """What installing the kernel package leaves: /boot/vmlinuz-KVER (Debian: the plain Image;
    Ubuntu: Image.gz), the modules xz-compressed as Debian does since 6.x, under merged /usr."""
    make_dpkg_root(root)
    (root / "boot").mkdir()
    image = corpus.vmlinuz.read_bytes()
    vmlinuz = root / "boot" / f"vmlinuz-{corpus.release}"
    vmlinuz.write_bytes(gzip.compress(image, compresslevel=1) if gzip_image else image)
    modules = root / "usr/lib/modules" / corpus.release / MODULES
    modules.mkdir(parents=True)
    data = (corpus.modules / "kheaders.ko").read_bytes()
    (modules / "kheaders.ko.xz").write_bytes(lzma.compress(data, check=lzma.CHECK_CRC32))
    shutil.copyfile(corpus.modules / "configs.ko", modules / "configs.ko")


def host_tree(root: Path, release: str) -> Path:
    link = os.readlink(root / "usr/lib/modules" / release / "build")
    return root / link.lstrip("/")


@pytest.mark.parametrize("gzip_image", [False, True], ids=["Image", "Image.gz"])
def test_sync_kernel_prepares_an_arm64_root_from_its_installed_files(
    corpus: CorpusKernel, tmp_path: Path, gzip_image: bool
) -> None:
    root = tmp_path / "root"
    install_kernel_files(corpus, root, gzip_image=gzip_image)
    release, expected = corpus.release, corpus.expected

    first = run_cli(root, None, "sync", "--kernel", release)
    assert first.returncode == 0, first.stderr
    tree = host_tree(root, release)
    stamp = json.loads((tree / ".kheaders-pkg.json").read_text())
    assert stamp["build_id"] == expected["build_id"]
    assert stamp["archive_sha256"] == expected["kheaders_tar_xz_sha256"]
    assert stamp["config_sha256"] == expected["config_sha256"]
    assert stamp["config_source"] == "configs.ko"
    assert (tree / "arch/arm64/include/asm/processor.h").is_file()
    assert not (tree / "arch/x86").exists()
    assert (tree / "vmlinux.id").read_text().strip() == expected["build_id"]
    assert tree_arch(tree) == kernel_arch(b"CONFIG_ARM64=y\n")

    check = run_cli(root, None, "check", "--kernel", release)
    assert check.returncode == 0, check.stderr
    status = run_cli(root, None, "status", "--kernel", release, "--json")
    assert json.loads(status.stdout)["build_id"] == expected["build_id"]
    again = run_cli(root, None, "sync", "--kernel", release)
    assert again.returncode == 0, again.stderr
    assert host_tree(root, release) == tree  # nothing regenerated
    # Judged against the kernel named, which is not the one running here.
    for said in (check.stdout, again.stdout):
        assert f"headers match kernel {release} " in said and "running kernel" not in said, said


def test_sync_kernel_with_a_corrupt_arm64_image_is_exit_7_and_publishes_nothing(
    corpus: CorpusKernel, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    install_kernel_files(corpus, root)
    vmlinuz = root / "boot" / f"vmlinuz-{corpus.release}"
    vmlinuz.write_bytes(vmlinuz.read_bytes()[: 1 << 20])  # cut short
    done = run_cli(root, None, "sync", "--kernel", corpus.release)
    assert done.returncode == 7, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert str(vmlinuz) in done.stderr
    assert not (root / "usr/lib/modules" / corpus.release / "build").exists()


@pytest.fixture(scope="module")
def prepared(corpus: CorpusKernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arm64-root")
    install_kernel_files(corpus, root)
    done = run_cli(root, None, "sync", "--kernel", corpus.release)
    assert done.returncode == 0, done.stderr
    return root


def _emit(root: Path, corpus: CorpusKernel, fmt: str, out: Path) -> Path:
    """The package `kheaders-pkg emit` writes for the arm64 kernel's tree in `root`."""
    done = run_cli(root, None, "emit", "--format", fmt, "--kernel", corpus.release, "--out", out)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


@pytest.mark.integration
def test_emitted_deb_is_arm64_and_installs_with_force_architecture(
    corpus: CorpusKernel, prepared: Path, tmp_path: Path
) -> None:
    deb = _emit(prepared, corpus, "deb", tmp_path / "out")
    assert deb.name.endswith("_arm64.deb")
    field = subprocess.run(
        ["dpkg-deb", "-f", deb, "Architecture"], capture_output=True, text=True, check=True
    )
    assert field.stdout.strip() == "arm64"

    target = make_dpkg_root(tmp_path / "target")
    admin = f"--admindir={target}/var/lib/dpkg"
    base = ["dpkg", f"--root={target}", admin, "--log=/dev/null", "--force-script-chrootless"]
    refused = subprocess.run([*base, "-i", deb], capture_output=True, text=True)
    if (
        subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout[:-1]
        != "arm64"
    ):
        assert refused.returncode != 0 and "architecture" in refused.stderr
    installed = subprocess.run(
        [*base, "--force-architecture", "-i", deb], capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr
    listing = subprocess.run(
        ["dpkg-query", admin, "-L", f"kheaders-tree-{corpus.release}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    header = next(p for p in listing.splitlines() if p.endswith("arch/arm64/include/asm/ptrace.h"))
    assert (target / header.lstrip("/")).is_file()


@pytest.mark.integration
def test_emitted_rpm_is_aarch64_and_installs_with_ignorearch(
    corpus: CorpusKernel, prepared: Path, tmp_path: Path
) -> None:
    package = _emit(prepared, corpus, "rpm", tmp_path / "out")
    assert package.name.endswith(".aarch64.rpm")
    query = ["rpm", "-qp", "--qf", "%{ARCH}", str(package)]
    assert subprocess.run(query, capture_output=True, text=True, check=True).stdout == "aarch64"

    target = tmp_path / "target"
    target.mkdir()
    rpm = ["rpm", "--root", str(target), "--dbpath", "/var/lib/rpm"]
    subprocess.run([*rpm, "--initdb"], check=True, capture_output=True)
    # Debian's own rpm build wants --force-debian to install anything (distro/rpm.py).
    extra = ["--force-debian"] if "force-debian" in _rpm_help() else []
    installed = subprocess.run(
        [*rpm, *extra, "-i", "--ignorearch", "--nodeps", "--noscripts", str(package)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    tree = target / "usr/src/kheaders-pkg" / corpus.release
    assert any(tree.glob("gen-*/arch/arm64/include/asm/ptrace.h"))


def _rpm_help() -> str:
    return subprocess.run(["rpm", "--help"], capture_output=True, text=True).stdout


# --- the architecture table --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "deb", "rpm"),
    [
        (b"CONFIG_ARM64=y\nCONFIG_64BIT=y\n", "arm64", "aarch64"),
        (b"CONFIG_X86_64=y\nCONFIG_X86=y\n", "amd64", "x86_64"),
        (b"CONFIG_X86_32=y\nCONFIG_X86=y\n", "i386", "i686"),
        (b"CONFIG_PPC64=y\nCONFIG_CPU_LITTLE_ENDIAN=y\n", "ppc64el", "ppc64le"),
        (b"CONFIG_RISCV=y\nCONFIG_64BIT=y\n", "riscv64", "riscv64"),
        (b"CONFIG_S390=y\n", "s390x", "s390x"),
        (b"CONFIG_ARM=y\n", "armhf", "armv7hl"),
    ],
)
def test_kernel_config_names_the_package_architecture(config: bytes, deb: str, rpm: str) -> None:
    found = kernel_arch(config)
    assert found is not None and (found.deb, found.rpm) == (deb, rpm)


@pytest.mark.parametrize(
    "config",
    [b"", b"CONFIG_ARM64=y\nCONFIG_CPU_BIG_ENDIAN=y\n", b"CONFIG_PPC64=y\n", b"CONFIG_MIPS=y\n"],
)
def test_architectures_without_a_distro_name_are_unknown(config: bytes) -> None:
    assert kernel_arch(config) is None


def test_every_corpus_tree_source_names_its_architecture(corpus: CorpusKernel) -> None:
    autoconf = b"#define CONFIG_ARM64 1\n#define CONFIG_NR_CPUS 256\n#define CONFIG_64BIT 1\n"
    assert autoconf_as_config(autoconf) == b"CONFIG_ARM64=y\nCONFIG_64BIT=y\n"
    arm = kernel_arch(autoconf_as_config(autoconf))
    assert arm == KernelArch("arm64", "arm64", "aarch64", "aarch64", "arm64", ("armhf", "armel"))
    x86 = kernel_arch(gzip.decompress(
        (corpus_kernel("debian-6.1.0-56-amd64").sysroot / "proc/config.gz").read_bytes()
    ))  # fmt: skip
    assert x86 is not None and x86.deb == "amd64"


# --- the arm64 modules (ELF64 relocatables, EM_AARCH64) in every installed form ----------------


def _compressed(data: bytes, suffix: str) -> bytes:
    if suffix == ".xz":
        return lzma.compress(data, check=lzma.CHECK_CRC32)
    if suffix == ".gz":
        return gzip.compress(data, compresslevel=1)
    if suffix == ".zst":
        zstd = ["zstd", "-1", "-q", "-c"]
        return subprocess.run(zstd, input=data, capture_output=True, check=True).stdout
    return data


@pytest.mark.parametrize("suffix", ["", ".xz", ".zst", ".gz"])
def test_arm64_kheaders_and_configs_modules_are_read_in_every_form(
    corpus: CorpusKernel, tmp_path: Path, suffix: str
) -> None:
    for name in ("kheaders", "configs"):
        data = (corpus.modules / f"{name}.ko").read_bytes()
        assert data[18:20] == (183).to_bytes(2, "little")  # e_machine EM_AARCH64
        (tmp_path / f"{name}.ko{suffix}").write_bytes(_compressed(data, suffix))
    archive = kheaders_archive_from_module(find_module(tmp_path, "kheaders") or tmp_path)
    assert hashlib.sha256(archive).hexdigest() == corpus.expected["kheaders_tar_xz_sha256"]
    config = config_from_module(find_module(tmp_path, "configs") or tmp_path)
    assert hashlib.sha256(config).hexdigest() == corpus.expected["config_sha256"]
