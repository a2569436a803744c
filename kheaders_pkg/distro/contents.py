"""The files of a generated tree, as its manifest lists them, checked before they are packaged;
and a staging copy made of hard links (same filesystem) so that no 35 MB copy is needed."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kheaders_pkg.archive.manifest import parse_manifest
from kheaders_pkg.errors import KheadersError, PackagingError
from kheaders_pkg.files import file_digests
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME


@dataclass(frozen=True)
class TreeFile:
    """One regular file or symlink of the tree, path relative to the tree's top."""

    path: str
    is_link: bool
    size: int
    md5: str | None  # regular files only: Debian's md5sums wants it
    link_target: str | None
    sha256: str | None = None  # regular files only: pacman's .MTREE wants it


def _manifest_entries(tree: Path) -> dict[str, tuple[str, str]]:
    """path -> (kind, sha256-or-link-target), from `.kheaders-pkg.manifest` (extract's format)."""
    try:
        entries = parse_manifest((tree / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, KheadersError) as err:
        raise PackagingError(f"{tree / MANIFEST_NAME}: unusable manifest ({err})") from None
    out: dict[str, tuple[str, str]] = {}
    for entry in entries:
        value = entry.sha256 if entry.kind == "f" else entry.target
        if value is None:  # parse_manifest refuses such lines; keep the types honest
            raise PackagingError(f"{tree / MANIFEST_NAME}: {entry.path}: no hash or target")
        out[entry.path] = (entry.kind, value)
    return out


def verified_files(tree: Path) -> tuple[TreeFile, ...]:
    """Every file of `tree` (manifest entries, stamp, manifest), each checked against the manifest.

    We package exactly what the manifest vouches for: an extra, missing or changed file means the
    tree is not the one that was stamped, and it is refused rather than shipped.
    """
    expected = _manifest_entries(tree)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(tree):
        here = Path(dirpath)
        # os.walk lists symlinks to directories among dirnames; a tree entry is never followed.
        for name in [d for d in dirnames if (here / d).is_symlink()]:
            dirnames.remove(name)
            filenames.append(name)
        found.extend((here / n).relative_to(tree).as_posix() for n in filenames)
    unlisted = sorted(set(found) - set(expected) - {STAMP_NAME, MANIFEST_NAME})
    missing = sorted(set(expected) - set(found))
    if unlisted or missing:
        what = f"unlisted {unlisted[0]!r}" if unlisted else f"missing {missing[0]!r}"
        count = len(unlisted) + len(missing)
        raise PackagingError(f"{tree}: does not match its manifest ({what}, {count} in all)")
    files: list[TreeFile] = []
    for path in sorted(found):
        host = tree / path
        st = host.lstat()
        kind, value = expected.get(path, ("f", ""))
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(host)
            if kind != "l" or target != value:
                raise PackagingError(f"{tree}: {path} differs from its manifest")
            files.append(TreeFile(path, True, 0, None, target))
        elif stat.S_ISREG(st.st_mode):
            sha, md5 = file_digests(host, ("sha256", "md5"), "file of the tree", PackagingError)
            if kind != "f" or (value and sha != value):
                raise PackagingError(f"{tree}: {path} differs from its manifest")
            files.append(TreeFile(path, False, st.st_size, md5, None, sha))
        else:
            raise PackagingError(f"{tree}: {path} is neither a file nor a symlink")
    return tuple(files)


def installed_size_kib(files: tuple[TreeFile, ...], directories: int) -> int:
    """What dpkg-gencontrol would put in Installed-Size: 1 KiB per started KiB of each file,
    1 for each symlink and directory."""
    return sum(-(-f.size // 1024) if not f.is_link else 1 for f in files) + directories


def tree_directories(files: tuple[TreeFile, ...]) -> set[str]:
    """The directories inside the tree that hold the files ("" is not counted)."""
    dirs: set[str] = set()
    for f in files:
        parent = PurePosixPath(f.path).parent
        while str(parent) != ".":
            dirs.add(str(parent))
            parent = parent.parent
    return dirs


def stage(tree: Path, files: tuple[TreeFile, ...], dest: Path) -> None:
    """Make `dest` a copy of `tree`: hard links where the filesystem allows, copies otherwise.

    `dest` must not exist; its parents are created 0755.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.mkdir(mode=0o755)
    dest.chmod(stat.S_IMODE(tree.stat().st_mode))
    for directory in sorted(tree_directories(files)):
        made = dest / directory
        made.mkdir()
        made.chmod(stat.S_IMODE((tree / directory).stat().st_mode))
    link = True
    for f in files:
        source, target = tree / f.path, dest / f.path
        if f.link_target is not None:
            os.symlink(f.link_target, target)
            continue
        if link:
            try:
                os.link(source, target, follow_symlinks=False)
                continue
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise PackagingError(f"cannot stage {source}: {e.strerror}") from None
                link = False  # another filesystem: copy from now on
        shutil.copy2(source, target, follow_symlinks=False)
