"""The one wrapper for every dpkg / rpm / rpmbuild call: output captured, failure -> PackagingError
whose message ends with the tool's own last stderr line."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from kheaders_pkg.errors import PackagingError


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a packaging tool; return its stdout, or raise PackagingError naming the tool."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            errors="replace",
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except OSError as e:
        raise PackagingError(f"{args[0]}: cannot run ({e.strerror})") from None
    if proc.returncode != 0:
        raise PackagingError(
            f"{args[0]} failed (exit {proc.returncode}): {last_line(proc.stderr or proc.stdout)}"
        )
    return proc.stdout
