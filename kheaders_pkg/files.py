"""Reading a file whole, under a size bound, and hashing one: one home and one error policy.

The policy: a file that is not there (no such file, a parent that is not a directory, or a
directory in its place) is None where the caller says absence is an answer (`read_if_present`,
`sha256_if_present`); any other failure, and a file larger than its bound, is the caller's
`error` class with one line naming the file, so each reader keeps its documented exit code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from kheaders_pkg.errors import KheadersError

_CHUNK = 1 << 20  # bytes hashed per read: the file is never whole in memory
# What "not there" means: the path does not name a file (FileNotFoundError, a parent that is a
# file: NotADirectoryError, or a directory: IsADirectoryError).
_ABSENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def read_bounded(
    path: Path, limit: int, what: str, error: type[KheadersError] = KheadersError
) -> bytes:
    """All of `path`, at most `limit` bytes; `error` if it cannot be read or is larger."""
    data = _read(path, limit, what, error, absent_ok=False)
    assert data is not None
    return data


def read_if_present(
    path: Path, limit: int, what: str, error: type[KheadersError] = KheadersError
) -> bytes | None:
    """read_bounded(), or None when there is no file at `path`."""
    return _read(path, limit, what, error, absent_ok=True)


def _read(
    path: Path, limit: int, what: str, error: type[KheadersError], *, absent_ok: bool
) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        if absent_ok and isinstance(err, _ABSENT):
            return None
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is larger than {limit} bytes")
    return data


def file_digests(
    path: Path,
    algorithms: Sequence[str],
    what: str,
    error: type[KheadersError] = KheadersError,
    *,
    follow_symlinks: bool = True,
) -> tuple[str, ...]:
    """The hex digests of `path` under each of `algorithms` (hashlib names), read once.

    Without `follow_symlinks` a symlink at `path` is refused (O_NOFOLLOW): a tree's manifest
    vouches for the file itself, never for what a link swapped in under it leads to.
    """
    digests = _digests(path, algorithms, what, error, follow_symlinks, absent_ok=False)
    assert digests is not None
    return digests


def sha256_file(
    path: Path,
    what: str,
    error: type[KheadersError] = KheadersError,
    *,
    follow_symlinks: bool = True,
) -> str:
    """The sha256 of `path`, streamed; `error` if it cannot be read."""
    return file_digests(path, ("sha256",), what, error, follow_symlinks=follow_symlinks)[0]


def sha256_if_present(
    path: Path, what: str, error: type[KheadersError] = KheadersError
) -> str | None:
    """sha256_file(), or None when there is no file at `path`."""
    digests = _digests(path, ("sha256",), what, error, True, absent_ok=True)
    return digests[0] if digests is not None else None


def _digests(
    path: Path,
    algorithms: Sequence[str],
    what: str,
    error: type[KheadersError],
    follow_symlinks: bool,
    *,
    absent_ok: bool,
) -> tuple[str, ...] | None:
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    hashes = [hashlib.new(name, usedforsecurity=False) for name in algorithms]
    try:
        fd = os.open(path, flags)
        try:
            while chunk := os.read(fd, _CHUNK):
                for h in hashes:
                    h.update(chunk)
        finally:
            os.close(fd)
    except OSError as err:
        if absent_ok and isinstance(err, _ABSENT):
            return None
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    return tuple(h.hexdigest() for h in hashes)
