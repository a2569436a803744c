"""Writing trees: staging, generations, the atomic build/source swap, the lock, gc, divert/restore.

A generation directory appears only by renaming a complete, synced staging directory, and never
changes after that. `build` and `source` change only by renaming a new symlink over the old one.
So a reader following either link sees a complete old tree or a complete new tree, never a part.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kheaders_pkg.errors import BusyError, FilesystemError, KheadersError, UnsafePathError
from kheaders_pkg.layout import (
    DEFAULT_TREES_DIR,
    FILE_MODE,
    GENERATION_PREFIX,
    MANIFEST_NAME,
    STAGING_PREFIX,
    STAMP_NAME,
    VAR_TREES_DIR,
    Layout,
    LinkName,
    PublishMode,
)

log = logging.getLogger("kheaders-pkg")

TRASH_PREFIX = ".trash-"
TMP_LINK_SUFFIX = ".kheaders-pkg-new"
_GEN = re.compile(r"^gen-(\d{4,})-([0-9a-f]{1,40})$")

# Test-only fault injection: tests/test_reliability_crash.py sets KHEADERS_PKG_CRASH_AT=<point>
# to SIGKILL this process at a named point and prove that a crash there leaves a consistent root.
# It only ever kills this process itself; unset (always, outside those tests) it does nothing.
CRASH_ENV = "KHEADERS_PKG_CRASH_AT"


def crash_point(point: str) -> None:
    if os.environ.get(CRASH_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Generation:
    number: int
    name: str
    path: Path


def fs_error(what: str, e: OSError, kept: str = "previous tree kept") -> FilesystemError:
    reason = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        reason = "no space left on device"
    elif e.errno == errno.EROFS:
        reason = "read-only file system"
    return FilesystemError(f"{what}: {reason}; {kept}")


# --- directories we own ---------------------------------------------------------------------


def _check_owned_dir(path: Path) -> None:
    """Our directories must be real directories, ours, and not writable by others."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{path} is a symlink; refusing to write through it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafePathError(f"{path} is owned by uid {st.st_uid}, not us; refusing to use it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(f"{path} is writable by others (mode {st.st_mode & 0o7777:o})")


def ensure_own_dir(path: Path) -> Path:
    """mkdir -p for a directory of ours (0755), then check it is safe to write in."""
    try:
        if not os.path.lexists(path):
            os.makedirs(path, mode=0o755, exist_ok=True)
    except OSError as e:
        raise fs_error(f"cannot create {path}", e, "nothing changed") from None
    _check_owned_dir(path)
    return path


def own_dir(layout: Layout, inside: str) -> Path:
    """One of our configured directories (trees, state), checked as itself.

    `layout.host()` resolves every symlink, which would hide one at the directory's own name and
    let `_check_owned_dir` pass on whatever it points to: resolve only the parent.
    """
    p = PurePosixPath(inside)
    return ensure_own_dir(layout.host(p.parent) / p.name)


def ensure_modules_dir(layout: Layout, release: str) -> Path:
    """/lib/modules/$KVER exists for any installed kernel; a bare kernel may lack it."""
    path = layout.modules_dir(release)
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as e:
        raise fs_error(f"cannot create {path}", e, "nothing changed") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} is not a directory")
    return path


# --- the lock ---------------------------------------------------------------------------------


