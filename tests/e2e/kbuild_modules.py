"""The test module a guest loads: built on the host, before the boot, against the module-building
tree `sync --kbuild` made for the guest's kernel (tests/kbuild_util.py), once with the recovered
Module.symvers and once with a wrong CRC in it. The kernel itself is the judge."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import corpus_kernel
from tests.kbuild_util import (
    HELLO_NAME,
    KBUILD_KERNEL,
    build_hello,
    make_kbuild_root,
    tree_with_symvers,
    with_crc,
)

from . import vm

__all__ = ["KBUILD_KERNEL", "WRONG_SYMBOL", "prepare_kbuild_modules"]

# Seen as /run/kh-e2e/kbuild/{good,wrong}/kh_hello.ko in the guest (scenarios/kbuild.sh).
KBUILD_DIR = "kbuild"
WRONG_SYMBOL, WRONG_CRC = "init_uts_ns", 0x12345678


def prepare_kbuild_modules(state: vm.GuestState, kernel: str, work: Path) -> Path:
    k = make_kbuild_root(corpus_kernel(kernel), work)
    synced = k.cli("sync", "--kbuild")
    if synced.returncode != 0:
        raise AssertionError(f"sync --kbuild on the host: {synced.stderr}")
    tree = k.tree()
    wrong = with_crc((tree / "Module.symvers").read_bytes(), WRONG_SYMBOL, WRONG_CRC)
    builds = {
        "good": tree,
        "wrong": tree_with_symvers(tree, work / "wrong-tree", wrong),
    }
    out = state.exchange / KBUILD_DIR
    for name, build in builds.items():
        made = build_hello(build, out / name)
        if made.returncode != 0:
            raise AssertionError(f"building {HELLO_NAME} ({name}): {made.stdout}{made.stderr}")
    return out
