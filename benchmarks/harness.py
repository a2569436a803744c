"""Running, timing and comparing processes: the pieces every figure uses.

The machine is shared and noisy, so no figure is an absolute time: each is a ratio against a
baseline command run interleaved with ours in the same loop (ours, baseline, ours, baseline...),
and the ratio is taken pair by pair, so a burst of load hits both sides of a pair alike.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("KHEADERS_CORPUS", REPO.parent / "shared" / "corpus")).resolve()
VENV_PYTHON = REPO / ".venv" / "bin" / "python3"
TOOL = REPO / ".venv" / "bin" / "kheaders-pkg"


@dataclass(frozen=True)
class Run:
    """One finished child process."""

    wall: float  # seconds, fork to reap
    maxrss_kib: int  # the child's peak RSS (wait4 rusage; Linux gives KiB)
    returncode: int
    stdout: str = ""
    stderr: str = ""


class CommandFailed(Exception):
    def __init__(self, argv: Sequence[str], run: Run) -> None:
        super().__init__(
            f"{' '.join(map(str, argv))} exited {run.returncode}: "
            f"{(run.stderr or run.stdout).strip()[-400:]}"
        )
        self.run = run


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ok: Sequence[int] = (0,),
) -> Run:
    """Run argv to completion; wall time from spawn to reap, and the child's own peak RSS."""
    full_env = {**os.environ, **(env or {})}
    start = time.perf_counter()
    p = subprocess.Popen(
        [str(a) for a in argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        cwd=cwd,
    )
    out, err = p.stdout.read() if p.stdout else b"", p.stderr.read() if p.stderr else b""
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it again
    if p.stdout:
        p.stdout.close()
    if p.stderr:
        p.stderr.close()
    r = Run(
        wall,
        usage.ru_maxrss,
        p.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )
    if r.returncode not in ok:
        raise CommandFailed([str(a) for a in argv], r)
    return r


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass
class Result:
    """One row of the table."""

    figure: str
    case: str
    unit: str  # "s", "MiB", "x"...
    ours: Spread | None
    baseline: Spread | None
    ratio: Spread | None
    target: str  # e.g. "<= 1.3x"; "" for a figure that is reported only
    passed: bool | None  # None: no target, or not measurable here
    runs: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def interleaved(
    ours: Callable[[int], float],
    baseline: Callable[[int], float],
    n: int,
    *,
    warmup: int = 1,
) -> tuple[list[float], list[float], list[float]]:
    """(ours, baseline, per-pair ratios) over n interleaved pairs; the order alternates each pair
    so neither side always runs right after the other's cache-warming or write-back."""
    for i in range(warmup):
        ours(-1 - i)
        baseline(-1 - i)
    a: list[float] = []
    b: list[float] = []
    for i in range(n):
        if i % 2 == 0:
            a.append(ours(i))
            b.append(baseline(i))
        else:
            b.append(baseline(i))
            a.append(ours(i))
    return a, b, [x / y for x, y in zip(a, b, strict=True)]


def ratio_result(
    figure: str,
    case: str,
    ours: list[float],
    base: list[float],
    ratios: list[float],
    limit: float | None,
    *,
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> Result:
    """A row whose pass/fail is the median pair ratio against `limit` (None: report only)."""
    r = Spread.of(ratios)
    return Result(
        figure,
        case,
        "s",
        Spread.of(ours),
        Spread.of(base),
        r,
        f"<= {limit:g}x" if limit is not None else "",
        (r.median <= limit) if limit is not None else None,
        len(ours),
        note,
        extra or {},
    )


def remove(path: Path) -> None:
    """rm -rf of a directory the benchmarks made (never outside the work directory)."""
    if os.path.lexists(path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def tree_blocks(path: Path, *, seen: set[tuple[int, int]] | None = None) -> tuple[int, int]:
    """(bytes in st_blocks, bytes in st_blocks of inodes with st_nlink == 1), each inode once."""
    seen = set() if seen is None else seen
    total = single = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames, ""]:
            p = os.path.join(dirpath, name) if name else dirpath
            if name in dirnames:
                continue  # counted as its own dirpath
            st = os.lstat(p)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
            if st.st_nlink == 1 or os.path.isdir(p) and not os.path.islink(p):
                # A directory is never shared between generations: it is always new blocks.
                single += st.st_blocks * 512
    return total, single


def mib(n: float) -> float:
    return n / (1024 * 1024)
