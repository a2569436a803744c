"""Publishing where /usr is read-only: the generation under /var, build/source in a systemd-sysext
extension under /var/lib/extensions (background.md 8).

An extension here is a directory (systemd-sysext reads plain directories from /var/lib/extensions;
no image is needed for two symlinks and one file):

    /var/lib/extensions/kheaders-pkg-$KVER/
        usr/lib/modules/$KVER/build, source -> /var/lib/kheaders-pkg/trees/$KVER/gen-NNNN-<id>
        usr/lib/extension-release.d/extension-release.kheaders-pkg-$KVER

The links are absolute paths to the generation under /var, like Debian's build link: once merged,
/lib/modules/$KVER/build leads there on the host, and in a container that bind-mounts the host's
/lib/modules and /var/lib/kheaders-pkg/trees at the same paths.

systemd-sysext 252 (Debian 12) ignores a symlink in /var/lib/extensions and lists every other
name, a dotted one too, except those starting with ".#" (checked with the real binary): a new
extension is built beside the old one under a ".#" name and swapped in with one
renameat2(RENAME_EXCHANGE), so `systemd-sysext refresh` sees the old extension or the new one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import shutil
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kheaders_pkg.errors import ElsewhereError, FilesystemError, KheadersError
from kheaders_pkg.layout import (
    EXTENSION_PREFIX,
    EXTENSIONS_DIR,
    MODULES_DIR,
    VAR_TREES_DIR,
    Layout,
    LinkName,
    PublishMode,
    extension_name,
)

log = logging.getLogger("kheaders-pkg")

# systemd's discover-image skips names starting with ".#" (its temporary files).
HIDDEN_PREFIX = ".#"
RELEASE_DIR = "usr/lib/extension-release.d"
SYSEXT = "systemd-sysext"
# Where distributions install the binary (checked under --root; the live root also asks PATH).
SYSEXT_PATHS = ("/usr/bin/systemd-sysext", "/bin/systemd-sysext")
OSTREE_BOOTED = "/run/ostree-booted"
# Set by kheaders-pkg.service: create this file instead of running `systemd-sysext refresh`.
REFRESH_FLAG_ENV = "KHEADERS_PKG_REFRESH_FLAG"
# os-release(5): /etc/os-release, else /usr/lib/os-release.
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")
# Linux machine names -> systemd's ARCHITECTURE= names (systemd.unit(5) ConditionArchitecture=).
_SYSTEMD_ARCH = {
    "x86_64": "x86-64",
    "i386": "x86",
    "i486": "x86",
    "i586": "x86",
    "i686": "x86",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64-le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loongarch64",
}


# --- os-release and extension-release (pure) --------------------------------------------------


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): KEY=value lines, values optionally quoted with shell quoting rules."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            continue
        out[key] = _unquote(value)
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner, out, i = value[1:-1], [], 0
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner) and inner[i + 1] in '\\"$`':
                i += 1
            out.append(inner[i])
            i += 1
        return "".join(out)
    return value


@dataclass(frozen=True)
class OsRelease:
    """What systemd-sysext compares an extension with: ID, and SYSEXT_LEVEL or VERSION_ID."""

    id: str
    version_id: str | None = None
    sysext_level: str | None = None

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> OsRelease:
        return cls(
            fields.get("ID", "linux"),
            fields.get("VERSION_ID") or None,
            fields.get("SYSEXT_LEVEL") or None,
        )


def systemd_architecture(machine: str) -> str | None:
    return _SYSTEMD_ARCH.get(machine)


def render_extension_release(os_release: OsRelease, architecture: str | None) -> str:
    """The extension's label: the root's ID and its SYSEXT_LEVEL (preferred by systemd-sysext when
    the host has one) or VERSION_ID, so that this systemd-sysext, of any version, merges it.

    systemd >= 252 would also take ID=_any, which survives OS updates by itself; the version
    label works with older systemd too, and the re-label on the next run (label_problem) covers
    the A/B update.
    """
    lines = [f"ID={os_release.id}"]
    if os_release.sysext_level is not None:
        lines.append(f"SYSEXT_LEVEL={os_release.sysext_level}")
    elif os_release.version_id is not None:
        lines.append(f"VERSION_ID={os_release.version_id}")
    if architecture is not None:
        lines.append(f"ARCHITECTURE={architecture}")
    return "".join(f"{line}\n" for line in lines)


def label_problem(
    extension: dict[str, str], host: OsRelease, architecture: str | None
) -> str | None:
    """Why systemd-sysext would refuse this extension-release on this host, or None.

    systemd's extension_release_validate(): ID equal (or "_any"); SYSEXT_LEVEL equal when both
    have one, else VERSION_ID equal when the extension has one; ARCHITECTURE equal when given.
    """
    ext_id = extension.get("ID")
    if ext_id is None:
        return "extension-release has no ID"
    if ext_id != "_any" and ext_id != host.id:
        return f"extension-release says ID={ext_id}, the root is ID={host.id}"
    if ext_id != "_any":
        level = extension.get("SYSEXT_LEVEL")
        version = extension.get("VERSION_ID")
        if level is not None and host.sysext_level is not None:
            if level != host.sysext_level:
                return (
                    f"extension-release says SYSEXT_LEVEL={level}, the root is {host.sysext_level}"
                )
        elif version is not None and version != host.version_id:
            return f"extension-release says VERSION_ID={version}, the root is {host.version_id}"
        elif level is None and version is None:
            return "extension-release has neither SYSEXT_LEVEL nor VERSION_ID"
    arch = extension.get("ARCHITECTURE")
    if arch is not None and architecture is not None and arch != architecture:
        return f"extension-release says ARCHITECTURE={arch}, this machine is {architecture}"
    return None


# --- the root ---------------------------------------------------------------------------------


def read_os_release(layout: Layout) -> OsRelease:
    for inside in OS_RELEASE_PATHS:
        try:
            text = layout.host(inside).read_text(errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise FilesystemError(f"{inside}: unreadable ({e.strerror})") from None
        return OsRelease.from_fields(parse_os_release(text))
    raise FilesystemError(
        f"{layout.root}: no /etc/os-release or /usr/lib/os-release: "
        "cannot label a systemd-sysext extension"
    )


def is_live(layout: Layout) -> bool:
    return os.path.realpath(layout.root) == "/"


def usr_writable(layout: Layout) -> bool:
    """False on ostree (it marks itself), and where /usr is a read-only mount (Flatcar, COS, a
    merged systemd-sysext overlay) with the trees dir on it. A read-only /usr with a writable
    filesystem mounted for the trees dir (/usr/src) is written as usual. statvfs asks the mount;
    it writes nothing."""
    if os.path.lexists(layout.host(OSTREE_BOOTED)):
        return False
    return not (_read_only(layout.host("/usr")) and _read_only(layout.host(layout.trees_dir)))


def _read_only(path: Path) -> bool:
    """Whether the filesystem that holds `path` (or its nearest existing parent) is read-only."""
    while True:
        try:
            return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            if path.parent == path:
                return False
            path = path.parent


def sysext_binary(layout: Layout) -> str | None:
    """The root's systemd-sysext: on the live root from PATH too, else under --root."""
    for inside in SYSEXT_PATHS:
        if os.access(layout.host(inside), os.X_OK):
            return inside if is_live(layout) else str(layout.host(inside))
    if is_live(layout):
        return shutil.which(SYSEXT)
    return None


