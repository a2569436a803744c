"""End to end on a booted arm64 kernel: Debian's 6.1 arm64 kernel under qemu-system-aarch64.

The guest runs an arm64 userland made once per session (arm64_guest.py) with the tool from this
checkout; its initramfs runs arm64 busybox, so the initramfs verdict library is proven there too.
Three boots cover the scenarios:

  first    A + D: no tree, kheaders.ko only on disk: check says 3, the unit's sync loads
           kheaders.ko itself and makes the tree, check says 0; the initramfs said "missing"
  reboot   B + D: the same root again: check 0, sync changes nothing; the initramfs said "fresh"
  before   a fresh root where the host ran `sync --kernel` from the installed image and
           kheaders.ko.xz: the first boot finds that tree fresh and keeps it
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CorpusKernel, corpus_kernel

from . import arm64_guest, vm

ARM64 = "debian-6.1.0-56-arm64"
FRESH, NEEDS_SYNC = 0, 3
RUN_SYNC, SKIP_SYNC = 0, 1
TIMEOUT = 300.0

pytestmark = pytest.mark.vm


@dataclass(frozen=True)
class Arm64Guest:
    corpus: CorpusKernel
    kernel: vm.GuestKernel
    initramfs: Path

    @property
    def release(self) -> str:
        return self.corpus.release

    def boot(self, state: vm.GuestState, scenario: str | list[str]) -> vm.BootResult:
        return vm.boot(self.kernel, self.initramfs, state, scenario, timeout=TIMEOUT)


@pytest.fixture(scope="session")
def arm64(tmp_path_factory: pytest.TempPathFactory) -> Arm64Guest:
    """The kernel, its initramfs (arm64 busybox, kheaders.ko left out) and the userland."""
    vm.precompile()
    userland = arm64_guest.make_userland(tmp_path_factory.mktemp("arm64-userland"))
    corpus = corpus_kernel(ARM64)
    kernel = vm.GuestKernel.from_corpus(
        ARM64, corpus.path, corpus.release, corpus.vmlinuz, withhold=("kheaders.ko",)
    )
    kernel = replace(kernel, machine=arm64_guest.machine(userland))
    images = tmp_path_factory.mktemp("arm64-initramfs")
    return Arm64Guest(corpus, kernel, vm.build_initramfs(kernel, images / f"{ARM64}.cpio.gz"))


class Boots:
    """Each boot once per session; a failed boot fails every test that needs it."""

    def __init__(self, guest: Arm64Guest, work: Path) -> None:
        self.guest = guest
        self.work = work
        self.done: dict[str, vm.BootResult | BaseException] = {}
        self.states: dict[str, vm.GuestState] = {}

    def get(self, name: str) -> vm.BootResult:
        if name not in self.done:
            try:
                self.done[name] = getattr(self, f"_{name}")()
            except Exception as exc:
                self.done[name] = exc
        found = self.done[name]
        if isinstance(found, BaseException):
            raise found
        return found

    def _first(self) -> vm.BootResult:
        state = vm.GuestState(self.work / "root-first")
        state.install_module(self.guest.corpus.modules / "kheaders.ko", self.guest.release)
        self.states["first"] = state
        return self.guest.boot(state, ["smoke", "first_boot"])

    def _reboot(self) -> vm.BootResult:
        first = self.get("first")
        assert first.rc("sync") == 0, tool_said(first, "sync")
        return self.guest.boot(self.states["first"], "reboot")

    def _before(self) -> vm.BootResult:
        state = vm.GuestState(self.work / "root-before")
        self.states["before"] = state
        prepare_before_boot(self.guest, state)
        return self.guest.boot(state, "reboot")


@pytest.fixture(scope="session")
def boots(arm64: Arm64Guest, tmp_path_factory: pytest.TempPathFactory) -> Boots:
    return Boots(arm64, tmp_path_factory.mktemp("arm64-boots"))


def tool_said(result: vm.BootResult, name: str) -> str:
    return f"{name}: rc {result.get(name + '.rc')}, stderr {result.get(name + '.err')!r}"


def status_of(result: vm.BootResult, name: str) -> dict[str, Any]:
    assert result.rc(name) == 0, result[f"{name}.err"]
    data: dict[str, Any] = json.loads(result[f"{name}.out"])
    return data


def prepare_before_boot(guest: Arm64Guest, state: vm.GuestState) -> None:
    """What the package-manager hook does on the host before the kernel first boots: the image
    and kheaders.ko.xz installed in the root, `kheaders-pkg --root ROOT sync --kernel KVER`."""
    release = guest.release
    (state.path / "boot").mkdir(exist_ok=True)
    shutil.copyfile(guest.corpus.vmlinuz, state.path / "boot" / f"vmlinuz-{release}")
    modules = state.host_path(f"/lib/modules/{release}") / "kernel/kernel"
    modules.mkdir(parents=True, exist_ok=True)
    ko = (guest.corpus.modules / "kheaders.ko").read_bytes()
    (modules / "kheaders.ko.xz").write_bytes(lzma.compress(ko, check=lzma.CHECK_CRC32))
    base = state.host_path(f"/lib/modules/{release}").parent.parent.parent
    subprocess.run([vm.DEPMOD, "-b", str(base), release], check=True)
    tool = Path(sys.executable).parent / "kheaders-pkg"
    done = subprocess.run(
        [tool, "--root", state.path, "sync", "--kernel", release], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    stamp = json.loads((state.resolve(f"/lib/modules/{release}/build") / ".kheaders-pkg.json")
                       .read_text())  # fmt: skip
    assert stamp["build_id"] == guest.corpus.expected["build_id"]
    assert stamp["archive_source"] == "module"


# --- the guest itself ---------------------------------------------------------------------------


def test_arm64_guest_runs_the_corpus_kernel_with_an_arm64_python(
    arm64: Arm64Guest, boots: Boots
) -> None:
    result, expected = boots.get("first"), arm64.corpus.expected
    assert result["uname"] == expected["kernelrelease"]
    assert result["notes_sha256"] == expected["notes_sha256"]
    assert result["archive_sha256"] == "absent"  # kheaders.ko is not loaded yet
    assert result["python"] == "1"
    assert result["modules_writable"] == "1" and result["usr_src_writable"] == "1"
    assert result["e2e.exit"] == "0"


# --- A: first boot, B: reboot -------------------------------------------------------------------


def test_first_arm64_boot_sync_loads_kheaders_itself_and_makes_a_fresh_tree(
    arm64: Arm64Guest, boots: Boots
) -> None:
    result, expected = boots.get("first"), arm64.corpus.expected
    assert result["kheaders_loaded_before"] == "0"
    assert result.rc("check_before") == NEEDS_SYNC, tool_said(result, "check_before")
    assert result.rc("sync") == 0, tool_said(result, "sync")
    assert result.rc("check_after") == FRESH, tool_said(result, "check_after")
    assert result["kheaders_loaded_after"] == "0"  # loaded for the sync, unloaded again
    status = status_of(result, "status")
    assert status["verdict"] == "fresh"
    assert status["build_id"] == expected["build_id"]
    assert status["tree"]["identity"]["archive_sha256"] == expected["kheaders_tar_xz_sha256"]
    assert result["build_utsrelease"] == f'#define UTS_RELEASE "{arm64.release}"'
    tree = boots.states["first"].resolve(f"/lib/modules/{arm64.release}/build")
    assert (tree / "arch/arm64/include/asm/processor.h").is_file()


def test_arm64_reboot_finds_the_tree_fresh_and_sync_changes_nothing(boots: Boots) -> None:
    first, result = boots.get("first"), boots.get("reboot")
    assert result.rc("check") == FRESH, tool_said(result, "check")
    assert result.rc("sync") == 0, tool_said(result, "sync")
    for what in ("target", "dir", "header"):
        assert result[f"after.{what}"] == result[f"before.{what}"], what
    assert result["before.target"] == first["build_target"]


def test_tree_made_on_the_host_before_boot_is_fresh_at_first_arm64_boot(
    arm64: Arm64Guest, boots: Boots
) -> None:
    result = boots.get("before")
    state = boots.states["before"]
    made_on_host = os.readlink(state.host_path(f"/lib/modules/{arm64.release}/build"))
    assert result["before.target"] == made_on_host
    assert result["initramfs.verdict"] == "fresh", result.get("initramfs.reason")
    assert result.rc("check") == FRESH, tool_said(result, "check")
    assert result.rc("sync") == 0, tool_said(result, "sync")
    for what in ("target", "dir", "header"):
        assert result[f"after.{what}"] == result[f"before.{what}"], what


# --- D: the initramfs verdict library under arm64 busybox, the unit's lines ---------------------


@pytest.mark.parametrize(
    ("boot", "verdict"), [("first", "missing"), ("reboot", "fresh"), ("before", "fresh")]
)
def test_arm64_busybox_initramfs_verdicts_match_the_cli(
    boots: Boots, boot: str, verdict: str
) -> None:
    result = boots.get(boot)
    assert result["initramfs.verdict"] == verdict, result.get("initramfs.reason")
    if boot == "first":
        assert result.rc("check_before") == NEEDS_SYNC
        assert result.rc("condition_before") == RUN_SYNC, tool_said(result, "condition_before")
        # After the sync, the library (run again in the root's busybox) and the CLI say fresh.
        assert result["after.verdict"] == "fresh", result.get("after.reason")
        assert result.rc("check_after") == FRESH
        assert result.rc("condition_after") == SKIP_SYNC, tool_said(result, "condition_after")
    else:
        assert result.rc("check") == FRESH
        assert result.rc("condition") == SKIP_SYNC, tool_said(result, "condition")
        assert "initramfs verdict" in result["condition.out"]
        assert result.rc("condition_no_verdict") == SKIP_SYNC
