"""End to end on real booted kernels: the tool against the live kernel of a QEMU guest.

Each guest runs on the host's own root (read-only 9p, with the tool's checkout and the host's
Python) with a persistent writable layer for /lib/modules, /usr/src and the tool's state; see vm.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KERNELS, KERNELS_WITH_ARCHIVE, copy_sysroot

from . import vm
from .conftest import TOOL_LOADS_KHEADERS, Guest, GuestFactory
from .core_object import prepare_core_object
from .kbuild_modules import KBUILD_KERNEL, WRONG_SYMBOL, prepare_kbuild_modules

DEBIAN = tuple(k for k in KERNELS if k.startswith("debian-"))
KH_A, KH_B = "kh-6.1.192-kh-a", "kh-6.1.192-kh-b"
# Scenario A runs on every kernel that has an archive, and on the one whose module the tool loads.
FIRST_BOOT_KERNELS = (*KERNELS_WITH_ARCHIVE, TOOL_LOADS_KHEADERS)

# Exit codes of `kheaders-pkg check` (kheaders_pkg.errors.ExitCode).
FRESH, NEEDS_SYNC = 0, 3

BUILD_ID = re.compile(r"build[ _-]?id", re.IGNORECASE)


def status_of(result: vm.BootResult, name: str) -> dict[str, Any]:
    assert result.rc(name) == 0, result[f"{name}.err"]
    data: dict[str, Any] = json.loads(result[f"{name}.out"])
    return data


def tool_said(result: vm.BootResult, name: str) -> str:
    return f"{name}: rc {result.get(name + '.rc')}, stderr {result.get(name + '.err')!r}"


# --- the boots: the fewest that cover every scenario, each doing all it can --------------------

# Boots run one after another: with 2 host cores, two TCG guests at once (vCPU plus the 9p I/O
# thread each) took 65 s for the five smoke boots, against 40 s in sequence.
#
# Every kernel gets a fresh root and, on it, in this order (D runs in every boot):
#   first   smoke + A: no tree; check says 3, the unit's sync makes the tree, check says 0
#   reboot  B: the same kernel again; check 0, sync changes nothing
#   stale   C, on kh-b: booted on kh-a's root after kh-a's reboot (kh-a's tree, build id of -a);
#           on each Debian kernel: on its own root after its reboot, with the tree of the other
#           Debian kernel planted under this release on the host; on Debian 6.1, bcc follows
FIRST, REBOOT, STALE = "first", "reboot", "stale"
BCC_KERNEL = "debian-6.1.0-56-amd64"


def stale_kernels() -> tuple[str, ...]:
    return (KH_B, *DEBIAN)


@dataclass
class Boot:
    """One boot of a chain and what the host saw of the root right after it."""

    result: vm.BootResult
    tree_has_sched_h: bool
    tree_copy: Path | None = None  # the tree behind the build link, copied after the boot
    planted_copy: Path | None = None  # the tree planted before the boot (Debian C)


class Chains:
    """Boots each kernel's chain on demand, once per session; a failed boot fails every test
    that needs it (with the same error) and is not retried."""

    def __init__(self, guest_factory: GuestFactory, work: Path) -> None:
        self.guest_factory = guest_factory
        self.work = work
        self.states: dict[str, vm.GuestState] = {}
        self.done: dict[tuple[str, str], Boot | BaseException] = {}

    def get(self, name: str, stage: str) -> Boot:
        key = (name, stage)
        if key not in self.done:
            try:
                self.done[key] = self._boot(name, stage)
            except Exception as exc:  # kept, raised again for every test that needs this boot
                self.done[key] = exc
        found = self.done[key]
        if isinstance(found, BaseException):
            raise found
        return found

    def _after(self, name: str, stage: str) -> Boot:
        """An earlier boot this one builds on, which must have left a fresh tree."""
        try:
            earlier = self.get(name, stage)
        except Exception as exc:
            raise AssertionError(f"needs the {stage} boot of {name}, which failed: {exc}") from exc
        sync = earlier.result
        assert sync.rc("sync") == 0, f"{name} {stage}: " + tool_said(sync, "sync")
        return earlier

    def _record(self, guest: Guest, state: vm.GuestState, result: vm.BootResult) -> Boot:
        tree = state.resolve(f"/lib/modules/{guest.release}/build")
        return Boot(result, tree.is_dir() and (tree / "include/linux/sched.h").is_file())

    def _boot(self, name: str, stage: str) -> Boot:
        guest = self.guest_factory(name)
        if stage == FIRST:
            state = guest.prepare(vm.GuestState(self.work / f"root-{name}"))
            self.states[name] = state
            boot = self._record(guest, state, guest.boot(state, ["smoke", "first_boot"], 300))
            if name == KH_A:
                boot.tree_copy = copy_tree(state, guest.release, self.work / "tree-kh-a")
            return boot
        if stage == REBOOT:
            self._after(name, FIRST)
            state = self.states[name]
            scenarios = ["reboot"]
            if name == KBUILD_KERNEL:  # modules built on the host for the kbuild test below
                prepare_kbuild_modules(state, name, self.work / "kbuild")
                scenarios.append("kbuild")
            return self._record(guest, state, guest.boot(state, scenarios, 240))
        assert stage == STALE and name in stale_kernels(), (name, stage)
        planted = None
        if name == KH_B:
            self._after(KH_A, REBOOT)
            state = self.states[KH_A]  # kh-a's root, with kh-a's tree
            scenarios = ["stale"]
        else:
            self._after(name, REBOOT)
            state = self.states[name]
            other = self.guest_factory(next(k for k in DEBIAN if k != name))
            if name == BCC_KERNEL:  # compiled against this kernel's tree before it is replaced
                prepare_core_object(state, guest.release)
            tree = plant_other_build_tree(state, other, guest.release, self.work / f"plant-{name}")
            planted = shutil.copytree(tree, self.work / f"planted-{name}", symlinks=True)
            consumers = ["bcc", "btf_consumers"]  # test_btf_consumers.py
            scenarios = ["stale", *consumers] if name == BCC_KERNEL else ["stale"]
        memory = 2048 if "bcc" in scenarios else 1024
        timeout = 900 if "bcc" in scenarios else 300  # bcc + bpftrace compile under TCG
        boot = self._record(guest, state, guest.boot(state, scenarios, timeout, memory))
        boot.planted_copy = planted
        if boot.tree_has_sched_h:
            boot.tree_copy = copy_tree(state, guest.release, self.work / f"tree-{name}-stale")
        return boot


# --- the harness itself -------------------------------------------------------------------------


@pytest.mark.vm
@pytest.mark.parametrize("name", KERNELS)
def test_guest_runs_scenario_on_live_kernel_with_writable_modules_dir(
    name: str, guest_factory: GuestFactory, chains: Chains
) -> None:
    guest = guest_factory(name)
    result = chains.get(name, FIRST).result  # the smoke part runs first in that boot
    expected = guest.corpus.expected
    assert result["uname"] == expected["kernelrelease"]
    assert result["notes_sha256"] == expected["notes_sha256"]
    if name == TOOL_LOADS_KHEADERS:
        assert result["archive_sha256"] == "absent"  # nobody has loaded kheaders.ko yet
    else:
        assert result["archive_sha256"] == expected["kheaders_tar_xz_sha256"]
    assert result["modules_writable"] == "1"
    assert result["usr_src_writable"] == "1"
    assert result["python"] == "1"
    assert result["e2e.exit"] == "0"


# --- scenario A (first boot) and B (reboot on the same root) -----------------------------------


@pytest.mark.vm
@pytest.mark.parametrize("name", FIRST_BOOT_KERNELS)
def test_first_boot_check_asks_for_sync_and_sync_makes_a_fresh_tree(
    name: str, guest_factory: GuestFactory, chains: Chains
) -> None:
    guest = guest_factory(name)
    boot = chains.get(name, FIRST)
    result, expected = boot.result, guest.corpus.expected
    release = expected["kernelrelease"]
    if name == TOOL_LOADS_KHEADERS:
        assert result["kheaders_loaded_before"] == "0"  # the tool must load it itself

    assert result.rc("check_before") == NEEDS_SYNC, tool_said(result, "check_before")
    assert result.rc("sync") == 0, tool_said(result, "sync")
    assert result.rc("check_after") == FRESH, tool_said(result, "check_after")

    status = status_of(result, "status")
    assert status["verdict"] == "fresh", status
    assert status["release"] == release
    assert status["build_id"] == expected["build_id"]
    assert status["config_sha256"] == expected["config_sha256"]
    assert status["tree"]["kind"] == "ours"
    assert status["tree"]["identity"]["archive_sha256"] == expected["kheaders_tar_xz_sha256"]
    if name == TOOL_LOADS_KHEADERS:
        # sync loaded kheaders.ko and unloaded it again (as bcc does): status reads no archive.
        assert status["archive_sha256"] in (None, expected["kheaders_tar_xz_sha256"])
    else:
        assert status["archive_sha256"] == expected["kheaders_tar_xz_sha256"]

    # The build link resolves, inside the guest, to a tree made from this kernel's archive.
    assert result["build_target"].startswith("/usr/src/"), result["build_target"]
    assert result["build_has_kconfig_h"] == "1"
    assert result["build_utsrelease"] == f'#define UTS_RELEASE "{release}"'
    assert boot.tree_has_sched_h  # seen on the host, right after the boot


@pytest.mark.vm
@pytest.mark.parametrize("name", FIRST_BOOT_KERNELS)
def test_reboot_of_same_kernel_finds_tree_fresh_and_sync_changes_nothing(
    name: str, chains: Chains
) -> None:
    first = chains.get(name, FIRST).result
    result = chains.get(name, REBOOT).result

    assert result.rc("check") == FRESH, tool_said(result, "check")
    assert result.rc("sync") == 0, tool_said(result, "sync")
    # Same target, same directory inode and mtime, same header inode and mtime: not regenerated.
    for what in ("target", "dir", "header"):
        assert result[f"after.{what}"] == result[f"before.{what}"], what
    assert result["before.target"] == first["build_target"]
    assert result["before.header"] == first["header_stat"]


# --- scenario D: the boot path (initramfs hook, systemd unit) agrees with the CLI ---------------

# What `check` exits with for each verdict of the initramfs hook.
CHECK_FOR_VERDICT = {"missing": NEEDS_SYNC, "stale": NEEDS_SYNC, "fresh": FRESH}
# ExecCondition=: exit 0 runs ExecStart= (sync), 1 skips it.
RUN_SYNC, SKIP_SYNC = 0, 1


def boot_path_cases() -> list[tuple[str, str]]:
    cases = [(name, stage) for name in FIRST_BOOT_KERNELS for stage in (FIRST, REBOOT)]
    return cases + [(name, STALE) for name in stale_kernels()]


@pytest.mark.vm
@pytest.mark.parametrize(("name", "stage"), boot_path_cases())
def test_boot_hooks_give_the_same_verdicts_as_the_cli(
    name: str, stage: str, chains: Chains
) -> None:
    result = chains.get(name, stage).result
    verdict = result["initramfs.verdict"]
    expected_verdict = {FIRST: "missing", REBOOT: "fresh", STALE: "stale"}[stage]
    assert verdict == expected_verdict, result.get("initramfs.reason")
    if stage == STALE:
        assert BUILD_ID.search(result["initramfs.reason"]), result["initramfs.reason"]

    # The CLI's check, before anything changed in this boot, says the same.
    check = "check" if stage == REBOOT else "check_before"
    assert result.rc(check) == CHECK_FOR_VERDICT[verdict], tool_said(result, check)

    # The unit, by its own command lines: the condition wrapper maps the verdict to run/skip.
    assert result["condition_before.line" if stage != REBOOT else "condition.line"].endswith(
        "kheaders-pkg-condition"
    )
    if stage == REBOOT:
        assert result.rc("condition") == SKIP_SYNC, tool_said(result, "condition")
        assert "initramfs verdict" in result["condition.out"]  # no Python started
        # Without the initramfs verdict the wrapper asks `check` itself, and skips too.
        assert result.rc("condition_no_verdict") == SKIP_SYNC, tool_said(
            result, "condition_no_verdict"
        )
        assert "initramfs verdict" not in result["condition_no_verdict.out"]
        return
    assert result.rc("condition_before") == RUN_SYNC, tool_said(result, "condition_before")
    assert result["sync.line"] == f"{vm.GUEST_TOOL} sync"  # ExecStart= ran the sync
    assert result.rc("sync") == 0, tool_said(result, "sync")
    # After the sync, the hook (run again, NEWROOT at the root) and the condition say fresh.
    assert result.rc("check_after") == FRESH, tool_said(result, "check_after")
    assert result["after.verdict"] == "fresh", result.get("after.reason")
    assert result.rc("condition_after") == SKIP_SYNC, tool_said(result, "condition_after")


# --- scenario C: the same release, another build ------------------------------------------------

# bcc's flags (background.md section 4), for the host's clang against a tree the tool made.
CLANG_WARNINGS_OFF = (
    "-Wno-unused-value", "-Wno-pointer-sign", "-Wno-gnu-variable-sized-type-not-at-end",
    "-Wno-address-of-packed-member", "-Wno-tautological-compare", "-Wno-unknown-warning-option",
)  # fmt: skip
CONSUMER = vm.GUEST_DIR / "consumer.c"


def compile_consumer(tree: Path) -> dict[str, int]:
    """Compile consumer.c against `tree` as bcc would; the values of its kh_* globals."""
    resource_dir = subprocess.run(
        ["clang", "-print-resource-dir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    arch = tree / "arch/x86"
    includes = [
        arch / "include", arch / "include/generated", tree / "include", arch / "include/uapi",
        arch / "include/generated/uapi", tree / "include/uapi", tree / "include/generated/uapi",
    ]  # fmt: skip
    command = [
        "clang", "-target", "x86_64-linux-gnu", "-nostdinc", "-isystem", f"{resource_dir}/include",
        *(f"-I{d}" for d in includes), "-include", str(tree / "include/linux/kconfig.h"),
        "-D__KERNEL__", "-D__BPF_TRACING__", *CLANG_WARNINGS_OFF, "-fno-stack-protector",
        "-O2", "-S", "-emit-llvm", "-o", "-", str(CONSUMER),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.findall(r"^@(kh_\w+) = .* global i64 (\d+)", done.stdout, re.MULTILINE)
    return {name: int(value) for name, value in found}


def copy_tree(state: vm.GuestState, release: str, dest: Path) -> Path:
    """A copy of the tree the guest's build link points at (the next sync may collect it)."""
    shutil.copytree(state.resolve(f"/lib/modules/{release}/build"), dest, symlinks=True)
    return dest