def publish_mode(layout: Layout, choice: str) -> PublishMode:
    """`publish = "auto" | "tree" | "sysext"` for this root."""
    if choice == "tree":
        return PublishMode.TREE
    if choice == "sysext":
        return PublishMode.SYSEXT
    if usr_writable(layout):
        return PublishMode.TREE
    return PublishMode.SYSEXT if sysext_binary(layout) is not None else PublishMode.VAR


def trees_dir_for(mode: PublishMode, configured: str) -> str:
    """Generations stay where configured unless that is under /usr, which cannot be written."""
    if mode is PublishMode.TREE:
        return configured
    if PurePosixPath(configured).is_relative_to("/usr"):
        return VAR_TREES_DIR
    return configured


# --- the extension on disk --------------------------------------------------------------------


@dataclass(frozen=True)
class ExtensionState:
    """Our extension for one release, as systemd-sysext and the tools would find it."""

    path: Path
    exists: bool
    label: dict[str, str]  # its extension-release fields ({} when absent or unreadable)
    problem: str | None  # why systemd-sysext would not merge it (None: it would)
    merged: bool | None  # /lib/modules/$KVER/build shows our link; None unless the live root
    view_target: str | None  # what /lib/modules/$KVER/build says now


def release_file(extension: Path, name: str) -> Path:
    return extension / RELEASE_DIR / f"extension-release.{name}"


