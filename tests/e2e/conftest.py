"""Fixtures for booting corpus kernels: cached initramfs images, fresh persistent guest roots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import CorpusKernel, corpus_kernel

if TYPE_CHECKING:
    from .test_boot import Chains

from . import arm64_guest, systemd_guest, vm

# The kernel whose kheaders.ko the tool must load itself (CONFIG_IKHEADERS=m): its initramfs
# leaves the module out and the guest root gets it under lib/modules, found by modprobe.
TOOL_LOADS_KHEADERS = "kh-6.1.192-kh-a-mod"


@dataclass(frozen=True)
class Guest:
    """A corpus kernel ready to boot: its corpus facts, its boot image and initramfs."""

    corpus: CorpusKernel
    kernel: vm.GuestKernel
    initramfs: Path

    @property
    def name(self) -> str:
        return self.corpus.name

    @property
    def release(self) -> str:
        return self.corpus.release

    def prepare(self, state: vm.GuestState) -> vm.GuestState:
        """Give a fresh root what this kernel needs before its first boot."""
        if self.name == TOOL_LOADS_KHEADERS:
            state.install_module(self.corpus.modules / "kheaders.ko", self.release)
        return state

    def boot(
        self,
        state: vm.GuestState,
        scenario: str | Sequence[str],
        timeout: float = vm.TIMEOUT,
        memory: int = 1024,
    ) -> vm.BootResult:
        return vm.boot(self.kernel, self.initramfs, state, scenario, timeout=timeout, memory=memory)


GuestFactory = Callable[[str], Guest]


@pytest.fixture(scope="session")
def guest_factory(tmp_path_factory: pytest.TempPathFactory) -> GuestFactory:
    """`guest_factory(name)`: the Guest for a corpus kernel; initramfs built once per session."""
    cache: dict[str, Guest] = {}
    images = tmp_path_factory.mktemp("initramfs")
    vm.precompile()  # before any guest starts: the guest cannot write bytecode

    def make(name: str) -> Guest:
        if name not in cache:
            corpus = corpus_kernel(name)
            withhold = ("kheaders.ko",) if name == TOOL_LOADS_KHEADERS else ()
            kernel = vm.GuestKernel.from_corpus(
                name, corpus.path, corpus.release, corpus.vmlinuz, withhold
            )
            initramfs = vm.build_initramfs(kernel, images / f"{name}.cpio.gz")
            cache[name] = Guest(corpus, kernel, initramfs)
        return cache[name]

    return make


@pytest.fixture(scope="session")
def chains(guest_factory: GuestFactory, tmp_path_factory: pytest.TempPathFactory) -> Chains:
    """The boot chains of test_boot.py, shared by every e2e module (one boot serves many)."""
    from .test_boot import Chains

    return Chains(guest_factory, tmp_path_factory.mktemp("chains"))


@pytest.fixture
def state(tmp_path: Path) -> vm.GuestState:
    """A fresh persistent root layer for one test (shared by every boot in it)."""
    return vm.GuestState(tmp_path / "state")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if systemd_guest.SETUP_TIMES or systemd_guest.UNIT_TIMES:
        terminalreporter.section("systemd boots: root preparation, and kheaders-pkg.service")
        for what, seconds in systemd_guest.SETUP_TIMES:
            terminalreporter.write_line(f"{seconds:7.1f} s  host: {what}")
        for boot, seconds in systemd_guest.UNIT_TIMES:
            terminalreporter.write_line(f"{seconds:7.1f} s  kheaders-pkg.service, {boot} boot")
    if arm64_guest.SETUP_TIMES:
        terminalreporter.section("arm64 guest: userland preparation on the host")
        for what, seconds in arm64_guest.SETUP_TIMES:
            terminalreporter.write_line(f"{seconds:7.1f} s  {what}")
    if not vm.BOOT_TIMES:
        return
    terminalreporter.section("qemu boots (TCG)")
    for name, scenario, seconds in vm.BOOT_TIMES:
        terminalreporter.write_line(f"{seconds:7.1f} s  {name:<30} {scenario}")
    total = sum(s for _, _, s in vm.BOOT_TIMES)
    terminalreporter.write_line(f"{total:7.1f} s  total for {len(vm.BOOT_TIMES)} boots")
