"""The consumers that read BTF or headers now, on a booted kernel, from our tree alone.

They run in the Debian 6.1 guest's boot that bcc runs in (test_boot.py, Chains: stale + bcc +
btf_consumers), after its sync, with kheaders.ko unloaded and no environment variable naming a
kernel source. The kh kernels are tinyconfig builds that cannot attach a tracing program at all;
that is asserted from their configs, and their vmlinux.h is still proven on the host (test_btf.py).
"""

from __future__ import annotations

import gzip
import hashlib

import pytest

from tests.conftest import corpus_kernel

from .test_boot import BCC_KERNEL, KH_A, KH_B, STALE, Chains, tool_said

# bpftrace and libbpf attach kprobes (or tracepoints) through perf events: without these the
# kernel has no program type for them (kernel/trace/Kconfig: BPF_EVENTS needs a probe source).
TRACING_OPTIONS = (
    "CONFIG_KPROBES",
    "CONFIG_KPROBE_EVENTS",
    "CONFIG_TRACEPOINTS",
    "CONFIG_BPF_EVENTS",
)


def parse_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.mark.vm
def test_bpftrace_includes_sched_h_from_the_tree_and_fails_without_it(chains: Chains) -> None:
    result = chains.get(BCC_KERNEL, STALE).result
    assert result.rc("sync") == 0, tool_said(result, "sync")
    assert result["btf_tree"] == result["target"]  # the tree that sync made
    assert result["kernel_source_vars"] == "0" and result["btf_archive_absent"] == "1"

    assert result.rc("bpftrace_with_tree") == 0, result["bpftrace_with_tree.err"][-3000:]
    seen = parse_lines(result["bpftrace_with_tree.out"])
    assert seen["fired"] == "1", result["bpftrace_with_tree.out"]
    assert seen["comm_len"] == "16"  # TASK_COMM_LEN, a macro only the headers have
    assert seen["tgid"] == seen["pid"] and seen["comm"] == "cat"

    assert result.rc("bpftrace_without_tree") != 0
    assert "fired=1" not in result["bpftrace_without_tree.out"]
    assert "sched.h" in result["bpftrace_without_tree.err"], result["bpftrace_without_tree.err"]


@pytest.mark.vm
def test_core_object_built_against_the_tree_vmlinux_h_loads_attaches_and_fires(
    chains: Chains,
) -> None:
    boot = chains.get(BCC_KERNEL, STALE)
    result = boot.result
    # The object was compiled against the vmlinux.h the guest's sync made again, byte for byte.
    assert boot.tree_copy is not None
    made = hashlib.sha256((boot.tree_copy / "vmlinux.h").read_bytes()).hexdigest()
    assert result["vmlinux_h_sha256"] == made

    assert result.rc("core_with_tree") == 0, (
        result["core_with_tree.out"] + result["core_with_tree.err"][-3000:]
    )
    seen = parse_lines(result["core_with_tree.out"])
    assert seen["loaded"] == "1" and seen["attached"] == "1" and seen["fired"] == "1"
    # CO-RE reads of task_struct (tgid, comm) and struct file (f_inode->i_ino) give real values.
    assert seen["tgid_matches"] == "1" and seen["ino_matches"] == "1"
    assert seen["comm"] == "python3.11"


@pytest.mark.parametrize("name", [KH_A, KH_B])
def test_kh_kernels_cannot_attach_tracing_programs_so_consumers_do_not_run_there(
    name: str,
) -> None:
    # Said, not skipped: these tinyconfig kernels have the bpf() syscall and BTF (their vmlinux.h
    # is made and compiled against in test_btf.py) but nothing a probe could attach to.
    config = gzip.decompress((corpus_kernel(name).sysroot / "proc/config.gz").read_bytes())
    lines = config.decode().splitlines()
    assert "CONFIG_BPF_SYSCALL=y" in lines and "CONFIG_DEBUG_INFO_BTF=y" in lines
    for option in TRACING_OPTIONS:
        assert not any(line.startswith(option + "=") for line in lines), option
