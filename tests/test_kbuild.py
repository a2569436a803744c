"""Module-building trees: Module.symvers recovered from the kernel, checked, and a module built.

The reference is Debian's own Module.symvers for the corpus kernel (linux-headers-6.1.0-56-amd64),
and the kernel's own modules' `__versions`: what the kernel compares when it loads a module.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kheaders_pkg.errors import ExitCode
from kheaders_pkg.hooks import HookSystem, find_data_dir, stage_hooks
from kheaders_pkg.kernel.elf import ELFFile
from kheaders_pkg.kernel.image import build_id_of, read_kernel_image, vmlinux_of_bzimage
from kheaders_pkg.kernel.kmod import read_module
from kheaders_pkg.kernel.ksymtab import (
    ExportKind,
    Import,
    UnsupportedLayout,
    flat_image_exports,
    module_exports,
    module_imports,
    vmlinux_exports,
)
from kheaders_pkg.kernel.symvers import (
    VMLINUX,
    Disagreement,
    ModuleExports,
    crc_table,
    disagreements,
    module_column,
    render_symvers,
)
from tests.conftest import TOOL, CorpusKernel, corpus_kernel
from tests.kbuild_util import (
    HELLO,
    HELLO_NAME,
    KBUILD_KERNEL,
    MODULE_DIRS,
    KbuildRoot,
    build_hello,
    make_kbuild_root,
    tree_with_symvers,
    with_crc,
)


@pytest.fixture(scope="module")
def kernel() -> CorpusKernel:
    return corpus_kernel(KBUILD_KERNEL)


@pytest.fixture(scope="module")
def vmlinux(kernel: CorpusKernel) -> bytes:
    return vmlinux_of_bzimage(kernel.vmlinuz.read_bytes())


def debian_symvers_of(kernel: CorpusKernel, out: Path) -> list[str]:
    """The lines of Debian's Module.symvers for `kernel`, from its headers package."""
    deb = next(kernel.debs.glob(f"linux-headers-{kernel.release}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    text = (out / f"usr/src/linux-headers-{kernel.release}/Module.symvers").read_text()
    return text.splitlines(keepends=True)


@pytest.fixture(scope="module")
def debian_symvers(kernel: CorpusKernel, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return debian_symvers_of(kernel, tmp_path_factory.mktemp("debian-headers"))


def corpus_modules(kernel: CorpusKernel) -> dict[str, ELFFile]:
    """Module.symvers column -> the module, for every corpus module."""
    return {
        f"{MODULE_DIRS[ko.stem]}/{ko.stem}": ELFFile(read_module(ko))
        for ko in sorted(kernel.modules.glob("*.ko"))
    }


# --- recovery, line for line ----------------------------------------------------------------

# Per kernel: vmlinux exports, exports of the corpus modules, CRCs those modules import (all of
# Debian's; amd64 reads the vmlinux ELF in the bzImage, arm64 its flat Image by structure).
RECOVERY = {
    KBUILD_KERNEL: (10503, 194, 1042),
    "debian-6.1.0-56-arm64": (10973, 140, 883),
    "debian-6.12.107+deb13-amd64": (11235, 146, 844),
}


@dataclass(frozen=True)
class Recovered:
    kernel: CorpusKernel
    vmlinux: tuple[ModuleExports, ...]
    modules: dict[str, ELFFile]
    debian: list[str]


@pytest.fixture(scope="module", params=sorted(RECOVERY))
def recovered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Recovered:
    kernel = corpus_kernel(str(request.param))
    image = read_kernel_image(kernel.vmlinuz)
    assert build_id_of(image) == kernel.expected["build_id"]
    if image.is_elf:
        exports = vmlinux_exports(ELFFile(image.kernel))
    else:
        exports = flat_image_exports(image.kernel, "little")
    debian = debian_symvers_of(kernel, tmp_path_factory.mktemp("debian-headers"))
    return Recovered(kernel, (ModuleExports(VMLINUX, exports),), corpus_modules(kernel), debian)


@pytest.mark.integration
def test_vmlinux_exports_are_debians_module_symvers_line_for_line(recovered: Recovered) -> None:
    ours = render_symvers(recovered.vmlinux)
    theirs = sorted(line for line in recovered.debian if line.split("\t")[2] == VMLINUX)
    assert len(theirs) == RECOVERY[recovered.kernel.name][0]
    assert sorted(ours.decode().splitlines(keepends=True)) == theirs


@pytest.mark.integration
def test_module_exports_are_debians_lines_for_every_installed_module(
    recovered: Recovered,
) -> None:
    modules = recovered.modules
    ours = render_symvers([ModuleExports(c, module_exports(m)) for c, m in modules.items()])
    theirs = sorted(line for line in recovered.debian if line.split("\t")[2] in modules)
    assert len(theirs) == RECOVERY[recovered.kernel.name][1]
    assert sorted(ours.decode().splitlines(keepends=True)) == theirs


@pytest.mark.integration
def test_every_crc_the_installed_modules_import_agrees(recovered: Recovered) -> None:
    modules = recovered.modules
    tables = [
        *recovered.vmlinux,
        *(ModuleExports(c, module_exports(m)) for c, m in modules.items()),
    ]
    imports = [(c, module_imports(m)) for c, m in modules.items()]
    assert sum(len(i) for _c, i in imports) == RECOVERY[recovered.kernel.name][2]
    assert disagreements(crc_table(tables), imports) == []


def test_exports_carry_gpl_and_namespaces(vmlinux: bytes) -> None:
    exports = {e.name: e for e in vmlinux_exports(ELFFile(vmlinux))}
    assert exports["init_uts_ns"].kind is ExportKind.GPL
    assert exports["crypto_cipher_setkey"].namespace == "CRYPTO_INTERNAL"
    assert exports["printk_timed_ratelimit"].kind is ExportKind.PLAIN
    assert exports["printk_timed_ratelimit"].namespace == ""
    assert exports["__fentry__"].namespace == ""  # an assembler export: namespace offset 0


def test_a_crc_other_than_the_recovered_one_is_a_disagreement() -> None:
    tables = [ModuleExports(VMLINUX, ())]
    crcs = {**crc_table(tables), "printk": 0x1234}
    found = disagreements(crcs, [("a", (Import("printk", 0x1235), Import("gone", 1)))])
    assert found == [
        Disagreement("a", "printk", 0x1235, 0x1234),
        Disagreement("a", "gone", 1, None),
    ]


@pytest.mark.parametrize(
    ("path", "column"),
    [
        ("kernel/drivers/gpu/drm/drm.ko", "drivers/gpu/drm/drm"),
        ("kernel/fs/9p/9p.ko.xz", "fs/9p/9p"),
        ("kernel/net/9p/9pnet.ko.zst", "net/9p/9pnet"),
        ("kernel/lib/x.ko.gz", "lib/x"),
        ("updates/dkms/nvidia.ko", None),  # out of tree: not the kernel's exports
        ("kernel/README", None),
    ],
)
def test_module_column_is_the_path_under_kernel_without_suffix(
    path: str, column: str | None
) -> None:
    assert module_column(path) == column


def test_crc_table_of_another_length_is_an_unsupported_layout(vmlinux: bytes) -> None:
    """Before 5.19 CRCs were `__crc_` symbol values; a `__kcrctab` that is not one u32 per entry
    is not read as if it were."""
    elf = ELFFile(vmlinux)
    index = next(i for i, s in enumerate(elf.sections) if s.name == "__kcrctab")
    shoff = struct.unpack_from("<Q", vmlinux, 0x28)[0]
    size_at = shoff + index * 64 + 32  # Elf64_Shdr.sh_size
    patched = bytearray(vmlinux)
    struct.pack_into("<Q", patched, size_at, elf.sections[index].size - 4)
    with pytest.raises(UnsupportedLayout, match="not the Linux >= 5.19 layout"):
        vmlinux_exports(ELFFile(bytes(patched)))


# --- the tree, through the installed command --------------------------------------------------


@pytest.fixture(scope="module")
def ready(kernel: CorpusKernel, tmp_path_factory: pytest.TempPathFactory) -> KbuildRoot:
    """A root with Debian's kbuild/headers packages: synced without kbuild (a headers tree, as
    before), then with `sync --kbuild`, which remakes the fresh tree once to add the pieces."""
    k = make_kbuild_root(kernel, tmp_path_factory.mktemp("kbuild-ready"))
    assert k.cli("sync").returncode == 0
    assert not (k.tree() / "Module.symvers").exists()
    r = k.cli("sync", "--kbuild")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("regenerated ") and "kbuild: ready" in r.stdout
    assert k.cli("verify").returncode == 0  # the links to the kbuild tools are in the manifest
    return k


@pytest.mark.integration
def test_sync_kbuild_makes_a_tree_with_debians_module_symvers_and_kbuild_pieces(
    ready: KbuildRoot, kernel: CorpusKernel, debian_symvers: list[str]
) -> None:
    tree = ready.tree()
    ours = (tree / "Module.symvers").read_text().splitlines(keepends=True)
    installed = {f"{MODULE_DIRS[ko.stem]}/{ko.stem}" for ko in kernel.modules.glob("*.ko")}
    theirs = [ln for ln in debian_symvers if ln.split("\t")[2] in {VMLINUX, *installed}]
    assert sorted(ours) == sorted(theirs)
    assert ours[0].split("\t")[2] == VMLINUX  # vmlinux first, as modpost writes it
    common = ready.root / "usr/src/linux-headers-6.1.0-56-common"
    assert (tree / "Makefile").read_bytes() == (common / "Makefile").read_bytes()
    assert (tree / "arch/x86/Makefile").read_bytes() == (common / "arch/x86/Makefile").read_bytes()
    assert (tree / "arch/x86/module.lds").is_file()
    for name in ("scripts", "tools"):
        assert not Path(str((tree / name).readlink())).is_absolute()
        assert (tree / name).resolve() == (ready.root / f"usr/lib/linux-kbuild-6.1/{name}")
    status = json.loads(ready.cli("status", "--json").stdout)
    assert status["tree"]["kbuild"]["ready"] is True
    assert status["tree"]["kbuild"]["checked_imports"] == 1042
    assert "kbuild: ready" in ready.cli("status").stdout


def deb_provides(k: KbuildRoot, out: Path) -> list[str]:
    """The Provides of the package `emit --format deb` makes of the published tree."""
    emitted = k.cli("emit", "--format", "deb", "--out", str(out))
    assert emitted.returncode == 0, emitted.stderr
    [deb] = out.glob("*.deb")
    field = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Provides"], capture_output=True, text=True, check=True
    )
    return field.stdout.strip().split(", ")


@pytest.mark.integration
def test_only_a_tree_that_builds_modules_is_packaged_as_linux_headers(
    ready: KbuildRoot, tmp_path: Path
) -> None:
    """dkms looks for linux-headers-$KVER; a headers-only tree never claims it (see the
    self-check test for that side)."""
    assert deb_provides(ready, tmp_path) == [
        "kernel-ikheaders-6.1.0-56-amd64 (= 2.eb4fbcd037e7)",
        "linux-headers-6.1.0-56-amd64",
        "linux-headers",
    ]


@pytest.mark.integration
def test_hello_module_built_against_the_tree_imports_debians_crcs(
    ready: KbuildRoot, debian_symvers: list[str], tmp_path: Path
) -> None:
    """`make -C build M=...` of a module using an EXPORT_SYMBOL_GPL, a namespaced export and a
    module's export: every CRC in its `__versions` is the one Debian's Module.symvers gives."""
    built = build_hello(ready.tree(), tmp_path / "hello")
    assert built.returncode == 0, built.stdout + built.stderr
    imports = module_imports(ELFFile((tmp_path / f"hello/{HELLO_NAME}.ko").read_bytes()))
    assert {"init_uts_ns", "crypto_cipher_setkey", "is_virtio_device"} <= {i.name for i in imports}
    debian = {f[1]: int(f[0], 16) for f in (ln.split("\t") for ln in debian_symvers)}
    assert {i.name: i.crc for i in imports} == {i.name: debian[i.name] for i in imports}


@pytest.mark.integration
def test_a_wrong_module_symvers_gives_a_module_with_the_wrong_crc(
    ready: KbuildRoot, tmp_path: Path
) -> None:
    """What the guest test loads to see the kernel refuse it (tests/e2e)."""
    tree = ready.tree()
    wrong = with_crc((tree / "Module.symvers").read_bytes(), "init_uts_ns", 0x12345678)
    built = build_hello(tree_with_symvers(tree, tmp_path / "wrong", wrong), tmp_path / "m")
    assert built.returncode == 0, built.stdout + built.stderr
    crcs = {
        i.name: i.crc for i in module_imports(ELFFile((tmp_path / "m/kh_hello.ko").read_bytes()))
    }
    assert crcs["init_uts_ns"] == 0x12345678


@pytest.mark.integration
def test_self_check_refuses_when_an_installed_module_imports_another_crc(
    kernel: CorpusKernel, tmp_path: Path
) -> None:
    k = make_kbuild_root(kernel, tmp_path)
    ko = k.modules_dir / "kernel/fs/9p/9p.ko"
    data = bytearray(ko.read_bytes())
    elf = ELFFile(bytes(data))
    versions = elf.section("__versions")
    assert versions is not None
    data[versions.offset] ^= 0xFF  # the CRC of the first import
    ko.write_bytes(bytes(data))
    r = k.cli("sync", "--kbuild")
    assert r.returncode == ExitCode.KBUILD, r.stderr
    [line] = r.stderr.strip().splitlines()[-1:]
    assert "disagrees with the installed modules on 1 imported CRCs" in line
    assert "kernel/fs/9p/9p.ko" in line
    tree = k.tree()  # the headers are published all the same
    assert (tree / "include/linux/sched.h").is_file()
    assert not (tree / "Module.symvers").exists()
    assert not (tree / "Makefile").exists()
    assert "headers only" in k.cli("status").stdout
    assert deb_provides(k, tmp_path / "out") == [
        "kernel-ikheaders-6.1.0-56-amd64 (= 1.eb4fbcd037e7)"
    ]


@pytest.mark.integration
def test_without_the_distro_packages_the_tree_stays_headers_only_naming_them(
    kernel: CorpusKernel, tmp_path: Path
) -> None:
    k = make_kbuild_root(kernel, tmp_path, packages=False)
    config = tmp_path / "kheaders-pkg.toml"
    config.write_text("kbuild = true\n")
    r = k.cli("--config", str(config), "sync")
    assert r.returncode == ExitCode.KBUILD, r.stderr
    status = k.cli("--config", str(config), "status").stdout
    for missing in (
        "scripts is missing (from linux-kbuild-6.1)",
        "Makefile is missing (from linux-headers-6.1.0-56-common)",
        "arch/x86/module.lds is missing (from linux-headers-6.1.0-56-amd64)",
    ):
        assert missing in status
    tree = k.tree()
    assert not (tree / "Module.symvers").exists() and not (tree / "scripts").exists()
    # Tried once: a later sync does not remake the tree at every run.
    assert k.cli("--config", str(config), "sync").returncode == 0


@pytest.mark.integration
def test_an_image_of_another_build_is_not_used(kernel: CorpusKernel, tmp_path: Path) -> None:
    k = make_kbuild_root(kernel, tmp_path, packages=False)
    other = corpus_kernel("debian-6.12.107+deb13-amd64")
    shutil.copy(other.sysroot / "sys/kernel/notes", k.kfs / "sys/kernel/notes")
    r = k.cli("sync", "--kbuild")
    assert r.returncode == ExitCode.KBUILD
    assert "is not the running build, so its exports cannot be used" in r.stderr


@pytest.mark.integration
def test_dkms_builds_the_module_against_the_tree(
    ready: KbuildRoot, debian_symvers: list[str], tmp_path: Path
) -> None:
    """`dkms build --kernelsourcedir` with the tree, as dkms does for a kernel: its trees kept
    under tmp_path (--dkmstree, --sourcetree), nothing of the host's dkms state touched."""
    source = tmp_path / "src" / f"{HELLO_NAME}-1.0"
    shutil.copytree(HELLO, source)
    (source / "dkms.conf").write_text(
        f'PACKAGE_NAME="{HELLO_NAME}"\nPACKAGE_VERSION="1.0"\n'
        f'BUILT_MODULE_NAME[0]="{HELLO_NAME}"\nDEST_MODULE_LOCATION[0]="/updates/dkms"\n'
        'AUTOINSTALL="no"\n'
    )
    (tmp_path / "dkms").mkdir()
    built = subprocess.run(
        [
            "dkms", "build", "-m", HELLO_NAME, "-v", "1.0", "-k", ready.release,
            "--kernelsourcedir", str(ready.tree()),
            "--dkmstree", str(tmp_path / "dkms"), "--sourcetree", str(tmp_path / "src"),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    [ko] = (tmp_path / "dkms" / HELLO_NAME).rglob(f"{HELLO_NAME}.ko")
    imports = module_imports(ELFFile(ko.read_bytes()))
    debian = {f[1]: int(f[0], 16) for f in (ln.split("\t") for ln in debian_symvers)}
    assert {i.name: i.crc for i in imports} == {i.name: debian[i.name] for i in imports}


@pytest.mark.integration
def test_a_kernel_tree_named_by_kbuild_source_provides_the_pieces(
    kernel: CorpusKernel, tmp_path: Path
) -> None:
    """Without the distro's packages, a built kernel tree of the same version (here assembled
    from the files of Debian's packages, as `make modules_prepare` would leave them) is used."""
    k = make_kbuild_root(kernel, tmp_path, packages=False)
    files = tmp_path / "debs"
    for deb in kernel.debs.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(files)], check=True)
    source = k.root / "usr/src/linux-6.1"
    common = files / "usr/src/linux-headers-6.1.0-56-common"
    shutil.copytree(
        common / "arch/x86", source / "arch/x86", ignore=shutil.ignore_patterns("include")
    )
    shutil.copy(common / "Makefile", source / "Makefile")
    for name in ("scripts", "tools"):
        shutil.copytree(files / f"usr/lib/linux-kbuild-6.1/{name}", source / name, symlinks=True)
    flavour = files / f"usr/src/linux-headers-{kernel.release}"
    shutil.copy(flavour / "arch/x86/module.lds", source / "scripts/module.lds")
    config = tmp_path / "kheaders-pkg.toml"
    config.write_text('kbuild = true\nkbuild_source = "/usr/src/linux-6.1"\n')
    r = k.cli("--config", str(config), "sync")
    assert r.returncode == 0, r.stderr
    record = json.loads(k.cli("--config", str(config), "status", "--json").stdout)["tree"]["kbuild"]
    assert record["ready"] is True
    assert set(record["sources"].values()) == {
        "/usr/src/linux-6.1",
        "/usr/src/linux-6.1/scripts/module.lds",
    }
    built = build_hello(k.tree(), tmp_path / "hello")
    assert built.returncode == 0, built.stdout + built.stderr


@pytest.mark.integration
@pytest.mark.parametrize("packages", [True, False], ids=["kbuild-tree", "headers-only"])
def test_kernel_postinst_hook_makes_the_kbuild_tree_and_chains_header_postinst(
    packages: bool, kernel: CorpusKernel, tmp_path: Path
) -> None:
    """Debian's kernel postinst.d hook with `kbuild = true`: the new kernel gets a module-building
    tree before it boots, then header_postinst.d (where dkms hooks in) runs; when no kbuild tree
    can be made (exit 15) the headers tree is there and the chain runs as it did without kbuild."""
    k = make_kbuild_root(kernel, tmp_path, packages=packages)
    (k.root / "etc/kernel/header_postinst.d").mkdir(parents=True)
    chained = tmp_path / "chained"
    recorder = k.root / "etc/kernel/header_postinst.d/record"
    recorder.write_text(f'#!/bin/sh\necho "$1" >> "{chained}"\n')
    recorder.chmod(0o755)
    (k.root / "etc/kheaders-pkg.toml").write_text("kbuild = true\n")
    hooks = tmp_path / "hooks"
    stage_hooks(hooks, HookSystem.DEBIAN, str(TOOL), find_data_dir())
    postinst = hooks / "etc/kernel/postinst.d/kheaders-pkg"
    env = {**os.environ, "KHEADERS_PKG": str(TOOL), "KHEADERS_PKG_ROOT": str(k.root)}
    result = subprocess.run(
        [str(postinst), k.release, f"/boot/vmlinuz-{k.release}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert chained.read_text() == f"{k.release}\n"
    assert (k.tree() / "include/linux/sched.h").is_file()
    assert (k.tree() / "Module.symvers").exists() is packages
    assert ("headers only for" in result.stderr) is not packages