@pytest.mark.vm
def test_same_release_rebuilt_kernel_makes_tree_stale_and_sync_replaces_it(
    guest_factory: GuestFactory, chains: Chains
) -> None:
    guest_a, guest_b = guest_factory(KH_A), guest_factory(KH_B)
    assert guest_b.release == guest_a.release

    first_boot = chains.get(KH_A, FIRST)  # kh-a synced on this root (and rebooted: B)
    first = first_boot.result
    assert first.rc("sync") == 0, tool_said(first, "sync")
    assert first.rc("check_after") == FRESH, tool_said(first, "check_after")

    boot = chains.get(KH_B, STALE)  # kh-b booted on that root
    second = boot.result
    assert second["old_target"] == first["build_target"]  # kh-a's tree, before the sync
    assert second.rc("check_before") == NEEDS_SYNC, tool_said(second, "check_before")
    before = status_of(second, "status_before")
    assert before["verdict"] != "fresh", before
    assert BUILD_ID.search(before["reason"]), before["reason"]
    assert second.rc("sync") == 0, tool_said(second, "sync")
    assert second.rc("check_after") == FRESH, tool_said(second, "check_after")
    after = status_of(second, "status")
    assert after["verdict"] == "fresh"
    assert after["build_id"] == guest_b.corpus.expected["build_id"]
    assert second["variant"] == "#define KH_CORPUS_VARIANT 2"
    assert second["target"] != first["build_target"]

    # A header consumer on the host sees the difference between the two trees.
    assert first_boot.tree_copy is not None and boot.tree_copy is not None
    seen_a, seen_b = compile_consumer(first_boot.tree_copy), compile_consumer(boot.tree_copy)
    assert (seen_a["kh_corpus_variant"], seen_b["kh_corpus_variant"]) == (0, 2)


