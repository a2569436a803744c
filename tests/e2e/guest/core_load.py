"""Run inside the guest: load a CO-RE object with libbpf, attach its kprobe, see it fire.

The object (core_probe.bpf.c) was compiled on the host against the tree's vmlinux.h; libbpf
relocates its field accesses against /sys/kernel/btf/vmlinux here. Debian 12's bpftool (7.1) has
no `autoattach`, so this is the small loader: libbpf's own C API through ctypes, nothing else.
Prints `key=value` lines; exit 0 only if the program saw this process read a known file.
"""

from __future__ import annotations

import ctypes
import os
import sys


class Seen(ctypes.Structure):
    _fields_ = [
        ("tgid", ctypes.c_uint32),
        ("reads", ctypes.c_uint32),
        ("ino", ctypes.c_uint64),
        ("comm", ctypes.c_char * 16),
    ]


def main(path: str) -> int:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    for name in (
        "bpf_object__open_file",
        "bpf_object__find_program_by_name",
        "bpf_object__find_map_by_name",
        "bpf_program__attach",
    ):
        getattr(lib, name).restype = ctypes.c_void_p
    lib.bpf_object__open_file.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    lib.bpf_object__load.argtypes = [ctypes.c_void_p]
    lib.bpf_object__find_program_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.bpf_object__find_map_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.bpf_program__attach.argtypes = [ctypes.c_void_p]
    lib.bpf_map__lookup_elem.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64,
    ]  # fmt: skip
    lib.bpf_link__destroy.argtypes = [ctypes.c_void_p]
    lib.bpf_object__close.argtypes = [ctypes.c_void_p]

    obj = lib.bpf_object__open_file(path.encode(), None)
    if not obj:
        print(f"opened=0\nerror={os.strerror(ctypes.get_errno())}")
        return 1
    rc = lib.bpf_object__load(obj)
    print(f"loaded={int(rc == 0)}")
    if rc != 0:
        print(f"error={os.strerror(-rc)}")
        return 1
    prog = lib.bpf_object__find_program_by_name(obj, b"on_vfs_read")
    link = lib.bpf_program__attach(prog)
    if not link:
        print(f"attached=0\nerror={os.strerror(ctypes.get_errno())}")
        return 1
    print("attached=1")
    # A procfs file: its inode number is i_ino as stat reports it (no overlay or 9p mapping).
    with open("/proc/version", "rb") as f:
        ino = os.fstat(f.fileno()).st_ino
        f.read(64)
    lib.bpf_link__destroy(link)
    key, seen = ctypes.c_uint32(os.getpid()), Seen()
    found = lib.bpf_map__lookup_elem(
        lib.bpf_object__find_map_by_name(obj, b"seen"),
        ctypes.byref(key), ctypes.sizeof(key), ctypes.byref(seen), ctypes.sizeof(seen), 0,
    ) == 0  # fmt: skip
    lib.bpf_object__close(obj)
    print(f"fired={int(found)}")
    if not found:
        return 1
    print(f"tgid_matches={int(seen.tgid == os.getpid())}")
    print(f"ino_matches={int(seen.ino == ino)}")
    print(f"comm={seen.comm.decode(errors='replace')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
