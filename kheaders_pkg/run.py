"""The one place where kheaders-pkg runs another program: logging, environment, errors."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from kheaders_pkg.errors import KheadersError

log = logging.getLogger("kheaders-pkg")


class CommandError(KheadersError):
    """A program we ran failed; the message ends with the last line it printed on stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        last = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "")
        super().__init__(
            f"{argv[0]} failed (exit {returncode})" + (f": {last.strip()}" if last else "")
        )
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    error: type[KheadersError] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command in a C locale, capture its output, raise `error` or CommandError on failure."""
    args = [os.fspath(a) for a in argv]
    if shutil.which(args[0]) is None and not os.path.exists(args[0]):
        err = error or KheadersError
        raise err(f"{args[0]}: command not found")
    full_env = {**os.environ, "LC_ALL": "C.UTF-8", **(env or {})}
    log.debug("running %s", " ".join(args))
    proc = subprocess.run(
        args, env=full_env, cwd=cwd, input=input, capture_output=True, check=False
    )
    if check and proc.returncode != 0:
        failure = CommandError(args, proc.returncode, proc.stderr.decode("utf-8", "replace"))
        if error is not None:
            raise error(str(failure)) from failure
        raise failure
    return proc
