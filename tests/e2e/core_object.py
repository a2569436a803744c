"""The libbpf CO-RE object a guest loads: compiled on the host, before the boot, against the
vmlinux.h of the tree the guest's kernel already has (its earlier boot's sync made it)."""

from __future__ import annotations

from pathlib import Path

from tests.test_btf import compile_core_probe

from . import vm

# Seen as /run/kh-e2e/core_probe.bpf.o in the guest (scenarios/btf_consumers.sh).
CORE_OBJECT = "core_probe.bpf.o"


def prepare_core_object(state: vm.GuestState, release: str) -> Path:
    tree = state.resolve(f"/lib/modules/{release}/build")
    return compile_core_probe(tree, state.exchange / CORE_OBJECT)