@contextmanager
def locked(layout: Layout, timeout: float) -> Iterator[None]:
    """One lock for every run that writes (sync, gc, restore, remove), on the trees' filesystem."""
    trees = own_dir(layout, layout.trees_dir)
    path = trees / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise fs_error(f"cannot open lock {path}", e, "nothing changed") from None
    try:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyError(
                        f"another kheaders-pkg run holds {path} (waited {timeout:g}s); "
                        "nothing changed"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        yield
    finally:
        os.close(fd)


# --- generations ------------------------------------------------------------------------------


def generations(layout: Layout, release: str) -> list[Generation]:
    base = layout.release_trees(release)
    try:
        names = os.listdir(base)
    except (FileNotFoundError, NotADirectoryError):
        return []
    gens = []
    for name in names:
        m = _GEN.match(name)
        if m:
            gens.append(Generation(int(m.group(1)), name, base / name))
    return sorted(gens, key=lambda g: g.number)


def complete_generations(trees_dir: Path) -> list[Path]:
    """Every generation under a trees directory with a stamp and a manifest (the stamp is written
    last: a generation with one is complete), releases by name, newest generation first."""
    found: list[Path] = []
    try:
        releases = sorted(os.scandir(trees_dir), key=lambda e: e.name)
    except OSError:
        return found
    for rel in releases:
        if rel.name.startswith(".") or not rel.is_dir(follow_symlinks=False):
            continue  # staging, trash, the lock; a symlink is not ours to follow
        try:
            gens = [e for e in os.scandir(rel.path) if _GEN.match(e.name)]
        except OSError:
            continue
        for g in sorted(gens, key=lambda e: e.name, reverse=True):
            p = Path(g.path)
            if (
                g.is_dir(follow_symlinks=False)
                and os.path.isfile(p / STAMP_NAME)
                and os.path.isfile(p / MANIFEST_NAME)
            ):
                found.append(p)
    return found


def published_generations(layout: Layout) -> list[Path]:
    """The complete generations of every kernel, under the trees directory in use and under the
    other place generations live (the default under /usr; /var for publish = sysext/var): after
    a switch of mode both hold trees that share files."""
    roots: list[Path] = []
    for inside in (layout.trees_dir, DEFAULT_TREES_DIR, VAR_TREES_DIR):
        with suppress(OSError, KheadersError):  # an unsafe or missing place holds none of ours
            root = layout.host(inside)
            if root.is_dir() and root not in roots:
                roots.append(root)
    return [g for root in roots for g in complete_generations(root)]


def generation_name(number: int, ident: str) -> str:
    return f"{GENERATION_PREFIX}{number:04d}-{ident[:12]}"


# --- durability -------------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def syncfs(path: Path) -> None:
    """One syncfs(2) for the whole tree instead of an fsync per file."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- staging ----------------------------------------------------------------------------------


def new_staging(layout: Layout, release: str) -> Path:
    """A fresh private directory next to the generations (same filesystem, for the rename)."""
    trees = own_dir(layout, layout.trees_dir)
    path = trees / f"{STAGING_PREFIX}{release}-{secrets.token_hex(4)}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise UnsafePathError(f"{path} already exists; refusing to reuse it") from None
    except OSError as e:
        raise fs_error(f"cannot create {path}", e, "nothing changed") from None
    return path


def write_new_file(base: Path, rel: str, data: bytes, mode: int = FILE_MODE) -> None:
    """Create base/rel (and its missing parents) without following any symlink inside base."""
    parts = rel.split("/")
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            with suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            nfd = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = nfd
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        ffd = os.open(parts[-1], flags, mode, dir_fd=fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(ffd, view) :]
            os.fchmod(ffd, mode)
        finally:
            os.close(ffd)
    finally:
        os.close(fd)


def finish_generation(layout: Layout, release: str, staging: Path, name: str) -> Path:
    """Sync the staging tree and rename it into place as a generation; returns its path."""
    base = ensure_own_dir(own_dir(layout, layout.trees_dir) / release)
    final = base / name
    os.chmod(staging, 0o755)
    crash_point("before-syncfs")
    syncfs(staging)
    crash_point("after-syncfs")
    try:
        os.rename(staging, final)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise UnsafePathError(f"{final} already exists; refusing to replace it") from None
        raise
    crash_point("after-rename-generation")
    fsync_dir(base)
    return final


def remove_tree(path: Path) -> None:
    """Remove a directory of ours: first out of sight (rename), then its contents."""
    if not os.path.lexists(path):
        return
    trash = path.parent / f"{TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}"
    os.rename(path, trash)
    crash_point("after-trash-rename")
    shutil.rmtree(trash)


def clean_leftovers(layout: Layout) -> list[Path]:
    """Staging and trash directories and temporary links left by an interrupted run.

    Called with the lock held, so nothing found here belongs to a live run.
    """
    removed: list[Path] = []
    trees = layout.trees()
    with suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(trees):
            if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                p = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            elif entry.is_dir(follow_symlinks=False):
                for sub in os.scandir(entry.path):
                    if sub.name.startswith(TRASH_PREFIX):
                        shutil.rmtree(sub.path)
                        removed.append(Path(sub.path))
        for release in os.listdir(trees):
            if release.startswith("."):
                continue
            with suppress(Exception):
                mdir = layout.modules_dir(release)
                for name in LinkName:
                    tmp = mdir / f".{name}{TMP_LINK_SUFFIX}"
                    if os.path.lexists(tmp):
                        tmp.unlink()
                        removed.append(tmp)
    for p in removed:
        log.info("removed leftover %s", p)
    return removed


# --- the links --------------------------------------------------------------------------------


def swap_link(layout: Layout, release: str, name: LinkName, target: str | None) -> None:
    """Point build/source at `target` with one rename (or remove the link when target is None)."""
    mdir = ensure_modules_dir(layout, release)
    link = mdir / str(name)
    if target is None:
        with suppress(FileNotFoundError):
            st = os.lstat(link)
            if not stat.S_ISLNK(st.st_mode):
                raise UnsafePathError(f"{link} is not a symlink; leaving it alone")
            link.unlink()
        fsync_dir(mdir)
        return
    tmp = mdir / f".{name}{TMP_LINK_SUFFIX}"
    with suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    crash_point(f"before-swap-{name}")
    try:
        # rename(2) of a symlink over a real directory fails (EISDIR/ENOTDIR/ENOTEMPTY): a
        # distro's directory can never be replaced by accident.
        os.rename(tmp, link)
    except OSError:
        with suppress(OSError):
            tmp.unlink()
        raise
    crash_point(f"after-swap-{name}")
    fsync_dir(mdir)


def check_links_writable(layout: Layout, release: str) -> None:
    """Fail before the expensive work when build/source could not be swapped afterwards (a
    read-only /lib/modules): the probe is the temporary link name swap_link itself uses.

    publish = sysext: the links go into an extension under /var/lib/extensions, which must be
    ours to write; publish = var: sync.py asks itself (a read-only /lib/modules is not fatal).
    """
    if layout.publish is PublishMode.SYSEXT:
        from kheaders_pkg.sysext import extensions_dir

        extensions_dir(layout)
        return
    if layout.publish is PublishMode.VAR:
        return
    mdir = ensure_modules_dir(layout, release)
    probe = mdir / f".{LinkName.BUILD}{TMP_LINK_SUFFIX}"
    try:
        with suppress(FileNotFoundError):
            probe.unlink()
        os.symlink(".", probe)
        probe.unlink()
    except OSError as e:
        raise fs_error(f"cannot write links in {mdir}", e, "nothing changed") from None


def read_record(layout: Layout, release: str) -> dict[str, str | None] | None:
    """The links we replaced for a release, as they were: {"build": target|None, "source": ...}."""
    path = layout.diverted_record(release)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FilesystemError(f"{path}: unreadable record of replaced links ({e})") from None
    if not isinstance(data, dict) or not all(
        k in ("build", "source") and (v is None or isinstance(v, str)) for k, v in data.items()
    ):
        raise FilesystemError(f"{path}: malformed record of replaced links")
    return data


def write_record(layout: Layout, release: str, original: dict[str, str | None]) -> None:
    """Remember the original links once: the first record is the truth `restore` puts back."""
    if read_record(layout, release) is not None:
        return
    path = ensure_own_dir(own_dir(layout, layout.state_dir) / "links") / f"{release}.json"
    tmp = path.with_name(path.name + ".new")
    # A leftover (or planted) NAME.json.new is replaced, never written through.
    with suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write((json.dumps(original, indent=1, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(path.parent)


def drop_record(layout: Layout, release: str) -> None:
    with suppress(FileNotFoundError):
        layout.diverted_record(release).unlink()


# --- gc ---------------------------------------------------------------------------------------


def referenced(layout: Layout, release: str) -> set[Path]:
    from kheaders_pkg.tree import read_link

    out: set[Path] = set()
    for name in LinkName:
        link = read_link(layout, release, name)
        if link.resolved is not None:
            out.add(link.resolved)
    return out


def gc(layout: Layout, keep: int) -> list[Path]:
    """Remove generations nothing points to, keeping the `keep` newest of those per release."""
    crash_point("before-gc")
    removed: list[Path] = []
    trees = layout.trees()
    try:
        releases = sorted(r for r in os.listdir(trees) if not r.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for release in releases:
        if not stat.S_ISDIR(os.lstat(trees / release).st_mode):
            continue  # a symlink or a file there is not ours: never follow it to delete
        try:
            gens = generations(layout, release)
        except Exception:
            continue
        try:
            used = referenced(layout, release)
        except (OSError, KheadersError) as e:
            # Unsure what is in use: deleting nothing is the only safe answer.
            log.warning("gc skips %s: cannot read its links (%s)", release, e)
            continue
        unused = [g for g in gens if g.path not in used]
        doomed = unused[: max(0, len(unused) - keep)]
        for g in doomed:
            remove_tree(g.path)
            removed.append(g.path)
            log.info("removed unused generation %s", g.path)
        base = layout.release_trees(release)
        with suppress(OSError):
            if not os.listdir(base):
                os.rmdir(base)
    return removed
