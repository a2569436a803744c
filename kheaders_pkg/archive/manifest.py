"""The manifest of a generated tree (`.kheaders-pkg.manifest`): entries, render, parse, verify.

One tab-separated line per regular file or symlink, sorted by path, the path last:
`f <sha256> <size> <path>` or `l <target> - <path>`. parse_manifest() refuses anything
render_manifest() would not write, so a damaged manifest is never half-trusted.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kheaders_pkg.archive.names import CONTROL, PLAIN_TEXT_PATH, check_components, show
from kheaders_pkg.errors import ArchiveError, FilesystemError, ManifestError
from kheaders_pkg.files import sha256_file

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SIZE_TEXT = re.compile(r"0|[1-9][0-9]{0,19}")


@dataclass(frozen=True)
class Entry:
    """One manifest line: a regular file or a symlink in the generated tree."""

    path: str  # relative, no "./", no trailing slash
    kind: Literal["f", "l"]
    size: int  # file size (0 for links)
    sha256: str | None  # files
    target: str | None  # links


def render_manifest(entries: Iterable[Entry]) -> str:
    """The manifest text: one tab-separated line per file or symlink, sorted by path, path last."""
    lines = []
    for e in sorted(entries, key=lambda e: e.path):
        _check_entry(e)
        if e.kind == "f":
            lines.append(f"f\t{e.sha256}\t{e.size}\t{e.path}\n")
        else:
            lines.append(f"l\t{e.target}\t-\t{e.path}\n")
    return "".join(lines)


def _check_entry(e: Entry) -> None:
    if not PLAIN_TEXT_PATH.fullmatch(e.path):
        what = f"manifest entry {show(e.path)}"
        if not e.path or e.path.startswith("/") or CONTROL.search(e.path):
            raise ManifestError(f"{what}: bad path")
        try:
            check_components(e.path.split("/"), what)
        except ArchiveError as err:
            raise ManifestError(str(err)) from None
    if e.kind == "f":
        if e.sha256 is None or not _SHA256_HEX.fullmatch(e.sha256) or e.size < 0 or e.target:
            what = f"manifest entry {show(e.path)}"
            raise ManifestError(f"{what}: a file needs a size and a sha256, and no target")
    elif e.kind == "l":
        if not e.target or CONTROL.search(e.target) or e.size != 0 or e.sha256 is not None:
            what = f"manifest entry {show(e.path)}"
            raise ManifestError(f"{what}: a symlink needs a target, and no size or sha256")
    else:
        raise ManifestError(f"manifest entry {show(e.path)}: unknown kind {e.kind!r}")


def parse_manifest(text: str) -> tuple[Entry, ...]:
    """The manifest text -> entries; strict: anything render_manifest would not write is refused."""
    if text and not text.endswith("\n"):
        raise ManifestError("manifest: last line is not terminated")
    entries: list[Entry] = []
    previous = ""
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 4:
            raise ManifestError(f"manifest line {number}: expected 4 tab-separated fields")
        kind, value, size, path = fields
        entry: Entry
        if kind == "f" and _SIZE_TEXT.fullmatch(size):
            entry = Entry(path, "f", int(size), value, None)
        elif kind == "l" and size == "-":
            entry = Entry(path, "l", 0, None, value)
        else:
            raise ManifestError(f"manifest line {number}: bad kind or size field")
        try:
            _check_entry(entry)
        except ManifestError as err:
            raise ManifestError(f"manifest line {number}: {err}") from None
        if entries and path <= previous:
            raise ManifestError(f"manifest line {number}: {show(path)} is not sorted or repeated")
        if entries and path.startswith(previous + "/"):
            raise ManifestError(f"manifest line {number}: {show(path)} is under a file or link")
        entries.append(entry)
        previous = path
    # Sorted by code point, a path "a/b" can follow "a-x" and still be under "a": check fully.
    names = {e.path for e in entries}
    for e in entries:
        parent = e.path.rpartition("/")[0]
        while parent:
            if parent in names:
                raise ManifestError(f"manifest: {show(e.path)} is under a file or link")
            parent = parent.rpartition("/")[0]
    return tuple(entries)


def verify_tree(tree: Path, entries: Iterable[Entry]) -> list[str]:
    """Compare a tree with its manifest entries; returns the problems found, [] if it matches."""
    problems: list[str] = []
    for e in entries:
        where = tree / e.path
        try:
            st = os.lstat(where)
        except FileNotFoundError:
            problems.append(f"missing: {e.path}")
            continue
        except OSError as err:
            problems.append(f"unreadable: {e.path}: {err.strerror}")
            continue
        if e.kind == "l":
            if not stat.S_ISLNK(st.st_mode):
                problems.append(f"kind: {e.path}: expected a symlink")
            elif os.readlink(where) != e.target:
                problems.append(f"target: {e.path}: expected {e.target!r}")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"kind: {e.path}: expected a regular file")
        elif st.st_size != e.size:
            problems.append(f"size: {e.path}: expected {e.size}, found {st.st_size}")
        else:
            try:
                digest = sha256_file(where, "file", FilesystemError, follow_symlinks=False)
            except FilesystemError as err:
                problems.append(f"unreadable: {e.path}: {err}")
                continue
            if digest != e.sha256:
                problems.append(f"hash: {e.path}: content differs")
    return problems
