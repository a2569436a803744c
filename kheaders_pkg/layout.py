"""Every path kheaders-pkg reads or writes, derived once from --root, --kernel-fs and the release.

Paths "inside" are as the target system sees them (absolute, like `/usr/src/...`); `Layout.host()`
maps them to where they are on this machine (under --root). Symlinks met on the way are
followed with the root as `/`, never out of it, the way `chroot` would see them: a scratch root
whose `lib` is an absolute symlink `/usr/lib` must not send us to the host's /usr/lib.
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kheaders_pkg.errors import UnsafePathError, UsageError

STAMP_NAME = ".kheaders-pkg.json"
MANIFEST_NAME = ".kheaders-pkg.manifest"
# Every regular file of a generated tree has this mode, every directory DIR_MODE: one mode for all
# makes the manifest's promise exact (verify needs no mode column).
FILE_MODE = 0o644
DIR_MODE = 0o755
DEFAULT_TREES_DIR = "/usr/src/kheaders-pkg"
DEFAULT_STATE_DIR = "/var/lib/kheaders-pkg"
# Where generations live when /usr cannot be written (image-based systems, background.md 8).
VAR_TREES_DIR = "/var/lib/kheaders-pkg/trees"
# The directory extensions systemd-sysext merges from that survives reboots (background.md 8).
EXTENSIONS_DIR = "/var/lib/extensions"
EXTENSION_PREFIX = "kheaders-pkg-"
CONFIG_PATH = "/etc/kheaders-pkg.toml"
MODULES_DIR = "/lib/modules"
LOCK_NAME = ".lock"
STAGING_PREFIX = ".staging-"
GENERATION_PREFIX = "gen-"
# Linux resolves at most 40 symlinks in one lookup (MAXSYMLINKS); so do we.
MAX_SYMLINKS = 40


class PublishMode(enum.StrEnum):
    """Where build/source are published (chosen once per run by sysext.publish_mode)."""

    TREE = "tree"  # links in /lib/modules/$KVER, generations under the trees dir
    SYSEXT = "sysext"  # links in a systemd-sysext extension under /var/lib/extensions
    VAR = "var"  # read-only /usr without systemd-sysext: generations under /var


class LinkName(enum.StrEnum):
    """The names under /lib/modules/$KVER that header consumers read (bcc, bpftrace, dkms)."""

    BUILD = "build"
    SOURCE = "source"


@dataclass(frozen=True)
class KernelFiles:
    """Where a live kernel exposes what we read, under --kernel-fs (default /)."""

    base: Path

    @property
    def osrelease(self) -> Path:
        return self.base / "proc/sys/kernel/osrelease"

    @property
    def version(self) -> Path:
        return self.base / "proc/sys/kernel/version"

    @property
    def notes(self) -> Path:
        return self.base / "sys/kernel/notes"

    @property
    def config_gz(self) -> Path:
        return self.base / "proc/config.gz"

    @property
    def archive(self) -> Path:
        return self.base / "sys/kernel/kheaders.tar.xz"

    @property
    def btf(self) -> Path:
        return self.base / "sys/kernel/btf/vmlinux"

    @property
    def modules(self) -> Path:
        """Loaded modules, to tell whether kheaders is loaded before we try to load it."""
        return self.base / "proc/modules"


def check_release(release: str) -> str:
    """A release is one path component; refuse anything that would walk the filesystem."""
    if (
        not release
        or release in (".", "..")
        or "/" in release
        or "\0" in release
        or "\n" in release
        or len(release.encode()) > 255
    ):
        raise UsageError(f"invalid kernel release {release!r}: must be one path component")
    return release


def resolve_inside(root: Path, inside: str | PurePosixPath) -> Path:
    """The host path of `inside` (an absolute path in the target root), following symlinks as if
    chrooted into `root`. The last component may be missing; every existing component is real.

    Raises UnsafePathError for a symlink loop. `..` at the top stays at the root, like the kernel.
    """
    parts = list(PurePosixPath("/", inside).parts[1:])
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            target = os.readlink(candidate)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
                # Not a link, or missing: take it as is; what follows cannot be a link either
                # if it does not exist.
                resolved.append(part)
                continue
            raise
        links += 1
        if links > MAX_SYMLINKS:
            raise UnsafePathError(
                f"too many levels of symbolic links resolving {inside} under {root}"
            )
        target_parts = list(PurePosixPath(target).parts)
        if target.startswith("/"):
            resolved = []
            target_parts = target_parts[1:]
        parts = target_parts + parts
    return root.joinpath(*resolved)


def inside_path_of_link(link_inside: str, target: str) -> str:
    """Where a symlink at `link_inside` points, as an absolute path inside the root."""
    if target.startswith("/"):
        return target
    return str(PurePosixPath(link_inside).parent / target)


def extension_name(release: str) -> str:
    """One extension per kernel release: it comes and goes with that kernel."""
    return f"{EXTENSION_PREFIX}{check_release(release)}"


@dataclass(frozen=True)
class Layout:
    """The target root and the kernel interface, and every path derived from them."""

    root: Path = Path("/")
    kernel_fs: Path = Path("/")
    trees_dir: str = DEFAULT_TREES_DIR  # inside the root
    state_dir: str = DEFAULT_STATE_DIR  # inside the root
    publish: PublishMode = PublishMode.TREE

    @property
    def kernel(self) -> KernelFiles:
        return KernelFiles(self.kernel_fs)

    def host(self, inside: str | PurePosixPath) -> Path:
        """Map an absolute path inside the target root to this machine, safely."""
        return resolve_inside(self.root, inside)

    # --- /lib/modules/$KVER -------------------------------------------------------------------
    def modules_dir_inside(self, release: str) -> str:
        return f"{MODULES_DIR}/{check_release(release)}"

    def modules_dir(self, release: str) -> Path:
        return self.host(self.modules_dir_inside(release))

    def links_dir_inside(self, release: str) -> str:
        """Where we publish build/source: /lib/modules/$KVER, or the same path in our extension."""
        if self.publish is PublishMode.SYSEXT:
            return f"{self.extension_inside(release)}/usr/lib/modules/{release}"
        return self.modules_dir_inside(release)

    def links_dir(self, release: str) -> Path:
        return self.host(self.links_dir_inside(release))

    def link_inside(self, release: str, name: LinkName) -> str:
        return f"{self.links_dir_inside(release)}/{name}"

    def link(self, release: str, name: LinkName) -> Path:
        """The host path of the `build`/`source` link itself (not followed)."""
        return self.links_dir(release) / str(name)

    def view_link_inside(self, release: str, name: LinkName) -> str:
        """/lib/modules/$KVER/{build,source}: what tools read (a merged extension shows there)."""
        return f"{self.modules_dir_inside(release)}/{name}"

    # --- systemd-sysext -----------------------------------------------------------------------
    def extensions(self) -> Path:
        return self.host(EXTENSIONS_DIR)

    def extension_inside(self, release: str) -> str:
        return f"{EXTENSIONS_DIR}/{extension_name(release)}"

    def extension(self, release: str) -> Path:
        return self.extensions() / extension_name(release)

    # --- our trees ----------------------------------------------------------------------------
    def trees(self) -> Path:
        return self.host(self.trees_dir)

    def release_trees_inside(self, release: str) -> str:
        return f"{self.trees_dir}/{check_release(release)}"

    def release_trees(self, release: str) -> Path:
        return self.host(self.release_trees_inside(release))

    def generation_inside(self, release: str, name: str) -> str:
        return f"{self.release_trees_inside(release)}/{name}"

    def lock_path(self) -> Path:
        return self.trees() / LOCK_NAME

    # --- state --------------------------------------------------------------------------------
    def state(self) -> Path:
        return self.host(self.state_dir)

    def diverted_record(self, release: str) -> Path:
        return self.state() / "links" / f"{check_release(release)}.json"

    def config_file(self) -> Path:
        return self.host(CONFIG_PATH)

    # --- a kernel's files on disk (not running) -----------------------------------------------
    def kernel_module_dir(self, release: str) -> Path:
        """Where kheaders.ko and configs.ko live: `kernel/kernel/` (from the kernel/ source dir)."""
        return self.modules_dir(release) / "kernel" / "kernel"

    def kernel_images(self, release: str) -> tuple[Path, ...]:
        """Where distributions put the kernel image: Debian /boot, Fedora/Arch /lib/modules."""
        return (
            self.host(f"/boot/vmlinuz-{check_release(release)}"),
            self.modules_dir(release) / "vmlinuz",
        )

    def kernel_configs(self, release: str) -> tuple[Path, ...]:
        return (
            self.host(f"/boot/config-{check_release(release)}"),
            self.modules_dir(release) / "config",
        )