def tool_on_host(*args: str) -> subprocess.CompletedProcess[str]:
    """The tool from this checkout, on the host (for preparing a guest root)."""
    code = "import sys; from kheaders_pkg.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )


def plant_other_build_tree(state: vm.GuestState, other: Guest, release: str, work: Path) -> Path:
    """Publish, in `state`, our tree made from `other`'s archive, but under `release`.

    The tool makes a proper tree for `other` (--root on the state, --kernel-fs on a copy of its
    sysroot); then the tree, its links and its stamp's release are moved to `release`: what a root
    looks like after another build of the same release ran and synced on it.
    """
    # This release's own tree (from its first boot) goes: the other build synced last.
    modules = state.host_path(f"/lib/modules/{release}")
    own = state.resolve(f"/lib/modules/{release}/build")
    for name in ("build", "source"):
        if (modules / name).is_symlink():
            (modules / name).unlink()
    if own.is_dir():
        shutil.rmtree(own.parent)  # usr/src/kheaders-pkg/$KVER, every generation
    kernel_fs = copy_sysroot(other.corpus, work / "kernel-fs")
    done = tool_on_host("--root", str(state.path), "--kernel-fs", str(kernel_fs), "sync")
    assert done.returncode == 0, done.stderr

    old_modules = state.host_path(f"/lib/modules/{other.release}")
    link = os.readlink(old_modules / "build")
    old_tree_dir = state.host_path(os.path.dirname(link))  # usr/src/kheaders-pkg/$KVER
    assert old_tree_dir.name == other.release, link
    new_tree_dir = old_tree_dir.with_name(release)
    old_tree_dir.rename(new_tree_dir)
    new_modules = state.host_path(f"/lib/modules/{release}")
    new_modules.mkdir(parents=True, exist_ok=True)
    for name in ("build", "source"):
        if (old_modules / name).is_symlink():
            target = os.readlink(old_modules / name)
            (new_modules / name).symlink_to(target.replace(f"/{other.release}/", f"/{release}/"))
    shutil.rmtree(old_modules)

    tree = state.resolve(f"/lib/modules/{release}/build")
    stamp_path = tree / ".kheaders-pkg.json"
    text = stamp_path.read_text()
    assert json.loads(text)["build_id"] == other.corpus.expected["build_id"]
    # Only the release changes; the file keeps the tool's own layout (one key per line), which
    # the initramfs hook's reader relies on.
    field = f'"release": "{other.release}"'
    assert text.count(field) == 1, text
    stamp_path.write_text(text.replace(field, f'"release": "{release}"'))
    assert json.loads(stamp_path.read_text())["release"] == release
    return tree


