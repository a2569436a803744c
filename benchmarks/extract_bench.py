"""extract_archive vs `tar -xJf ARCHIVE -C DIR && sync -f DIR`, on each corpus archive.

Runs are interleaved (ours, tar, ours, tar, ...) so that a busy machine slows both alike; each run
gets a fresh directory on the same filesystem, and everything is synced before a run starts.
Prints the median of each and their ratio (the target is <= 1.0, the stretch 0.7).

    .venv/bin/python benchmarks/extract_bench.py [--runs 7] [--work DIR] [ARCHIVE...]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kheaders_pkg.archive.extract import extract_archive  # noqa: E402

CORPUS = Path(os.environ.get("KHEADERS_CORPUS", REPO.parent / "shared" / "corpus"))
_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """What the caller does after extracting: one syncfs() for the tree's filesystem."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)


def fresh(work: Path, name: str) -> Path:
    path = work / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    os.sync()  # the removal's writeback must not land in the next timing
    return path


def run_ours(archive: Path, dest: Path) -> float:
    start = time.perf_counter()
    extract_archive(archive, dest)
    syncfs(dest)
    return time.perf_counter() - start


def run_tar(archive: Path, dest: Path) -> float:
    start = time.perf_counter()
    subprocess.run(f"tar -xJf '{archive}' -C '{dest}' && sync -f '{dest}'", shell=True, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archives", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "work")
    args = parser.parse_args()
    archives = args.archives or sorted(CORPUS.glob("*/sysroot/sys/kernel/kheaders.tar.xz"))
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{'archive':40} {'ours s':>8} {'tar s':>8} {'ratio':>6}")
    for archive in archives:
        ours: list[float] = []
        tar: list[float] = []
        for _ in range(args.runs):
            ours.append(run_ours(archive, fresh(args.work, "ours")))
            tar.append(run_tar(archive, fresh(args.work, "tar")))
        name = archive.parent.parent.parent.parent.name if "sysroot" in archive.parts else archive
        o, t = statistics.median(ours), statistics.median(tar)
        print(f"{str(name):40} {o:8.3f} {t:8.3f} {o / t:6.2f}", flush=True)
    shutil.rmtree(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
