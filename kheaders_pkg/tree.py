"""What is at /lib/modules/$KVER/{build,source}: nothing, a tree we generated, or someone else's.

For trees we did not make, we collect what the distributions ship that can identify the kernel
a tree was built for (background.md 3); `verdict.decide()` compares it with the running kernel.
"""

from __future__ import annotations

import enum
import mmap
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from kheaders_pkg.errors import FilesystemError, KheadersError, UnsafePathError
from kheaders_pkg.files import read_if_present, sha256_if_present
from kheaders_pkg.layout import Layout, LinkName, PublishMode, inside_path_of_link
from kheaders_pkg.stamp import Stamp, StampError, has_stamp, read_stamp
from kheaders_pkg.sysext import ExtensionState, extension_state

# Files we read from foreign trees are small, except vmlinux (read through mmap).
_SMALL = 1 << 20


class TreeKind(enum.StrEnum):
    MISSING = "missing"
    OURS = "ours"
    FOREIGN = "foreign"


class LinkKind(enum.StrEnum):
    """What stands at build/ or source/ (lstat: a link is not followed)."""

    ABSENT = "absent"
    SYMLINK = "symlink"
    DIRECTORY = "directory"
    OTHER = "other"


@dataclass(frozen=True)
class LinkState:
    name: LinkName
    path: Path  # the link itself, on this machine
    kind: LinkKind
    target: str | None  # raw link text
    inside: str | None  # where it points, inside the root
    resolved: Path | None  # the directory it leads to on this machine, if it exists
    problem: str | None = None  # "dangling", "symlink loop", "not a directory"

    @property
    def is_tree(self) -> bool:
        return self.resolved is not None


@dataclass(frozen=True)
class ForeignFacts:
    """What a tree we did not make says about the kernel it is for (each None if absent)."""

    vmlinux_id: str | None = None  # Fedora/RHEL kernel-devel: build/vmlinux.id
    vmlinux_build_id: str | None = None  # Arch: notes of build/vmlinux
    vmlinux_btf_sha256: str | None = None  # Debian >= 6.12: BTF-only build/vmlinux
    config_sha256: str | None = None  # .config
    uts_version: str | None = None  # include/generated/utsversion.h (or compile.h)
    kernel_release: str | None = None  # include/config/kernel.release (informative only)
    unreadable: tuple[str, ...] = ()  # evidence files present but unreadable

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (
                self.vmlinux_id,
                self.vmlinux_build_id,
                self.vmlinux_btf_sha256,
                self.config_sha256,
                self.uts_version,
            )
        )


@dataclass(frozen=True)
class TreeState:
    release: str
    kind: TreeKind
    build: LinkState
    source: LinkState
    tree: Path | None = None  # the judged tree on this machine
    tree_inside: str | None = None
    stamp: Stamp | None = None
    stamp_error: str | None = None
    foreign: ForeignFacts | None = None
    owner: str | None = None  # the package owning a foreign tree, when asked
    extension: ExtensionState | None = None  # publish = sysext: our extension for this release

    @property
    def needs_btf(self) -> bool:
        return self.foreign is not None and self.foreign.vmlinux_btf_sha256 is not None