@pytest.mark.vm
@pytest.mark.parametrize("name", DEBIAN)
def test_tree_from_other_debian_build_under_this_release_is_detected_and_replaced(
    name: str, guest_factory: GuestFactory, chains: Chains
) -> None:
    guest = guest_factory(name)
    boot = chains.get(name, STALE)  # on its own root, after A and B, with the other tree planted
    result = boot.result
    assert result.rc("check_before") == NEEDS_SYNC, tool_said(result, "check_before")
    before = status_of(result, "status_before")
    assert before["tree"]["kind"] == "ours", before
    assert BUILD_ID.search(before["reason"]), before["reason"]
    assert result.rc("sync") == 0, tool_said(result, "sync")
    assert result.rc("check_after") == FRESH, tool_said(result, "check_after")
    assert status_of(result, "status")["build_id"] == guest.corpus.expected["build_id"]
    assert result["utsrelease"] == f'#define UTS_RELEASE "{guest.release}"'

    assert boot.tree_copy is not None and boot.planted_copy is not None
    seen, seen_other = compile_consumer(boot.tree_copy), compile_consumer(boot.planted_copy)
    assert seen["kh_version_code"] != seen_other["kh_version_code"]
    assert seen["kh_version_code"] >> 16 == int(guest.release.split(".")[0])
    assert seen["kh_sizeof_file"] != seen_other["kh_sizeof_file"]


