"""Where a full regeneration's time goes (figure 2): `python -m benchmarks.profile [KERNEL...]`.

Runs `sync` in-process under cProfile into an empty scratch root, then sorts the main thread's
time into phases by the function that spent it. Decompression runs in a background thread
(cProfile sees only the main thread), so it is also timed alone, and the main thread's waits on
the decompression queue show how much of it was not overlapped.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import lzma
import os
import pstats
import secrets
import sys
import time
from pathlib import Path

from benchmarks.figures import KERNELS, archive, sysroot
from benchmarks.harness import REPO, remove

# Phase of a profile entry, by (file suffix, function name); the first match wins.
PHASES: tuple[tuple[str, str, str], ...] = (
    ("", "syncfs", "syncfs"),
    ("", "<built-in method _hashlib.openssl_sha256>", "hashing"),
    ("", "<method 'update' of '_hashlib.HASH' objects>", "hashing"),
    ("", "<method 'hexdigest' of '_hashlib.HASH' objects>", "hashing"),
    ("", "<method 'acquire' of '_thread.lock' objects>", "waiting for decompression"),
    ("", "<method 'decompress' of '_lzma.LZMADecompressor' objects>", "decompression"),
    ("", "<built-in method posix.open>", "file creation"),
    ("", "<built-in method posix.write>", "file creation"),
    ("", "<built-in method posix.close>", "file creation"),
    ("", "<built-in method posix.utime>", "file creation"),
    ("", "<built-in method posix.mkdir>", "file creation"),
    ("", "<built-in method posix.fchmod>", "file creation"),
    ("", "<built-in method posix.chmod>", "file creation"),
    ("", "<built-in method posix.symlink>", "file creation"),
    ("", "<built-in method posix.link>", "file creation"),
    ("", "<built-in method posix.stat>", "file creation"),
    ("archive/extract.py", "", "tar parsing and checks (Python)"),
    ("archive/tar.py", "", "tar parsing and checks (Python)"),
    ("archive/names.py", "", "tar parsing and checks (Python)"),
    ("archive/manifest.py", "", "tar parsing and checks (Python)"),
    ("archive/xz.py", "", "tar parsing and checks (Python)"),
    ("regenerate.py", "", "augment (.config, auto.conf, manifest, stamp)"),
    ("kconfig.py", "", "augment (.config, auto.conf, manifest, stamp)"),
)


def phase_of(filename: str, function: str) -> str:
    for suffix, name, phase in PHASES:
        if (not suffix or filename.endswith(suffix)) and (not name or function == name):
            return phase
    return "other (imports, CLI, judge, publish)"


def profile_sync(kernel: str, workdir: Path) -> tuple[float, dict[str, float], str]:
    from kheaders_pkg.cli import main as cli_main

    root = workdir / "root"
    root.mkdir(parents=True)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    code = cli_main(["--root", str(root), "--kernel-fs", str(sysroot(kernel)), "-q", "sync"])
    prof.disable()
    wall = time.perf_counter() - start
    remove(root)
    if code != 0:
        raise RuntimeError(f"sync {kernel} exited {code}")
    stats = pstats.Stats(prof)
    phases: dict[str, float] = {}
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, tottime, _, _) in raw.items():
        key = phase_of(filename, function)
        phases[key] = phases.get(key, 0.0) + tottime
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
    return wall, phases, out.getvalue()


def decompression_alone(kernel: str) -> float:
    data = archive(kernel).read_bytes()
    start = time.perf_counter()
    lzma.decompress(data, format=lzma.FORMAT_XZ)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    p.add_argument("kernels", nargs="*", default=list(KERNELS))
    p.add_argument("--top", action="store_true", help="also print cProfile's top 15 functions")
    args = p.parse_args(argv)
    workdir = REPO / "scratch" / f"profile-{secrets.token_hex(3)}"
    os.makedirs(workdir)
    try:
        for kernel in args.kernels:
            wall, phases, top = profile_sync(kernel, workdir / kernel)
            xz = decompression_alone(kernel)
            print(f"## {kernel}: sync {wall:.2f}s under cProfile (main thread)")
            for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
                print(f"  {name:48s} {seconds:6.2f}s  {100 * seconds / wall:5.1f}%")
            print(f"  {'(xz decompression alone, single thread)':48s} {xz:6.2f}s")
            if args.top:
                print(top)
    finally:
        remove(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
