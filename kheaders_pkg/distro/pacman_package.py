"""A generated tree as a pacman package: `<name>-<pkgver>-<pkgrel>-<arch>.pkg.tar.zst`.

A pacman package is a tar archive whose first members are its metadata: `.MTREE` (a gzipped
mtree(5) listing every member with its mode, mtime, size and digests: what `pacman -Qkk`
checks the installed files against), `.PKGINFO` (what libalpm reads to install it) and
`.BUILDINFO` (how it was built). All three are rendered from templates/pacman/; bsdtar writes
the archive with zstd, as makepkg does.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from kheaders_pkg.distro.base import tool
from kheaders_pkg.distro.contents import TreeFile, stage, tree_directories, verified_files
from kheaders_pkg.distro.identity import TreePackage, deb_package_name, tree_package
from kheaders_pkg.distro.render import render
from kheaders_pkg.errors import PackagingError
from kheaders_pkg.files import file_digests, sha256_file
from kheaders_pkg.kernel.machine import tree_arch
from kheaders_pkg.layout import Layout

PKGREL = "1"
EXTENSION = ".pkg.tar.zst"
PACKAGER = "kheaders-pkg (generated on this machine) <root@localhost>"
# zstd level 3 (libarchive's default): the kh-6.1.192 corpus tree (35 MB) packs to 6.5 MB, and
# the whole emission takes about a second on two cores.
ZSTD_OPTIONS = "zstd:compression-level=3"
METADATA = (".MTREE", ".PKGINFO", ".BUILDINFO")

# mtree(5) keeps these bytes as they are in a path; anything else is written as \ooo (libarchive
# reads octal escapes for any byte, so escaping more than needed is harmless).
_MTREE_SAFE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-,:@%^~/()[]{}"
)


def pacman_package_name(release: str) -> str:
    """pacman allows `[a-z0-9@._+-]` in names; Debian's mapping of a release yields a subset of
    that, so the package is called the same under dpkg and pacman."""
    return deb_package_name(release)


def tree_pacman_arch(tree: Path) -> str:
    """The package's architecture: the kernel's (its .config, else the archive's autoconf.h),
    whatever machine builds the package. The headers describe that kernel (arch/x86, arch/arm64)."""
    arch = tree_arch(tree)
    if arch is None:
        raise PackagingError(f"{tree}: its config names no architecture pacman packages exist for")
    return arch.pacman


def mtree_escape(path: str) -> str:
    return "".join(
        chr(b) if b in _MTREE_SAFE else f"\\{b:03o}"
        for b in path.encode("utf-8", "surrogateescape")
    )


@dataclass(frozen=True)
class MtreeEntry:
    """One member of the package as .MTREE lists it."""

    path: str  # mtree-escaped, relative to the package's top ("usr/src/...")
    kind: str  # "file", "dir" or "link"
    mode: str  # octal permission bits
    time: str  # seconds.nanoseconds, as bsdtar records the member's mtime
    size: int
    md5: str | None
    sha256: str | None
    link: str | None  # mtree-escaped symlink target


def _single_line(name: str, value: str) -> str:
    if "\n" in value or not value.strip():
        raise PackagingError(f".PKGINFO {name} would be empty or span lines: {value!r}")
    return value


def _build_date(package: TreePackage) -> int:
    """The stamp's creation time: the package of one generation is the same whenever it is
    built, as reproducible-builds asks of builddate."""
    try:
        created = datetime.fromisoformat(package.stamp.created.replace("Z", "+00:00"))
    except ValueError:
        raise PackagingError(f"stamp time {package.stamp.created!r} is not ISO 8601") from None
    return int(created.timestamp())


def _entry(staged: Path, relative: str, tree_file: TreeFile | None) -> MtreeEntry:
    st = (staged / relative).lstat()
    mode = f"{stat.S_IMODE(st.st_mode):o}"
    time = f"{st.st_mtime_ns // 1_000_000_000}.{st.st_mtime_ns % 1_000_000_000:09d}"
    path = mtree_escape(relative)
    if stat.S_ISDIR(st.st_mode):
        return MtreeEntry(path, "dir", mode, time, 0, None, None, None)
    if stat.S_ISLNK(st.st_mode):
        target = mtree_escape(os.readlink(staged / relative))
        return MtreeEntry(path, "link", mode, time, 0, None, None, target)
    if tree_file is not None and tree_file.md5 is not None and tree_file.sha256 is not None:
        md5, sha256 = tree_file.md5, tree_file.sha256
    else:
        md5, sha256 = file_digests(
            staged / relative, ("md5", "sha256"), "staged file", PackagingError
        )
    return MtreeEntry(path, "file", mode, time, st.st_size, md5, sha256, None)


def _copy_times(tree: Path, files: tuple[TreeFile, ...], dest: Path) -> None:
    """Give the staged directories and symlinks (new ones; regular files are hard links or
    copies that keep theirs) the tree's mtimes: the .MTREE and the archive then say what is on
    disk, which `pacman -Qkk` checks after a --dbonly registration."""
    inner = [d for d in tree_directories(files)] + [f.path for f in files if f.is_link]
    for relative in ["", *inner]:
        st = (tree / relative).lstat()
        os.utime(dest / relative, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def build_pacman_package(layout: Layout, tree: Path, out_dir: Path) -> Path:
    """Build the .pkg.tar.zst of the generated `tree` into `out_dir`; return its path."""
    tree = tree.absolute()
    package = tree_package(layout, tree)
    files = verified_files(tree)
    arch = tree_pacman_arch(tree)
    name = _single_line("pkgname", pacman_package_name(package.release))
    version = _single_line("pkgver", f"{package.version}-{PKGREL}")
    inside = PurePosixPath(package.inside_dir.lstrip("/"))
    # Every directory from usr/ down to the tree: pacman records shared directories per package
    # and removes one only when no other package lists it and it is empty.
    parents = [str(p) for p in reversed(inside.parents) if str(p) != "."]
    members = [*parents, str(inside)]
    members += [f"{inside}/{d}" for d in sorted(tree_directories(files))]
    members += [f"{inside}/{f.path}" for f in files]
    by_member = {f"{inside}/{f.path}": f for f in files}
    stamp = package.stamp
    context = {
        "name": name,
        "version": version,
        "arch": arch,
        "release": _single_line("release", package.release),
        "generation": package.generation,
        "id_kind": package.id_kind,
        "short_id": package.short_id,
        "provides": f"{package.provides_name}={version}",
        "size": sum(f.size for f in files),
        "builddate": _build_date(package),
        "packager": PACKAGER,
        "tool_version": _single_line("tool_version", stamp.tool_version),
        "archive_sha256": stamp.archive_sha256,
        "inside_dir": _single_line("path", package.inside_dir),
    }

    out_dir = out_dir.absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=out_dir, prefix=".build-pacman-"))
    try:
        staged = build / "root"
        stage(tree, files, staged / inside)
        _copy_times(tree, files, staged / inside)
        for parent in parents:
            (staged / parent).chmod(0o755)
        (staged / ".PKGINFO").write_text(render("pacman/PKGINFO.j2", **context))
        stamp_sha256 = sha256_file(tree / ".kheaders-pkg.json", "stamp", PackagingError)
        buildinfo = render("pacman/BUILDINFO.j2", stamp_sha256=stamp_sha256, **context)
        (staged / ".BUILDINFO").write_text(buildinfo)
        for meta in (".PKGINFO", ".BUILDINFO"):
            (staged / meta).chmod(0o644)
        entries = [_entry(staged, m, by_member.get(m)) for m in (*METADATA[1:], *members)]
        mtree = render("pacman/MTREE.j2", entries=entries).encode()
        (staged / ".MTREE").write_bytes(gzip.compress(mtree, mtime=0))
        (staged / ".MTREE").chmod(0o644)
        listing = build / "members"
        listing.write_bytes(b"".join(m.encode() + b"\0" for m in (*METADATA, *members)))
        result = out_dir / f"{name}-{version}-{arch}{EXTENSION}"
        partial = build / result.name
        # -n: exactly the listed members, in this order (metadata first, as libalpm reads it);
        # owner root whoever builds, as in the .MTREE.
        tool(
            [
                "bsdtar",
                "-c",
                "-n",
                "--null",
                "-T",
                listing,
                "-f",
                partial,
                "-C",
                staged,
                "--zstd",
                "--options",
                ZSTD_OPTIONS,
                "--uid",
                "0",
                "--gid",
                "0",
                "--uname",
                "root",
                "--gname",
                "root",
                "--no-fflags",
                "--no-xattrs",
                "--no-acls",
            ]
        )
        os.replace(partial, result)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return result