# --- consumers in the guest ---------------------------------------------------------------------


@pytest.mark.vm
def test_bcc_in_guest_compiles_and_attaches_kprobe_with_synced_tree_only(chains: Chains) -> None:
    # Debian 12's bcc 0.26 (clang 14) cannot parse 6.12's include/linux/bpf.h against its own
    # compat uapi bpf.h, whoever provides the headers: the consumer runs on the 6.1 kernel, in
    # the boot whose sync (scenario C) just replaced the tree.
    boot = chains.get(BCC_KERNEL, STALE)
    result = boot.result
    assert result.rc("sync") == 0, tool_said(result, "sync")
    assert result["bcc_tree"] == result["target"]  # the tree that sync made
    assert result["kprobes"] == "1" and result["tracefs"] == "1"

    assert result.rc("bcc_with_tree") == 0, result["bcc_with_tree.err"][-3000:]
    seen = dict(line.split("=", 1) for line in result["bcc_with_tree.out"].splitlines())
    assert seen["compiled"] == "1" and seen["fired"] == "1" and seen["detached"] == "1"
    assert seen["attached"].endswith("sys_getpid")
    assert seen["tgid_matches"] == "1" and seen["comm"] == "python3.11"
    # The struct sizes bcc compiled in are what the host's clang gets from the same tree.
    assert boot.tree_copy is not None
    sizes = compile_consumer(boot.tree_copy)
    assert int(seen["sizeof_file"]) == sizes["kh_sizeof_file"]
    assert int(seen["sizeof_sock"]) == sizes["kh_sizeof_sock"]

    assert result["kheaders_unloaded"] == "1"
    assert result.rc("bcc_without_tree") != 0
    assert "compiled=1" not in result["bcc_without_tree.out"]


# --- module builds: the kernel judges the kbuild tree (Debian 6.1, reboot) ----------------------


@pytest.mark.vm
def test_module_built_against_the_kbuild_tree_loads_and_a_wrong_crc_is_refused(
    chains: Chains,
) -> None:
    """Built on the host before the boot against the tree `sync --kbuild` made for this kernel
    (tests/e2e/kbuild_modules.py): the kernel refuses the build whose Module.symvers has one wrong
    CRC, and loads the one built with the recovered Module.symvers (tests/test_kbuild.py)."""
    result = chains.get(KBUILD_KERNEL, REBOOT).result
    assert result["kbuild_loaded_before"] == "0"
    assert result.rc("kbuild_wrong") != 0
    dmesg = result["kbuild_dmesg"]
    assert f"kh_hello: disagrees about version of symbol {WRONG_SYMBOL}" in dmesg
    assert result.rc("kbuild_good") == 0, result["kbuild_good.err"]
    assert result["kbuild_proc_modules"].startswith("kh_hello ")
    assert f"kh_hello: loaded on {KBUILD_KERNEL.removeprefix('debian-')}" in dmesg