def extension_state(layout: Layout, release: str) -> ExtensionState:
    path = layout.extension(release)
    name = extension_name(release)
    exists = path.is_dir() and not path.is_symlink()
    label: dict[str, str] = {}
    problem: str | None = None
    arch: str | None = None
    if exists:
        try:
            label = parse_os_release(release_file(path, name).read_text(errors="replace"))
        except OSError:
            problem = "extension-release is missing"
        else:
            with suppress(OSError):
                target = os.readlink(path / "usr/lib/modules" / release / str(LinkName.BUILD))
                arch = kernel_architecture(layout, target)
            problem = label_problem(label, read_os_release(layout), arch)
    view = layout.host(layout.modules_dir_inside(release)) / str(LinkName.BUILD)
    try:
        view_target: str | None = os.readlink(view)
    except OSError:
        view_target = None
    ours: str | None = None
    with suppress(OSError):
        ours = os.readlink(layout.link(release, LinkName.BUILD))
    merged = (view_target is not None and view_target == ours) if is_live(layout) else None
    return ExtensionState(path, exists, label, problem, merged, view_target)


def kernel_architecture(layout: Layout, tree_inside: str) -> str | None:
    """systemd's name for the architecture of the kernel whose tree is at `tree_inside`: the
    machine that merges the extension runs that kernel, and systemd-sysext compares ARCHITECTURE=
    with its own (uname), which an image builder's host (`--root`, `--kernel`) need not share."""
    from kheaders_pkg.kernel.machine import tree_arch

    found = tree_arch(layout.host(tree_inside))
    return found.systemd if found is not None else None


def extensions_dir(layout: Layout) -> Path:
    from kheaders_pkg.publish import own_dir

    return own_dir(layout, EXTENSIONS_DIR)


_libc: ctypes.CDLL | None = None
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): both names stay, each now naming the other's directory."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def _replace(new: Path, final: Path) -> None:
    """`final` becomes `new`'s directory and `new` names the old one. Where the filesystem has no
    RENAME_EXCHANGE (9p, some FUSE), two renames: for a moment there is no extension at all,
    which a refresh merges as "none", never a partial one."""
    try:
        exchange(new, final)
        return
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    aside = new.with_name(new.name + ".old")
    os.rename(final, aside)
    os.rename(new, final)
    os.rename(aside, new)


def publish_extension(layout: Layout, release: str, target_inside: str) -> Path:
    """Build the extension for `release` (links to `target_inside`, labelled for this root) and
    put it in place of the old one with one exchange; returns its path."""
    from kheaders_pkg.publish import crash_point, fs_error, fsync_dir, syncfs, write_new_file

    name = extension_name(release)
    label = render_extension_release(
        read_os_release(layout), kernel_architecture(layout, target_inside)
    )
    try:
        base = extensions_dir(layout)
        staging = base / f"{HIDDEN_PREFIX}{name}.{secrets.token_hex(4)}"
        os.mkdir(staging, 0o755)
        try:
            links = staging / "usr/lib/modules" / release
            links.mkdir(parents=True, mode=0o755)
            for link in LinkName:
                os.symlink(target_inside, links / str(link))
            write_new_file(staging, f"{RELEASE_DIR}/extension-release.{name}", label.encode())
            syncfs(staging)
            final = base / name
            crash_point("before-extension-exchange")
            if os.path.lexists(final):
                _replace(staging, final)
                crash_point("after-extension-exchange")
                fsync_dir(base)
                shutil.rmtree(staging)  # now the old extension, under the hidden name
            else:
                os.rename(staging, final)
                fsync_dir(base)
        except BaseException:
            # Before the exchange: the unfinished new one; after it: the old one.
            with suppress(OSError):
                if os.path.lexists(staging):
                    shutil.rmtree(staging)
            raise
    except OSError as e:
        raise fs_error(
            f"cannot publish extension {layout.extension_inside(release)}",
            e,
            f"the tree stays in {target_inside}",
        ) from None
    return final