def read_link(layout: Layout, release: str, name: LinkName) -> LinkState:
    path = layout.link(release, name)
    link_inside = layout.link_inside(release, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return LinkState(name, path, LinkKind.ABSENT, None, None, None)
    except NotADirectoryError:
        return LinkState(name, path, LinkKind.ABSENT, None, None, None, "parent is not a directory")
    if stat.S_ISDIR(st.st_mode):
        return LinkState(name, path, LinkKind.DIRECTORY, None, link_inside, path)
    if not stat.S_ISLNK(st.st_mode):
        return LinkState(name, path, LinkKind.OTHER, None, None, None, "not a directory")
    try:
        target = os.readlink(path)
    except FileNotFoundError:  # removed between lstat and readlink (a concurrent swap or remove)
        return LinkState(name, path, LinkKind.ABSENT, None, None, None)
    inside = inside_path_of_link(link_inside, target)
    try:
        host = layout.host(inside)
    except UnsafePathError:
        return LinkState(name, path, LinkKind.SYMLINK, target, inside, None, "symlink loop")
    if not host.is_dir():
        problem = "dangling" if not os.path.lexists(host) else "not a directory"
        return LinkState(name, path, LinkKind.SYMLINK, target, inside, None, problem)
    return LinkState(name, path, LinkKind.SYMLINK, target, inside, host)


def _is_ours(layout: Layout, tree: Path) -> bool:
    """Ours: inside our trees directory and stamped (a stamp elsewhere proves nothing)."""
    try:
        tree.relative_to(layout.trees())
    except ValueError:
        return False
    return has_stamp(tree)


def tree_state(layout: Layout, release: str) -> TreeState:
    if layout.publish is PublishMode.SYSEXT:
        ext = extension_state(layout, release)
        # Without an extension of ours, judge what tools see at /lib/modules/$KVER (nothing, or
        # a distro's tree); with one, judge the tree its links lead to, merged or not.
        judged_layout = layout if ext.exists else replace(layout, publish=PublishMode.TREE)
        return replace(_links_tree_state(judged_layout, release), extension=ext)
    return _links_tree_state(layout, release)


def _links_tree_state(layout: Layout, release: str) -> TreeState:
    build = read_link(layout, release, LinkName.BUILD)
    source = read_link(layout, release, LinkName.SOURCE)
    # The build tree decides; a foreign source still makes the whole foreign, because bcc prefers
    # `source` when both are directories (background.md 4).
    judged: LinkState | None = None
    for link in (build, source):
        if link.resolved is not None and not _is_ours(layout, link.resolved):
            judged = link
            break
    if judged is not None and judged.resolved is not None:
        return TreeState(
            release,
            TreeKind.FOREIGN,
            build,
            source,
            tree=judged.resolved,
            tree_inside=judged.inside,
            foreign=foreign_facts(judged.resolved),
        )
    if build.resolved is not None:
        try:
            stamp: Stamp | None = read_stamp(build.resolved)
            error = None
        except StampError as e:
            stamp, error = None, str(e)
        return TreeState(
            release,
            TreeKind.OURS,
            build,
            source,
            tree=build.resolved,
            tree_inside=build.inside,
            stamp=stamp,
            stamp_error=error,
        )
    return TreeState(release, TreeKind.MISSING, build, source)


_UTS = re.compile(rb'^#define UTS_VERSION "(.*)"\s*$', re.MULTILINE)


def _small(path: Path) -> bytes | None:
    return read_if_present(path, _SMALL, "file of the tree", FilesystemError)


def foreign_facts(tree: Path) -> ForeignFacts:
    unreadable: list[str] = []
    vmlinux_id = None
    raw = _small(tree / "vmlinux.id")
    if raw is not None:
        vmlinux_id = raw.decode("ascii", "replace").strip().lower() or None

    vmlinux_build_id = vmlinux_btf = None
    vmlinux = tree / "vmlinux"
    if vmlinux.is_file():
        try:
            vmlinux_build_id, vmlinux_btf = _vmlinux_facts(vmlinux)
        except (KheadersError, OSError, ValueError) as e:
            unreadable.append(f"vmlinux ({e})")

    uts = None
    for name in ("include/generated/utsversion.h", "include/generated/compile.h"):
        raw = _small(tree / name)
        if raw is not None and (m := _UTS.search(raw)):
            uts = m.group(1).decode("utf-8", "replace")
            break

    release_raw = _small(tree / "include/config/kernel.release")
    return ForeignFacts(
        vmlinux_id=vmlinux_id,
        vmlinux_build_id=vmlinux_build_id,
        vmlinux_btf_sha256=vmlinux_btf,
        config_sha256=sha256_if_present(tree / ".config", "file of the tree", FilesystemError),
        uts_version=uts,
        kernel_release=release_raw.decode("utf-8", "replace").strip() if release_raw else None,
        unreadable=tuple(unreadable),
    )


def _vmlinux_facts(path: Path) -> tuple[str | None, str | None]:
    """Build id from vmlinux's notes (Arch) and the sha256 of its .BTF (Debian's BTF-only file)."""
    from kheaders_pkg.kernel.btf import btf_of_elf, btf_sha256
    from kheaders_pkg.kernel.elf import ELFFile
    from kheaders_pkg.kernel.notes import find_build_id

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        elf = ELFFile(m)
        build_id = find_build_id(elf.notes())
        btf = btf_of_elf(elf)  # the one BTF reader (kernel/btf.py)
        btf_sha = btf_sha256(btf) if btf else None
        del elf, btf
    return build_id, btf_sha
