"""Lay down and remove the hook files that run kheaders-pkg (systemd, initramfs, kernel packages).

The files live in `hooks/` (static) and `templates/hooks/` (rendered with jinja2: the ones that
name the executable). In a checkout and in the distro packages those directories sit beside the
`kheaders_pkg` package; a wheel installs them as shared data under `share/kheaders-pkg/`.

`install_hooks()` records what it wrote (path and sha256) in `hooks.json` under the state dir;
`remove_hooks()` removes exactly those files, and only while they still hold what we wrote.
The distro packages do not use the manifest: their package manager owns the files, and
`python3 -m kheaders_pkg.hooks stage` only writes them into the build's destination root.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import jinja2

from kheaders_pkg.errors import FilesystemError, KheadersError, UsageError
from kheaders_pkg.files import sha256_if_present
from kheaders_pkg.layout import Layout

log = logging.getLogger(__name__)

DATA_NAME = "kheaders-pkg"
MANIFEST_NAME = "hooks.json"
MANIFEST_FORMAT = 1
# Helpers that hooks call by absolute path, the same in every install.
HOOK_LIBDIR = "/usr/lib/kheaders-pkg"
CONDITION = f"{HOOK_LIBDIR}/kheaders-pkg-condition"
ALPM_SCRIPT = "/usr/share/libalpm/scripts/kheaders-pkg"
# The executable goes unquoted into systemd Exec lines, pacman Exec and shell: allow only
# characters that mean nothing special to any of them.
_SAFE_EXECUTABLE = re.compile(r"/[A-Za-z0-9._+@/-]+")


class HookSystem(enum.StrEnum):
    """The package families we know how to hook into; GENERIC gets every hook."""

    DEBIAN = "debian"
    FEDORA = "fedora"
    ARCH = "arch"
    GENERIC = "generic"


class HookKind(enum.StrEnum):
    SYSTEMD = "systemd"
    DRACUT = "dracut"
    INITRAMFS_TOOLS = "initramfs-tools"
    KERNEL_HOOKS = "kernel-hooks"  # Debian's /etc/kernel/{postinst,postrm}.d
    KERNEL_INSTALL = "kernel-install"
    PACMAN = "pacman"


# Which hooks each family uses. Debian also gets dracut (dracut-core is in Debian) and
# kernel-install (systemd-boot calls it from /etc/kernel/postinst.d).
SYSTEM_HOOKS: dict[HookSystem, frozenset[HookKind]] = {
    HookSystem.DEBIAN: frozenset(
        {
            HookKind.SYSTEMD,
            HookKind.DRACUT,
            HookKind.INITRAMFS_TOOLS,
            HookKind.KERNEL_HOOKS,
            HookKind.KERNEL_INSTALL,
        }
    ),
    HookSystem.FEDORA: frozenset({HookKind.SYSTEMD, HookKind.DRACUT, HookKind.KERNEL_INSTALL}),
    HookSystem.ARCH: frozenset({HookKind.SYSTEMD, HookKind.DRACUT, HookKind.PACMAN}),
    HookSystem.GENERIC: frozenset(HookKind),
}

# os-release ID / ID_LIKE words -> family.
_OS_RELEASE_IDS: dict[str, HookSystem] = {
    "debian": HookSystem.DEBIAN,
    "ubuntu": HookSystem.DEBIAN,
    "fedora": HookSystem.FEDORA,
    "rhel": HookSystem.FEDORA,
    "centos": HookSystem.FEDORA,
    "arch": HookSystem.ARCH,
}


@dataclass(frozen=True)
class HookFile:
    """One file: where it comes from (relative to hooks/ or templates/hooks/) and goes (inside)."""

    kinds: frozenset[HookKind]
    source: str
    dest: str
    mode: int = 0o644
    template: bool = False


_INITRAMFS = frozenset({HookKind.DRACUT, HookKind.INITRAMFS_TOOLS})

HOOK_FILES: tuple[HookFile, ...] = (
    HookFile(
        frozenset({HookKind.SYSTEMD}),
        "systemd/kheaders-pkg.service.j2",
        "/usr/lib/systemd/system/kheaders-pkg.service",
        template=True,
    ),
    HookFile(
        frozenset({HookKind.SYSTEMD}),
        "systemd/kheaders-pkg@.service.j2",
        "/usr/lib/systemd/system/kheaders-pkg@.service",
        template=True,
    ),
    HookFile(
        frozenset({HookKind.SYSTEMD}),
        "systemd/kheaders-pkg-verify.service.j2",
        "/usr/lib/systemd/system/kheaders-pkg-verify.service",
        template=True,
    ),
    HookFile(
        frozenset({HookKind.SYSTEMD}),
        "systemd/kheaders-pkg-verify.timer.j2",
        "/usr/lib/systemd/system/kheaders-pkg-verify.timer",
        template=True,
    ),
    HookFile(
        frozenset({HookKind.SYSTEMD}),
        "systemd/kheaders-pkg-condition.j2",
        CONDITION,
        0o755,
        template=True,
    ),
    HookFile(
        _INITRAMFS,
        "lib/kheaders-pkg-verdict.sh",
        f"{HOOK_LIBDIR}/kheaders-pkg-verdict.sh",
    ),
    HookFile(
        frozenset({HookKind.DRACUT}),
        "dracut/90kheaders-pkg/module-setup.sh",
        "/usr/lib/dracut/modules.d/90kheaders-pkg/module-setup.sh",
        0o755,
    ),
    HookFile(
        frozenset({HookKind.DRACUT}),
        "dracut/90kheaders-pkg/kheaders-pkg-verdict.sh",
        "/usr/lib/dracut/modules.d/90kheaders-pkg/kheaders-pkg-verdict.sh",
        0o755,
    ),
    HookFile(
        frozenset({HookKind.INITRAMFS_TOOLS}),
        "initramfs-tools/hooks/kheaders-pkg",
        "/usr/share/initramfs-tools/hooks/kheaders-pkg",
        0o755,
    ),
    HookFile(
        frozenset({HookKind.INITRAMFS_TOOLS}),
        "initramfs-tools/scripts/init-bottom/kheaders-pkg",
        "/usr/share/initramfs-tools/scripts/init-bottom/kheaders-pkg",
        0o755,
    ),
    HookFile(
        frozenset({HookKind.KERNEL_HOOKS}),
        "kernel/postinst.d/kheaders-pkg.j2",
        "/etc/kernel/postinst.d/kheaders-pkg",
        0o755,
        template=True,
    ),
    HookFile(
        frozenset({HookKind.KERNEL_HOOKS}),
        "kernel/postrm.d/kheaders-pkg.j2",
        "/etc/kernel/postrm.d/kheaders-pkg",
        0o755,
        template=True,
    ),
    HookFile(
        frozenset({HookKind.KERNEL_INSTALL}),
        "kernel-install/35-kheaders-pkg.install.j2",
        "/usr/lib/kernel/install.d/35-kheaders-pkg.install",
        0o755,
        template=True,
    ),
    HookFile(
        frozenset({HookKind.PACMAN}),
        "pacman/kheaders-pkg.hook.j2",
        "/usr/share/libalpm/hooks/kheaders-pkg.hook",
        template=True,
    ),
    HookFile(
        frozenset({HookKind.PACMAN}),
        "pacman/kheaders-pkg-remove.hook.j2",
        "/usr/share/libalpm/hooks/kheaders-pkg-remove.hook",
        template=True,
    ),
    HookFile(
        frozenset({HookKind.PACMAN}),
        "pacman/kheaders-pkg-alpm.j2",
        ALPM_SCRIPT,
        0o755,
        template=True,
    ),
)


@dataclass(frozen=True)
class RenderedHook:
    dest: str  # inside the root
    content: bytes
    mode: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def find_data_dir() -> Path:
    """The directory holding `hooks/` and `templates/`: beside the package (a checkout, or the
    distro packages' /usr/share/kheaders-pkg), else a wheel's shared data (`share/kheaders-pkg`
    under the install scheme's data path, system or user)."""
    candidates = [Path(__file__).resolve().parent.parent]
    schemes = [sysconfig.get_default_scheme(), f"{os.name}_user"]
    for scheme in schemes:
        try:
            candidates.append(Path(sysconfig.get_path("data", scheme)) / "share" / DATA_NAME)
        except KeyError:
            continue
    candidates += [Path("/usr/share") / DATA_NAME, Path("/usr/local/share") / DATA_NAME]
    for candidate in candidates:
        if (candidate / "hooks/lib/kheaders-pkg-verdict.sh").is_file() and (
            candidate / "templates/hooks"
        ).is_dir():
            return candidate
    raise FilesystemError(
        "cannot find the hook files (hooks/ and templates/hooks/) beside the package or under "
        + ", ".join(str(c) for c in candidates[1:])
    )


def detect_system(layout: Layout) -> HookSystem:
    """The family of the target root, from its os-release ID and ID_LIKE; GENERIC if unknown."""
    for inside in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = layout.host(inside).read_text(errors="replace")
        except OSError:
            continue
        words: list[str] = []
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() in ("ID", "ID_LIKE"):
                words += value.strip().strip("\"'").split()
        for word in words:
            if word in _OS_RELEASE_IDS:
                return _OS_RELEASE_IDS[word]
        return HookSystem.GENERIC
    return HookSystem.GENERIC


def check_executable(executable: str) -> str:
    if not _SAFE_EXECUTABLE.fullmatch(executable) or "/../" in f"{executable}/":
        raise UsageError(
            f"executable {executable!r} must be an absolute path of letters, digits and ._+@-"
        )
    return executable


def render_hooks(system: HookSystem, executable: str, data_dir: Path) -> list[RenderedHook]:
    """Every file `system` needs, rendered for `executable`. Pure but for reading data_dir."""
    check_executable(executable)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir / "templates" / "hooks")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    values = {"executable": executable, "condition": CONDITION, "alpm_script": ALPM_SCRIPT}
    wanted = SYSTEM_HOOKS[system]
    rendered: list[RenderedHook] = []
    for hook in HOOK_FILES:
        if not hook.kinds & wanted:
            continue
        if hook.template:
            content = env.get_template(hook.source).render(values).encode()
        else:
            content = (data_dir / "hooks" / hook.source).read_bytes()
        rendered.append(RenderedHook(hook.dest, content, hook.mode))
    return rendered


def _write_file(path: Path, content: bytes, mode: int) -> None:
    """Write atomically (temporary file in the same directory, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_parents(layout: Layout, inside: str) -> list[str]:
    """Create the missing parents of `inside`; return those created, outermost first."""
    missing: list[str] = []
    parent = PurePosixPath(inside).parent
    while str(parent) != "/" and not layout.host(str(parent)).exists():
        missing.append(str(parent))
        parent = parent.parent
    for directory in reversed(missing):
        layout.host(directory).mkdir(mode=0o755)
    return list(reversed(missing))


@dataclass(frozen=True)
class HooksManifest:
    system: str
    executable: str
    files: dict[str, str]  # inside path -> sha256
    dirs: list[str]  # directories we created, outermost first

    def to_json(self) -> str:
        data = {
            "format": MANIFEST_FORMAT,
            "system": self.system,
            "executable": self.executable,
            "files": self.files,
            "dirs": self.dirs,
        }
        return json.dumps(data, indent=1, sort_keys=True) + "\n"


def manifest_path(layout: Layout) -> Path:
    return layout.state() / MANIFEST_NAME


def read_manifest(layout: Layout) -> HooksManifest | None:
    path = manifest_path(layout)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FilesystemError(f"{path}: unreadable hooks manifest ({e})") from None
    try:
        files = data["files"]
        dirs = data["dirs"]
        if not (
            data["format"] <= MANIFEST_FORMAT
            and isinstance(files, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
            and isinstance(dirs, list)
            and all(isinstance(d, str) for d in dirs)
        ):
            raise TypeError
        return HooksManifest(str(data["system"]), str(data["executable"]), files, dirs)
    except (KeyError, TypeError):
        raise FilesystemError(f"{path}: malformed hooks manifest") from None


def _write_manifest(layout: Layout, manifest: HooksManifest) -> None:
    path = manifest_path(layout)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_file(path, manifest.to_json().encode(), 0o644)
    except OSError as e:
        raise FilesystemError(f"cannot write the hooks manifest {path}: {e.strerror}") from None


def stage_hooks(
    dest_root: Path, system: HookSystem, executable: str, data_dir: Path | None = None
) -> list[Path]:
    """Write the hook files into a package build's destination root; no manifest, no checks
    for files already there (the package manager owns the result)."""
    dest_root.mkdir(parents=True, exist_ok=True)
    layout = Layout(root=dest_root)
    written: list[Path] = []
    for hook in render_hooks(system, executable, data_dir or find_data_dir()):
        _make_parents(layout, hook.dest)
        path = layout.host(hook.dest)
        _write_file(path, hook.content, hook.mode)
        written.append(path)
    return written


def install_hooks(layout: Layout, system: HookSystem | None, executable: str) -> list[Path]:
    """Lay the hook files down under layout.root for `system` (detected when None), recorded in
    the hooks manifest. A file already there that an earlier install_hooks did not write is
    left alone and stops the install (it belongs to a package or the admin). Files of an earlier
    install that this one no longer needs are removed. Returns the host paths written."""
    system = system or detect_system(layout)
    rendered = render_hooks(system, executable, find_data_dir())
    previous = read_manifest(layout)
    ours = previous.files if previous else {}
    for hook in rendered:
        path = layout.host(hook.dest)
        if (path.exists() or path.is_symlink()) and hook.dest not in ours:
            raise FilesystemError(
                f"{path} exists and was not laid down by kheaders-pkg; nothing installed"
            )
    files: dict[str, str] = {}
    dirs: list[str] = list(previous.dirs) if previous else []
    written: list[Path] = []
    try:
        # A root that does not exist yet is made, as `sync` makes one (an image being assembled).
        layout.host("/").mkdir(mode=0o755, parents=True, exist_ok=True)
        for hook in rendered:
            path = layout.host(hook.dest)
            try:
                dirs += [d for d in _make_parents(layout, hook.dest) if d not in dirs]
                _write_file(path, hook.content, hook.mode)
            except OSError as e:
                raise FilesystemError(
                    f"cannot write {path}: {e.strerror}; the files written so far are recorded "
                    "for `hooks remove`"
                ) from None
            files[hook.dest] = hook.sha256
            written.append(path)
    finally:
        # Record what is on disk now, even after a failure half way, so remove can clean up
        # (nothing to record when nothing was ever written: a read-only root says so above).
        kept = {k: v for k, v in ours.items() if k not in files}
        if previous is not None or files or dirs:
            _write_manifest(layout, HooksManifest(system, executable, {**kept, **files}, dirs))
    stale = {k: v for k, v in ours.items() if k not in files}
    if stale:
        _remove_recorded(layout, HooksManifest(system, executable, stale, []))
        _write_manifest(layout, HooksManifest(system, executable, files, dirs))
    log.info("installed %d hook files for %s", len(written), system)
    return written


def _remove_recorded(layout: Layout, manifest: HooksManifest) -> tuple[list[Path], list[str]]:
    """Remove the manifest's files that still hold what we wrote, then its directories if empty.
    Returns (removed host paths, inside paths kept because they changed)."""
    removed: list[Path] = []
    kept: list[str] = []
    for inside, digest in sorted(manifest.files.items()):
        path = layout.host(inside)
        if path.is_symlink() or not path.exists():
            continue
        if sha256_if_present(path, "hook file", FilesystemError) != digest:
            log.warning("%s changed since kheaders-pkg wrote it; left in place", path)
            kept.append(inside)
            continue
        try:
            path.unlink()
        except OSError as e:
            raise FilesystemError(f"cannot remove {path}: {e.strerror}") from None
        removed.append(path)
    for inside in reversed(manifest.dirs):
        try:
            layout.host(inside).rmdir()
        except OSError:
            pass  # not empty (someone else's files, or a changed file kept) or gone already
    return removed, kept


def remove_hooks(layout: Layout) -> list[Path]:
    """Remove exactly the files install_hooks recorded (unchanged ones), the directories it
    created when empty, and the manifest unless changed files had to be kept. Nothing recorded:
    nothing to do. Returns the host paths removed."""
    manifest = read_manifest(layout)
    if manifest is None:
        return []
    removed, kept = _remove_recorded(layout, manifest)
    if kept:
        left = {k: v for k, v in manifest.files.items() if k in kept}
        _write_manifest(
            layout, HooksManifest(manifest.system, manifest.executable, left, manifest.dirs)
        )
    else:
        manifest_path(layout).unlink()
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    """`python3 -m kheaders_pkg.hooks stage DESTDIR`: used by debian/rules and the RPM spec."""
    parser = argparse.ArgumentParser(prog="python3 -m kheaders_pkg.hooks")
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="write the hook files into a package's destination root")
    stage.add_argument("destdir", type=Path)
    stage.add_argument("--system", type=HookSystem, default=HookSystem.GENERIC)
    stage.add_argument("--executable", default="/usr/bin/kheaders-pkg")
    args = parser.parse_args(argv)
    try:
        for path in stage_hooks(args.destdir, args.system, args.executable):
            print(path)
    except KheadersError as e:
        print(f"kheaders-pkg: {e}", file=sys.stderr)
        return int(e.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
