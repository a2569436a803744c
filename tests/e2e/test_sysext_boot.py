"""End to end on booted kernels: a read-only /usr, headers through a real systemd-sysext merge.

One persistent root (vm.GuestState) and two boots on it, each running scenarios/sysext.sh
(/usr read-only, /var persistent, / shared as systemd makes it) with `sync` as the boot unit's
ExecStart= line:

1. debian-6.1.0-56-amd64 (overlay.ko loaded by its initramfs): the tool publishes the extension,
   runs the host's Debian systemd-sysext (252, PID 1 is not systemd here and it merges all the
   same) which merges it, /lib/modules/$(uname -r)/build shows the tree, and bcc compiles, loads
   and attaches its kprobe program against it.
2. Between the boots, the tool on the host (--root on the state) publishes kh-6.1.192-kh-a's
   extension, as a boot of that kernel would have; the Debian kernel is not installed in this
   /usr, so its extension and trees go.
3. kh-6.1.192-kh-b, the same release rebuilt: the extension is replaced by one for -b's tree.

The kh-* kernels are built without CONFIG_OVERLAY_FS (their config says "# CONFIG_OVERLAY_FS is
not set", and they have no modules), so systemd-sysext cannot merge there: it fails mounting the
overlay. The closest real check on them is what the tool does about it: the new extension is in
place, labelled and complete, and `sync` exits 14 naming the tree and the BCC_KERNEL_SOURCE
setting.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CorpusKernel, copy_sysroot, corpus_kernel

from . import vm
from .conftest import GuestFactory
from .test_boot import tool_on_host

DEBIAN_61, KH_A, KH_B = "debian-6.1.0-56-amd64", "kh-6.1.192-kh-a", "kh-6.1.192-kh-b"
ELSEWHERE = 14  # kheaders_pkg.errors.ExitCode.ELSEWHERE
TREES = "/var/lib/kheaders-pkg/trees"


@dataclass
class SysextChain:
    debian: vm.BootResult
    planted: str  # the build link of kh-a's extension, published on the host between the boots
    kh_b: vm.BootResult
    state: vm.GuestState


@pytest.fixture(scope="session")
def sysext_chain(
    guest_factory: GuestFactory, tmp_path_factory: pytest.TempPathFactory
) -> SysextChain:
    work = tmp_path_factory.mktemp("sysext")
    state = vm.GuestState(work / "state")
    debian = guest_factory(DEBIAN_61).boot(state, ["sysext", "sysext_bcc"], 600, memory=2048)
    planted = publish_on_host(state, corpus_kernel(KH_A), work)
    kh_b = guest_factory(KH_B).boot(state, "sysext", 300)
    return SysextChain(debian, planted, kh_b, state)


def publish_on_host(state: vm.GuestState, kernel: CorpusKernel, work: Path) -> str:
    """kh-a's extension, made by the tool on the host with --root on the state."""
    (state.path / "etc").mkdir(exist_ok=True)
    shutil.copyfile("/etc/os-release", state.path / "etc/os-release")
    config = work / "sysext.toml"
    config.write_text('publish = "sysext"\n')
    kernel_fs = copy_sysroot(kernel, work / "kfs-a")
    done = tool_on_host(
        "--root", str(state.path), "--kernel-fs", str(kernel_fs), "--config", str(config), "sync"
    )
    assert done.returncode == 0, done.stderr
    ext = state.path / f"var/lib/extensions/kheaders-pkg-{kernel.release}"
    return os.readlink(ext / f"usr/lib/modules/{kernel.release}/build")


def said(result: vm.BootResult, name: str) -> str:
    out, err = result.get(name + ".out"), result.get(name + ".err")
    return f"{name}: rc {result.get(name + '.rc')}, stdout {out!r}, stderr {err!r}"


@pytest.mark.vm
def test_read_only_usr_gets_headers_through_a_real_systemd_sysext_merge(
    sysext_chain: SysextChain, guest_factory: GuestFactory
) -> None:
    r = sysext_chain.debian
    release = guest_factory(DEBIAN_61).release
    assert r["usr_read_only"] == "1" and r["overlayfs"] == "1"
    assert r.rc("check_before") == 3, said(r, "check_before")
    assert r["sync.line"].endswith(" sync")  # the boot unit's ExecStart=
    assert r.rc("sync") == 0, said(r, "sync")
    assert r["usr_fstype"] == "overlay"  # the merged /usr
    assert f"kheaders-pkg-{release}" in r["sysext_status.out"], said(r, "sysext_status")
    assert r["build_target"].startswith(f"{TREES}/{release}/gen-0001-")
    assert r["build_target"] == r["ext_target"]
    assert r["kconfig_h_readable"] == "1"
    assert "ID=debian\nVERSION_ID=12\n" in r["extension_release"]
    assert r.rc("check_after") == 0, said(r, "check_after")
    status = json.loads(r["status.out"])
    assert status["verdict"] == "fresh" and status["tree"]["extension"]["merged"] is True


@pytest.mark.vm
def test_bcc_compiles_against_the_merged_extension(sysext_chain: SysextChain) -> None:
    r = sysext_chain.debian
    assert r.rc("bcc") == 0, said(r, "bcc")
    assert "compiled=1" in r["bcc.out"] and "fired=1" in r["bcc.out"], r["bcc.out"]
    assert r["bcc_tmp_extractions"].strip() == "0"  # bcc never fell back to its /tmp copy


@pytest.mark.vm
def test_extension_of_a_kernel_gone_from_usr_is_removed(
    sysext_chain: SysextChain, guest_factory: GuestFactory
) -> None:
    debian = guest_factory(DEBIAN_61).release
    extensions = sysext_chain.state.path / "var/lib/extensions"
    assert not (extensions / f"kheaders-pkg-{debian}").exists()
    assert not sysext_chain.state.host_path(f"{TREES}/{debian}").exists()


@pytest.mark.vm
def test_reboot_into_a_rebuild_of_the_same_release_replaces_the_extension(
    sysext_chain: SysextChain, guest_factory: GuestFactory
) -> None:
    b, planted = sysext_chain.kh_b, sysext_chain.planted
    release = guest_factory(KH_B).release
    assert planted.startswith(f"{TREES}/{release}/gen-0001-")
    assert b.rc("check_before") == 3, said(b, "check_before")
    # No overlayfs in this kernel: systemd-sysext cannot merge; the tool says where the tree is.
    assert "overlayfs" not in b.values
    assert b.rc("sync") == ELSEWHERE, said(b, "sync")
    assert f"BCC_KERNEL_SOURCE={b['ext_target']}" in b["sync.err"]
    assert b["ext_target"].startswith(f"{TREES}/{release}/gen-0002-")
    assert b["extensions"].split() == [f"kheaders-pkg-{release}"]  # no leftovers
    tree = sysext_chain.state.host_path(b["ext_target"])
    assert "KH_CORPUS_VARIANT 2" in (tree / "include/linux/kernel.h").read_text()
    stamp = json.loads((tree / ".kheaders-pkg.json").read_text())
    assert stamp["build_id"] == guest_factory(KH_B).corpus.expected["build_id"]
