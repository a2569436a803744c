"""`kheaders-pkg verify`: a published tree, file by file, against its generation's manifest.

A generation is never modified after its rename (publish.py), so any difference is damage from
outside: configuration management rewriting /lib/modules (the "corrupted by chef" report), an
editor, a bad disk. `check` compares identities, not files (it must stay cheap at boot), and bcc
compiles against whatever is there; so this reads every file (~30 MB) and `sync --verify` makes
a new generation when anything differs. A damaged generation is never repaired in place: readers
may hold it open.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kheaders_pkg.archive.manifest import Entry, parse_manifest, render_manifest
from kheaders_pkg.errors import KheadersError, ManifestError
from kheaders_pkg.files import sha256_file
from kheaders_pkg.layout import DIR_MODE, FILE_MODE, MANIFEST_NAME, STAMP_NAME, Layout
from kheaders_pkg.stamp import StampError, read_stamp

log = logging.getLogger("kheaders-pkg")

SHOWN = 5  # damaged paths named in the one-line summary; the rest are counted


class DamageKind(enum.StrEnum):
    MISSING = "missing"
    TYPE = "type"  # a different kind of file (a symlink for a file, a file for a directory, ...)
    SIZE = "size"
    CONTENT = "content"  # same size, different sha256
    TARGET = "target"  # a symlink leading elsewhere
    MODE = "mode"
    OWNER = "owner"
    EXTRA = "extra"  # not in the manifest
    UNREADABLE = "unreadable"
    MANIFEST = "manifest"  # the manifest itself is missing, malformed or not the stamp's


@dataclass(frozen=True)
class Damage:
    path: str  # relative to the tree
    kind: DamageKind
    detail: str

    def __str__(self) -> str:
        return f"{self.path} ({self.detail})"


@dataclass(frozen=True)
class Verification:
    """What verify found in one generation."""

    release: str
    tree: Path  # on this machine
    checked: int  # manifest entries compared
    damage: tuple[Damage, ...]

    @property
    def intact(self) -> bool:
        return not self.damage

    @property
    def manifest_trusted(self) -> bool:
        return not any(d.kind is DamageKind.MANIFEST for d in self.damage)

    def summary(self) -> str:
        shown = ", ".join(str(d) for d in self.damage[:SHOWN])
        more = len(self.damage) - SHOWN
        tail = f" and {more} more" if more > 0 else ""
        n = len(self.damage)
        return f"{n} damaged path{'s' if n != 1 else ''} in {self.tree}: {shown}{tail}"

    def to_json(self) -> dict[str, object]:
        return {
            "release": self.release,
            "tree": str(self.tree),
            "generation": self.tree.name,
            "checked": self.checked,
            "intact": self.intact,
            "damage": [
                {"path": d.path, "kind": str(d.kind), "detail": d.detail} for d in self.damage
            ],
        }


def verify_generation(tree: Path, release: str) -> Verification:
    """Every manifest entry present with its kind, size, sha256 (or link target), mode and owner;
    no file or directory the manifest does not account for."""
    try:
        entries = _trusted_entries(tree)
    except _Untrusted as err:
        damage = Damage(MANIFEST_NAME, DamageKind.MANIFEST, str(err))
        return Verification(release, tree, 0, (damage,))
    owner = os.lstat(tree).st_uid
    found = _walk(tree, entries, owner)
    # Below a directory that is gone or now a symlink or a file, an entry is reported through its
    # directory (lstat would follow such a symlink): one line for a deleted directory.
    bad_dirs = tuple(d.path + "/" for d in found)
    for e in entries:
        if e.path.startswith(bad_dirs):
            continue
        problem = _check_entry(tree, e, owner)
        if problem is not None:
            found.append(problem)
    found.sort(key=lambda d: d.path)
    return Verification(release, tree, len(entries), tuple(found))


class _Untrusted(Exception):
    pass


class _Unreadable(KheadersError):
    """A published file that cannot be read: damage to report, not a failure of `verify`."""


def _trusted_entries(tree: Path) -> tuple[Entry, ...]:
    """The manifest's entries, if the manifest is the one the stamp recorded."""
    try:
        stamp = read_stamp(tree)
    except StampError as e:
        raise _Untrusted(f"stamp unreadable: {e}") from None
    try:
        fd = os.open(tree / MANIFEST_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _Untrusted(f"cannot read it: {e.strerror}") from None
    if hashlib.sha256(data).hexdigest() != stamp.manifest_sha256:
        raise _Untrusted("not the manifest the stamp recorded")
    try:
        return parse_manifest(data.decode())
    except (UnicodeDecodeError, ManifestError) as e:
        raise _Untrusted(str(e)) from None


def _check_entry(tree: Path, e: Entry, owner: int) -> Damage | None:
    where = tree / e.path
    try:
        st = os.lstat(where)
    except FileNotFoundError:
        return Damage(e.path, DamageKind.MISSING, "missing")
    except OSError as err:
        return Damage(e.path, DamageKind.UNREADABLE, f"unreadable: {err.strerror}")
    if e.kind == "l":
        if not stat.S_ISLNK(st.st_mode):
            return Damage(e.path, DamageKind.TYPE, "not a symlink")
        target = os.readlink(where)
        if target != e.target:
            return Damage(e.path, DamageKind.TARGET, f"leads to {target!r}, not {e.target!r}")
        return None
    if not stat.S_ISREG(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        return Damage(e.path, DamageKind.TYPE, what)
    if st.st_size != e.size:
        return Damage(e.path, DamageKind.SIZE, f"size {st.st_size}, not {e.size}")
    mode = stat.S_IMODE(st.st_mode)
    if mode != FILE_MODE:
        return Damage(e.path, DamageKind.MODE, f"mode {mode:04o}")
    if st.st_uid != owner:
        return Damage(e.path, DamageKind.OWNER, f"owned by uid {st.st_uid}")
    try:
        digest = sha256_file(where, "published file", _Unreadable, follow_symlinks=False)
    except _Unreadable as err:
        return Damage(e.path, DamageKind.UNREADABLE, str(err))
    if digest != e.sha256:
        return Damage(e.path, DamageKind.CONTENT, "content differs")
    return None


def _walk(tree: Path, entries: tuple[Entry, ...], owner: int) -> list[Damage]:
    """What is on disk but not in the manifest, and directories that are not as we made them."""
    files = {e.path for e in entries}
    dirs = {""}
    for e in entries:
        parent = e.path.rpartition("/")[0]
        while parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    damage: list[Damage] = []

    def onerror(err: OSError) -> None:
        rel = os.path.relpath(err.filename or tree, tree)
        damage.append(Damage(rel, DamageKind.UNREADABLE, f"unreadable: {err.strerror}"))

    # os.fwalk never follows symlinks and reads through directory fds: a directory swapped for a
    # symlink during the walk cannot lead it out of the tree.
    for top, subdirs, names, in_fd in os.fwalk(tree, onerror=onerror, follow_symlinks=False):
        base = os.path.relpath(top, tree)
        base = "" if base == "." else base + "/"
        keep = []
        for name in subdirs:
            rel = base + name
            st = os.stat(name, dir_fd=in_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                names.append(name)  # a symlink to a directory: judged as a file below
            elif rel not in dirs:
                damage.append(Damage(rel, DamageKind.EXTRA, "a directory not in the manifest"))
            else:
                if stat.S_IMODE(st.st_mode) != DIR_MODE:
                    mode = stat.S_IMODE(st.st_mode)
                    damage.append(Damage(rel, DamageKind.MODE, f"directory mode {mode:04o}"))
                elif st.st_uid != owner:
                    damage.append(Damage(rel, DamageKind.OWNER, f"owned by uid {st.st_uid}"))
                keep.append(name)
        subdirs[:] = keep
        for name in names:
            rel = base + name
            if rel in dirs:
                damage.append(Damage(rel, DamageKind.TYPE, "not a directory"))
            elif rel not in files and rel not in (STAMP_NAME, MANIFEST_NAME):
                damage.append(Damage(rel, DamageKind.EXTRA, "not in the manifest"))
    for rel in sorted(dirs - {""}):
        if not os.path.lexists(tree / rel) and not any(
            rel.startswith(d.path + "/") for d in damage
        ):
            damage.append(Damage(rel, DamageKind.MISSING, "directory missing"))
    return damage


# --- the published tree -------------------------------------------------------------------------


def published_generation(layout: Layout, release: str) -> Path | None:
    """The generation of ours that `build` leads to, or None (missing, or a distro tree)."""
    from kheaders_pkg.tree import TreeKind, tree_state

    state = tree_state(layout, release)
    if state.kind is not TreeKind.OURS or state.tree is None:
        return None
    return state.tree


@contextmanager
def intact_files(layout: Layout, verified: Verification) -> Iterator[Path | None]:
    """For build_generation(previous=...): a private directory holding hard links to the files of
    `verified` that still match the manifest, and a manifest of just those, so that a new
    generation shares only intact inodes with the damaged one. None when its manifest cannot be
    trusted: then nothing is shared. Removed afterwards."""
    from kheaders_pkg.publish import new_staging, remove_tree, write_new_file

    if not verified.manifest_trusted:
        yield None
        return
    entries = parse_manifest((verified.tree / MANIFEST_NAME).read_text())
    damaged = {d.path for d in verified.damage}
    damaged_dirs = tuple(p + "/" for p in damaged)
    staging = new_staging(layout, verified.release)
    try:
        kept: list[Entry] = []
        for e in entries:
            if e.kind != "f" or e.path in damaged or e.path.startswith(damaged_dirs):
                continue
            dest = staging / e.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(verified.tree / e.path, dest, follow_symlinks=False)
            except OSError:
                continue  # not shared: written afresh
            kept.append(e)
        write_new_file(staging, MANIFEST_NAME, render_manifest(kept).encode())
        log.debug("%d of %d files intact and shared", len(kept), len(entries))
        yield staging
    finally:
        remove_tree(staging)
