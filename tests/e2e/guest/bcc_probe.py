"""Run inside the guest: compile probe.bpf.c with bcc, attach it to getpid, see it fire, detach.

Prints `key=value` lines; exit 0 only if the probe saw this process. bcc finds the kernel headers
the usual way (/lib/modules/$(uname -r)/{source,build}), which is what the test is about.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bcc import BPF  # type: ignore[import-untyped]


def main() -> int:
    source = Path(__file__).with_name("probe.bpf.c")
    try:
        bpf = BPF(src_file=str(source).encode())
    except Exception as exc:  # bcc raises a bare Exception when clang fails
        print(f"compiled=0\nerror={str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return 1
    print("compiled=1")
    event = bpf.get_syscall_fnname(b"getpid")
    bpf.attach_kprobe(event=event, fn_name=b"on_getpid")
    print(f"attached={event.decode()}")
    for _ in range(3):
        os.getpid()  # glibc does not cache getpid: each call is a syscall
    table = bpf[b"seen"]
    me = next((v for k, v in table.items() if k.value == os.getpid()), None)
    bpf.detach_kprobe(event=event)
    print(f"fired={int(me is not None)}")
    if me is None:
        return 1
    print(f"comm={me.comm.decode(errors='replace')}")
    print(f"tgid_matches={int(me.tgid == os.getpid())}")
    print(f"sizeof_file={me.sizes >> 32}")
    print(f"sizeof_sock={me.sizes & 0xFFFFFFFF}")
    bpf.cleanup()
    print("detached=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
