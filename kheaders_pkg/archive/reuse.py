"""Files already published that a new tree can hard-link instead of writing: any kernel's, any
generation's.

A machine carries two or three kernels, and their header trees are 43-100% byte-identical (same
source with another config or build: all of it; 6.1 -> 6.12: 57%). Every complete generation (a
stamp and a manifest, publish.py) under the trees directories is indexed from its manifest, never
by hashing trees: sha256 -> the first published file with that digest, one entry per digest, so
memory grows with the distinct files, not with the number of kernels (and is capped).

The manifest is only a hint of where an equal file may be. What makes a link sound is the check
after it: the linked inode, read through the new name, must hold exactly the member's bytes (which
are in memory, and whose sha256 the manifest of the new tree records), be ours, and have the
member's mode. So a published file that was changed after its generation was made (an appended
line, a same-size edit, a truncation: whatever `verify` would report) is never linked into a new
generation: it is written fresh. Comparing bytes already in memory costs one read of the old file,
less than hashing it. The check is on the inode itself, after the link, so nothing can swap it in
between; a later change to a shared inode changes every tree holding it, as for any hard link, and
`verify` of either tree reports it.

The mtime is not compared: it lives in the shared inode and differs between kernels
(gen_kheaders.sh stamps members with KBUILD_BUILD_TIMESTAMP), and neither the manifest, `verify`,
nor the tools that read headers use it; a shared file keeps the mtime of its first publication.
The previous generation of the same release is indexed first, so a re-sync keeps the archive's
mtimes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kheaders_pkg.archive.manifest import parse_manifest
from kheaders_pkg.errors import ManifestError
from kheaders_pkg.layout import MANIFEST_NAME

# One entry is ~200 bytes (digest, path, tuple): 100k distinct files (~14 kernels of ~7k files
# with nothing in common) stay under 20 MiB. Beyond that, files are written, never wrongly linked.
INDEX_MAX = 100_000
WHOLE_MAX = 1 << 20  # extract.py holds members up to this size in memory; larger are streamed
BUFFER_MAX = (
    8 << 20
)  # a larger member is buffered (to compare) only if a published file has its size
_DIR_FDS = 16  # directory descriptors kept open per source tree (members arrive sorted)

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at a file's name must not hang the check.
_O_CHECK = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# A link is an optimisation: when it cannot be made, the file is written.
_LINK_FALLBACK = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOENT, errno.ENOTDIR, errno.ELOOP}
)


class DirFds:
    """Directory descriptors under a root, opened one component at a time with O_NOFOLLOW, and a
    few kept (LRU): members arrive sorted, so the same directories come back."""

    def __init__(self, root_fd: int, keep: int) -> None:
        self.root_fd = root_fd
        self.keep = keep
        self._fds: OrderedDict[str, int] = OrderedDict()

    def get(self, path: str) -> int:
        if not path:
            return self.root_fd
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        # Start from the deepest ancestor already open.
        base_fd, rest = self.root_fd, path
        probe = path
        while "/" in probe:
            probe = probe.rpartition("/")[0]
            found = self._fds.get(probe)
            if found is not None:
                base_fd, rest = found, path[len(probe) + 1 :]
                break
        fd = base_fd
        for part in rest.split("/"):
            new = os.open(part, _O_DIR, dir_fd=fd)
            if fd != base_fd:
                os.close(fd)
            fd = new
        self._fds[path] = fd
        while len(self._fds) > self.keep:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


@dataclass(frozen=True)
class Published:
    """Where a digest was found: the source tree (an index into the sources) and the path."""

    source: int
    path: str
    size: int


class Reuse:
    """The index over the source trees, and the checked link from them into a new tree."""

    def __init__(self, sources: list[DirFds], index: dict[bytes, Published]) -> None:
        self.sources = sources
        self.index = index
        self.large_sizes = frozenset(p.size for p in index.values() if p.size > WHOLE_MAX)
        self.disabled: set[int] = set()
        self.count = 0
        self.euid = os.geteuid()

    @classmethod
    def open(cls, trees: Sequence[Path], dest_fd: int, limit: int = INDEX_MAX) -> Reuse | None:
        """Index `trees` in order (the first tree with a digest wins); trees on another
        filesystem than `dest_fd`, or without a readable manifest, are left out."""
        dest_dev = os.fstat(dest_fd).st_dev
        sources: list[DirFds] = []
        index: dict[bytes, Published] = {}
        seen: set[tuple[int, int]] = set()
        for tree in trees:
            if len(index) >= limit:
                break
            try:
                root_fd = os.open(tree, _O_DIR)
            except OSError:
                continue
            st = os.fstat(root_fd)
            if st.st_dev != dest_dev or (st.st_dev, st.st_ino) in seen:
                os.close(root_fd)  # a link across filesystems fails (EXDEV): not worth trying
                continue
            seen.add((st.st_dev, st.st_ino))
            try:
                fd = os.open(MANIFEST_NAME, _O_CHECK, dir_fd=root_fd)
                with open(fd, encoding="utf-8") as f:
                    entries = parse_manifest(f.read())
            except (OSError, UnicodeDecodeError, ManifestError):
                os.close(root_fd)
                continue
            number = len(sources)
            sources.append(DirFds(root_fd, _DIR_FDS))
            for e in entries:
                if e.kind != "f" or e.sha256 is None:
                    continue
                key = bytes.fromhex(e.sha256)
                if key not in index:
                    index[key] = Published(number, e.path, e.size)
                    if len(index) >= limit:
                        break
        if not index:
            for s in sources:
                s.close()
                os.close(s.root_fd)
            return None
        return cls(sources, index)

    def close(self) -> None:
        for s in self.sources:
            s.close()
            os.close(s.root_fd)

    def has_size(self, size: int) -> bool:
        """Whether a member over WHOLE_MAX is worth buffering: a published file has its size."""
        return size <= BUFFER_MAX and size in self.large_sizes

    def link(self, digest: str, data: bytes, dest_dir_fd: int, leaf: str, mode: int) -> bool:
        """Hard-link a published file equal to `data` as `leaf`; False (nothing made) when there
        is none, it cannot be linked, or it is not exactly `data` with `mode` (module doc)."""
        hit = self.index.get(bytes.fromhex(digest))
        if hit is None or hit.size != len(data) or hit.source in self.disabled:
            return False
        parent, _, name = hit.path.rpartition("/")
        try:
            src_dir_fd = self.sources[hit.source].get(parent)
            os.link(
                name, leaf, src_dir_fd=src_dir_fd, dst_dir_fd=dest_dir_fd, follow_symlinks=False
            )
        except OSError as err:
            if err.errno == errno.EXDEV:
                self.disabled.add(hit.source)  # another mount of the same filesystem
            if err.errno in _LINK_FALLBACK:
                return False
            raise
        if not self._holds(dest_dir_fd, leaf, data, mode):
            os.unlink(leaf, dir_fd=dest_dir_fd)
            # The published file was changed: never offer it again in this run.
            del self.index[bytes.fromhex(digest)]
            return False
        self.count += 1
        return True

    def _holds(self, dir_fd: int, leaf: str, data: bytes, mode: int) -> bool:
        """The inode now at `leaf` is a regular file of ours with `mode` and exactly `data`."""
        try:
            fd = os.open(leaf, _O_CHECK, dir_fd=dir_fd)
        except OSError:
            return False  # a symlink (ELOOP) or anything else that is not a plain file
        try:
            st = os.fstat(fd)
            if not (
                stat.S_ISREG(st.st_mode)
                and st.st_uid == self.euid
                and stat.S_IMODE(st.st_mode) == mode
                and st.st_size == len(data)
            ):
                return False
            # Exactly st_size bytes (one read(2) for a regular file): a write after this check
            # is a write to every tree sharing the inode, which `verify` reports, as for any link.
            return _read_upto(fd, len(data)) == data
        except OSError:
            return False
        finally:
            os.close(fd)


def _read_upto(fd: int, limit: int) -> bytes:
    parts: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
