"""Deferred registrations: when the package manager is busy, the request waits in
`<state>/queue/<release>.json` instead of failing or blocking.

A hook that runs under dpkg or rpm cannot call them (the frontend lock is held by its parent,
background section 5), so the request is written down and a later run drains it. One file per
release: a newer request for the same release replaces the older one.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import struct
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from kheaders_pkg.errors import FilesystemError, UsageError
from kheaders_pkg.layout import Layout, check_release

QUEUE_DIR = "queue"
# struct flock with native alignment: short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid (Python is built with 64-bit off_t, so F_GETLK is the 64-bit variant everywhere).
_FLOCK = "hhqqi"


class Action(enum.StrEnum):
    REGISTER = "register"
    UNREGISTER = "unregister"


@dataclass(frozen=True)
class Request:
    action: Action
    release: str
    family: str
    tree: str | None  # the tree's path inside the root, for REGISTER
    queued: str  # UTC time, ISO 8601
    reason: str  # why it was queued (which lock was held)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def lock_holder(path: Path) -> int | None:
    """The pid holding a POSIX (fcntl) lock on `path`, -1 for an OFD lock, None if unlocked.

    Only asks (F_GETLK): it neither takes the lock nor blocks, and never creates the file. Locks
    of this process are invisible to F_GETLK, which is fine: we never hold a package manager's.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise FilesystemError(f"cannot open lock {path}: {e.strerror}") from None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    finally:
        os.close(fd)
    l_type, _whence, _start, _len, pid = struct.unpack(_FLOCK, answer)
    return None if l_type == fcntl.F_UNLCK else pid


def first_held(locks: tuple[Path, ...]) -> str | None:
    """A one-line reason naming the first held lock in `locks`, or None."""
    for path in locks:
        pid = lock_holder(path)
        if pid is not None:
            who = f"process {pid}" if pid > 0 else "another process"
            return f"{path} is locked by {who}"
    return None


def queue_dir(layout: Layout) -> Path:
    return layout.state() / QUEUE_DIR


def queue_file(layout: Layout, release: str) -> Path:
    return queue_dir(layout) / f"{check_release(release)}.json"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def enqueue(layout: Layout, request: Request) -> Path:
    """Write `request` atomically, replacing any earlier one for the same release."""
    path = queue_file(layout, request.release)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(request.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise FilesystemError(f"cannot queue registration in {path.parent}: {e.strerror}") from None
    return path


def pending(layout: Layout) -> list[Request]:
    """Queued requests, oldest first; unreadable entries are skipped (and left for a human)."""
    directory = queue_dir(layout)
    if not directory.is_dir():
        return []
    requests: list[Request] = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            request = Request(
                action=Action(data["action"]),
                release=check_release(str(data["release"])),
                family=str(data["family"]),
                tree=None if data["tree"] is None else str(data["tree"]),
                queued=str(data["queued"]),
                reason=str(data["reason"]),
            )
        except (OSError, ValueError, KeyError, TypeError, UsageError):
            continue
        if path.name == f"{request.release}.json":
            requests.append(request)
    return sorted(requests, key=lambda r: r.queued)


def dequeue(layout: Layout, release: str) -> None:
    queue_file(layout, release).unlink(missing_ok=True)