def remove_extension(layout: Layout, release: str) -> Path | None:
    """Take our extension for `release` out of sight (one rename), then delete it."""
    path = layout.extension(release)
    if not os.path.lexists(path) or path.is_symlink():
        return None
    trash = path.with_name(f"{HIDDEN_PREFIX}{path.name}.{secrets.token_hex(4)}")
    os.rename(path, trash)
    shutil.rmtree(trash)
    return path


def extension_releases(layout: Layout) -> list[str]:
    """Releases that have an extension of ours."""
    try:
        names = os.listdir(layout.extensions())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n[len(EXTENSION_PREFIX) :] for n in names if n.startswith(EXTENSION_PREFIX))


def clean_extension_leftovers(layout: Layout) -> list[Path]:
    """Extensions half-built or half-removed by an interrupted run (called under the lock)."""
    removed = []
    try:
        entries = list(os.scandir(layout.extensions()))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if entry.name.startswith(HIDDEN_PREFIX + EXTENSION_PREFIX):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def refresh(layout: Layout, release: str) -> str | None:
    """`systemd-sysext refresh` on the live root; why `release`'s extension is not merged after
    it, or None when /lib/modules/$KVER/build now shows it.

    Never for --root of another system: its /usr is not mounted here. systemd-sysext can exit 0
    and merge nothing (a kernel without overlayfs), so the answer is what /lib/modules shows.
    """
    if not is_live(layout):
        return None
    if refresh_deferred(layout):
        _leave_refresh(Path(os.environ[REFRESH_FLAG_ENV]))
        return None
    from kheaders_pkg.run import run

    binary = sysext_binary(layout)
    if binary is None:
        return "systemd-sysext is not installed"
    try:
        done = run([binary, "refresh"])
    except KheadersError as e:
        return str(e)
    if not layout.extension(release).is_dir() or extension_state(layout, release).merged:
        return None
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    return "systemd-sysext refresh did not merge it" + (f" ({said[-1].strip()})" if said else "")


def refresh_deferred(layout: Layout) -> bool:
    """The unit runs the refresh after `sync` (so what /lib/modules shows is judged after it)."""
    return is_live(layout) and bool(os.environ.get(REFRESH_FLAG_ENV))


def _leave_refresh(flag: Path) -> None:
    """The boot unit's sandbox has no mount system calls (systemd-sysext needs them): the unit
    names a flag file here and runs the refresh itself, with full privileges, when it exists."""
    try:
        flag.touch()
    except OSError as e:
        raise FilesystemError(
            f"{flag}: cannot leave the refresh to the unit ({e.strerror})"
        ) from None
    log.info("systemd-sysext refresh left to the unit (%s)", flag)


def elsewhere(layout: Layout, release: str, tree_inside: str, why: str) -> ElsewhereError:
    return ElsewhereError(
        f"headers for {release} are at {tree_inside} but not at {MODULES_DIR}/{release}/build "
        f"({why}): set BCC_KERNEL_SOURCE={tree_inside} BPFTRACE_KERNEL_SOURCE={tree_inside}"
    )


def kernel_installed(layout: Layout, release: str) -> bool:
    """The kernel's modules directory holds more than build/source (which a merged extension
    shows there by itself): depmod's files, kernel/, vmlinuz. An OS update that drops a kernel
    drops all of those."""
    try:
        names = os.listdir(layout.modules_dir(release))
    except (FileNotFoundError, NotADirectoryError):
        return False
    return any(n not in (str(LinkName.BUILD), str(LinkName.SOURCE)) for n in names)
