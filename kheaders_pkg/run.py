"""The one place where kheaders-pkg runs another program: logging, environment, errors.

`run()` waits for a command and captures its output; `spawn()` starts one whose pipes the caller
streams (the zstd decoder), with the same lookup, locale and logging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
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
    args, full_env = _prepare(argv, env, error)
    proc = subprocess.run(
        args, env=full_env, cwd=cwd, input=input, capture_output=True, check=False
    )
    if check and proc.returncode != 0:
        failure = CommandError(args, proc.returncode, proc.stderr.decode("utf-8", "replace"))
        if error is not None:
            raise error(str(failure)) from failure
        raise failure
    return proc


@contextlib.contextmanager
def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    error: type[KheadersError] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a command with stdin, stdout and stderr as pipes, for the caller to stream.

    Leaving the block by an exception kills the command; either way its pipes are closed and it
    is waited for, so no process outlives the block. The caller reads the exit status.
    """
    args, full_env = _prepare(argv, env, error)
    proc = subprocess.Popen(
        args,
        env=full_env,
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    except BaseException:
        proc.kill()
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        proc.wait()


def _prepare(
    argv: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str] | None,
    error: type[KheadersError] | None,
) -> tuple[list[str], dict[str, str]]:
    """The argument list and environment for a command; `error` if the command is not found."""
    args = [os.fspath(a) for a in argv]
    if shutil.which(args[0]) is None and not os.path.exists(args[0]):
        err = error or KheadersError
        raise err(f"{args[0]}: command not found")
    log.debug("running %s", " ".join(args))
    return args, {**os.environ, "LC_ALL": "C.UTF-8", **(env or {})}
