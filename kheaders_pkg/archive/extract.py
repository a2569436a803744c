"""The kernel's headers archive -> a staging directory, streaming and safe; returns the manifest.

The archive (`kheaders.tar.xz`, made by the kernel's `gen_kheaders.sh`) is read once: xz.py decodes
it in a background thread, tar.py parses the stream, and this module writes the members. Nothing
in the archive is trusted: each member is checked before anything is written, every parent of a
member must be a directory this extraction created (tracked in memory), and files are opened with
O_NOFOLLOW|O_EXCL, so nothing is ever written outside `dest`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kheaders_pkg.archive.manifest import Entry
from kheaders_pkg.archive.names import PATH_MAX, show, symlink_target
from kheaders_pkg.archive.reuse import WHOLE_MAX, DirFds, Reuse
from kheaders_pkg.archive.tar import (
    EXTENDED,
    KINDS,
    LINKS,
    META_MAX,
    TYPE_NAMES,
    ZERO_BLOCK,
    TarInput,
    Truncated,
    check_global_pax,
    gnu_long,
    header_fields,
    member_path,
    nul_terminated,
    parse_pax,
    pax_mtime_ns,
)
from kheaders_pkg.archive.xz import Decompressed
from kheaders_pkg.errors import ArchiveError, FilesystemError
from kheaders_pkg.layout import FILE_MODE

_DIR_FDS = 32  # directory descriptors kept open (members arrive sorted, so few are needed)

_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one archive; real archives are ~6.4k-7.1k members and 30-38 MB of tar."""

    max_members: int = 100_000
    max_total_bytes: int = 1 << 30  # decompressed tar bytes, headers and padding included
    max_member_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name in ("max_members", "max_total_bytes", "max_member_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class ExtractResult:
    entries: tuple[Entry, ...]  # sorted by path; files and symlinks only
    archive_sha256: str  # sha256 of the compressed bytes read
    archive_size: int
    total_bytes: int  # sum of file sizes
    directories: int
    reused: int = 0  # files hard-linked from a published tree (archive/reuse.py) instead of written


_KIND_WORDS = {"d": "directory", "i": "directory", "f": "file", "l": "symlink"}


def _read_umask() -> int:
    """The process umask, without changing it (os.umask would, racily, for other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777  # unknown: always chmod explicitly


class _Extraction:
    """The state of one extraction: what exists under `dest` (in memory), and the manifest."""

    def __init__(self, root_fd: int, limits: Limits, reuse: Reuse | None, umask: int) -> None:
        self.root_fd = root_fd
        self.limits = limits
        self.reuse = reuse
        self.umask = umask
        self.dirs = DirFds(root_fd, _DIR_FDS)
        # What this extraction made, by path: "d" directory (a member), "i" directory made as
        # a parent (or the top), "f" file, "l" symlink. Only "d"/"i" may be written into.
        self.kinds: dict[str, str] = {"": "i"}
        self.files: dict[str, Entry] = {}
        self.entries: list[Entry] = []
        self.dir_mtimes: list[tuple[str, int]] = []
        self.members = 0
        self.directories = 0
        self.has_include = False

    # -- the loop ---------------------------------------------------------------------------

    def run(self, tar: TarInput) -> None:
        limits = self.limits
        long_name: bytes | None = None
        long_link: bytes | None = None
        pax: dict[str, bytes] = {}
        while True:
            try:
                header = tar.block()
            except Truncated:
                raise ArchiveError("truncated tar archive: partial header block") from None
            if header is None:
                if self.members or long_name or long_link or pax:
                    raise ArchiveError("truncated tar archive: no end-of-archive marker")
                raise ArchiveError("tar archive is empty")
            if header == ZERO_BLOCK:
                if long_name is not None or long_link is not None or pax:
                    raise ArchiveError("tar archive ends after an extended header")
                if not tar.rest_is_zero():
                    raise ArchiveError("data after the tar end-of-archive marker")
                return
            raw_name, typeflag, size, mode, mtime = header_fields(header)
            try:
                if typeflag in EXTENDED:
                    what = f"member {show(raw_name)}"
                    limit = PATH_MAX + 1 if typeflag in (b"L", b"K") else META_MAX
                    if size > limit:
                        raise ArchiveError(f"{what}: extended header of {size} bytes is too large")
                    data = tar.read(size)
                    if typeflag == b"L":
                        long_name = gnu_long(data, "GNU long name")
                    elif typeflag == b"K":
                        long_link = gnu_long(data, "GNU long link name")
                    elif typeflag == b"x":
                        pax = parse_pax(data, f"{what}: pax header")
                        for key in pax:
                            if key.startswith("GNU.sparse."):
                                raise ArchiveError(f"{what}: sparse files are not supported")
                    else:
                        check_global_pax(parse_pax(data, f"{what}: global pax header"), what)
                    continue
                # A real member: apply the extended headers, then check the final name.
                raw_link = nul_terminated(header[157:257]) if typeflag in LINKS else b""
                mtime_ns = mtime * 1_000_000_000
                if pax or long_name is not None or long_link is not None:
                    if "path" in pax:
                        raw_name = pax["path"]
                    elif long_name is not None:
                        raw_name = long_name
                    if "linkpath" in pax:
                        raw_link = pax["linkpath"]
                    elif long_link is not None:
                        raw_link = long_link
                    if "size" in pax:
                        if not pax["size"].isdigit():
                            raise ArchiveError(f"member {show(raw_name)}: malformed pax size")
                        size = int(pax["size"])
                    if "mtime" in pax:
                        mtime_ns = pax_mtime_ns(pax["mtime"], f"member {show(raw_name)}")
                    long_name = long_link = None
                    pax = {}
                self.members += 1
                if self.members > limits.max_members:
                    raise ArchiveError(f"archive has more than {limits.max_members} members")
                self.member(tar, typeflag, raw_name, raw_link, size, mode, mtime_ns)
            except Truncated:
                raise ArchiveError(f"truncated tar archive: member {show(raw_name)}") from None
            except OSError as err:
                raise FilesystemError(
                    f"cannot extract member {show(raw_name)}: {err.strerror or err}"
                ) from None

    def member(
        self,
        tar: TarInput,
        typeflag: bytes,
        raw_name: bytes,
        raw_link: bytes,
        size: int,
        mode: int,
        mtime_ns: int,
    ) -> None:
        kind = KINDS.get(typeflag)
        if kind is None:
            name = TYPE_NAMES.get(typeflag, f"unsupported member type {typeflag!r}")
            raise ArchiveError(f"member {show(raw_name)}: {name} not allowed")
        path = member_path(raw_name, kind == "d")
        if (
            mode & 0o7000
            or (mode & 0o002 and kind in ("f", "d"))
            or (size and kind != "f")
            or size > self.limits.max_member_bytes
        ):
            self.refuse(path, kind, size, mode)
        if path == "include" or path.startswith("include/"):
            self.has_include = True

        if kind == "d":
            self.directory(path, mtime_ns)
            return
        self.claim(path, kind)
        target = symlink_target(path, raw_link) if kind == "l" else ""
        parent, _, leaf = path.rpartition("/")
        parent_fd = self.parent_fd(path, parent)
        if kind == "f":
            # Every file is 0644: since 5.3 the archive holds only *.h (data; an exec bit on one is
            # an accident of the source checkout), and one mode for all makes verify's check exact.
            self.regular(tar, path, leaf, parent_fd, size, FILE_MODE, mtime_ns)
        elif kind == "l":
            os.symlink(target, leaf, dir_fd=parent_fd)
            os.utime(leaf, ns=(mtime_ns, mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
            self.kinds[path] = "l"
            self.entries.append(Entry(path, "l", 0, None, target))
        else:
            target_path = member_path(raw_link, False)
            original = self.files.get(target_path)
            if original is None:
                raise ArchiveError(
                    f"member {show(path)}: hard link to {show(target_path)}, "
                    "which is not an earlier regular file in the archive"
                )
            os.link(
                target_path,
                leaf,
                src_dir_fd=self.root_fd,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            )
            self.kinds[path] = "f"
            entry = Entry(path, "f", original.size, original.sha256, None)
            self.files[path] = entry
            self.entries.append(entry)

    def refuse(self, path: str, kind: str, size: int, mode: int) -> None:
        """Raise the error for a member with a mode or size that is not allowed."""
        what = f"member {show(path)}"
        if mode & 0o7000:
            raise ArchiveError(f"{what}: setuid, setgid or sticky bit set (mode {mode:o})")
        if mode & 0o002 and kind in ("f", "d"):
            raise ArchiveError(f"{what}: world-writable (mode {mode:o})")
        if kind != "f" and size:
            raise ArchiveError(f"{what}: a {_KIND_WORDS.get(kind, 'hard link')} with data")
        limit = self.limits.max_member_bytes
        raise ArchiveError(f"{what}: {size} bytes, over the limit of {limit} per member")

    # -- the tree ---------------------------------------------------------------------------

    def claim(self, path: str, kind: str) -> None:
        old = self.kinds.get(path)
        if old is None:
            return
        new_word = _KIND_WORDS.get(kind, "hard link")
        old_word = _KIND_WORDS[old]
        if old_word == new_word:
            raise ArchiveError(f"member {show(path)}: duplicate of an earlier {old_word}")
        raise ArchiveError(f"member {show(path)}: {new_word} would replace an earlier {old_word}")

    def parent_fd(self, path: str, parent: str) -> int:
        """The directory `parent` (created if missing, like tar): it must be one of ours."""
        kind = self.kinds.get(parent)
        if kind is None:
            self.make_parents(path, parent)
        elif kind not in ("d", "i"):
            raise ArchiveError(
                f"member {show(path)}: parent {show(parent)} is a {_KIND_WORDS[kind]}, "
                "not a directory: refusing to write through it"
            )
        return self.dirs.get(parent)

    def make_parents(self, path: str, parent: str) -> None:
        missing = []
        probe = parent
        while probe not in self.kinds:
            missing.append(probe)
            probe = probe.rpartition("/")[0]
        if self.kinds[probe] not in ("d", "i"):
            word = _KIND_WORDS[self.kinds[probe]]
            raise ArchiveError(
                f"member {show(path)}: parent {show(probe)} is a {word}, "
                "not a directory: refusing to write through it"
            )
        for p in reversed(missing):
            self.mkdir(p)
            self.kinds[p] = "i"

    def mkdir(self, path: str) -> None:
        parent, _, leaf = path.rpartition("/")
        fd = self.dirs.get(parent)
        os.mkdir(leaf, 0o755, dir_fd=fd)
        if self.umask & 0o755:
            os.chmod(leaf, 0o755, dir_fd=fd, follow_symlinks=True)
        self.directories += 1

    def directory(self, path: str, mtime_ns: int) -> None:
        old = self.kinds.get(path)
        if old == "i":  # made earlier as a parent, or the top directory
            self.kinds[path] = "d"
        elif old is not None:
            self.claim(path, "d")
        else:
            self.parent_fd(path, path.rpartition("/")[0])
            self.mkdir(path)
            self.kinds[path] = "d"
        if path:  # the top directory's mode and mtime are the caller's
            self.dir_mtimes.append((path, mtime_ns))

    def regular(
        self,
        tar: TarInput,
        path: str,
        leaf: str,
        parent_fd: int,
        size: int,
        mode: int,
        mtime_ns: int,
    ) -> None:
        self.kinds[path] = "f"
        reuse = self.reuse
        if size <= WHOLE_MAX or (reuse is not None and reuse.has_size(size)):
            data = tar.read(size)
            digest = hashlib.sha256(data).hexdigest()
            if reuse is None or not reuse.link(digest, data, parent_fd, leaf, mode):
                self.create(leaf, parent_fd, (data,), mode, mtime_ns)
        else:  # large: streamed, never whole in memory
            h = hashlib.sha256()
            self.create(leaf, parent_fd, _hashing(tar.pieces(size), h), mode, mtime_ns)
            digest = h.hexdigest()
        self.add_file(path, size, digest)

    def create(
        self,
        leaf: str,
        parent_fd: int,
        pieces: Iterable[bytes | memoryview],
        mode: int,
        mtime_ns: int,
    ) -> None:
        """A new file `leaf` in `parent_fd` (it must not exist) with its data, mode and mtime."""
        fd = os.open(leaf, _O_NEWFILE, mode, dir_fd=parent_fd)
        try:
            for piece in pieces:
                while piece:
                    piece = piece[os.write(fd, piece) :]
            if self.umask & mode:
                os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def add_file(self, path: str, size: int, digest: str) -> None:
        entry = Entry(path, "f", size, digest, None)
        self.files[path] = entry
        self.entries.append(entry)

    def finish_tree(self) -> None:
        # Directory mtimes last: creating their contents changed them.
        for path, mtime_ns in self.dir_mtimes:
            os.utime(path, ns=(mtime_ns, mtime_ns), dir_fd=self.root_fd, follow_symlinks=False)


def _hashing(pieces: Iterable[memoryview], h: hashlib._Hash) -> Iterator[memoryview]:
    for piece in pieces:
        h.update(piece)
        yield piece


# --------------------------------------------------------------------------------------------
# The entry point


def extract_archive(
    src: BinaryIO | Path,
    dest: Path,
    *,
    limits: Limits = DEFAULT_LIMITS,
    previous: Path | None = None,
    reuse_from: Sequence[Path] = (),
    progress: Callable[[int], None] | None = None,
) -> ExtractResult:
    """Extract the headers archive `src` into the empty directory `dest`.

    Raises ArchiveError for anything wrong with the archive and FilesystemError for a write that
    failed; either way the caller removes `dest`, and nothing outside it was touched. Files equal
    to one in `previous` (the same release's last tree, looked at first) or in `reuse_from`
    (published trees with their manifests) are hard-linked from there instead of written, after
    checking the linked inode holds exactly the member's bytes (archive/reuse.py). `progress`, if
    given, is called with the tar bytes consumed so far.
    """
    try:
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise FilesystemError(f"cannot open staging directory {dest}: {err.strerror}") from None
    try:
        if os.listdir(root_fd):
            raise FilesystemError(f"staging directory {dest} is not empty")
        sources = [*([previous] if previous is not None else []), *reuse_from]
        reuse = Reuse.open(sources, root_fd) if sources else None
        try:
            if isinstance(src, Path):
                try:
                    opened = open(src, "rb", buffering=0)
                except OSError as err:
                    raise ArchiveError(f"cannot read archive {src}: {err.strerror}") from None
                with opened:
                    return _extract_stream(opened, root_fd, limits, reuse, progress)
            return _extract_stream(src, root_fd, limits, reuse, progress)
        finally:
            if reuse is not None:
                reuse.close()
    finally:
        os.close(root_fd)


def _extract_stream(
    stream: BinaryIO,
    root_fd: int,
    limits: Limits,
    reuse: Reuse | None,
    progress: Callable[[int], None] | None,
) -> ExtractResult:
    state = _Extraction(root_fd, limits, reuse, _read_umask())
    try:
        with Decompressed(stream, limits.max_total_bytes) as decompressed:
            # run() returns only after reading the decoder's output to its end, so the xz
            # stream's index and check were verified and nothing follows it.
            chunks = iter(decompressed)
            state.run(TarInput(chunks if progress is None else _reporting(chunks, progress)))
        if not state.members:
            raise ArchiveError("tar archive has no members")
        if not state.has_include:
            raise ArchiveError("archive has no include/ directory: not a kernel headers archive")
        state.finish_tree()
    except OSError as err:
        raise FilesystemError(f"cannot extract: {err.strerror or err}") from None
    finally:
        state.dirs.close()
    return ExtractResult(
        entries=tuple(sorted(state.entries, key=lambda e: e.path)),
        archive_sha256=decompressed.meter.sha256.hexdigest(),
        archive_size=decompressed.meter.size,
        total_bytes=sum(e.size for e in state.entries),
        directories=state.directories,
        reused=reuse.count if reuse is not None else 0,
    )


def _reporting(chunks: Iterator[bytes], progress: Callable[[int], None]) -> Iterator[bytes]:
    done = 0
    for chunk in chunks:
        done += len(chunk)
        progress(done)
        yield chunk
