"""pacman (Arch Linux and derivatives): ownership, our .pkg.tar.zst, registration.

Ownership is read from the local database as libalpm writes it: each installed package is a
directory `var/lib/pacman/local/<name>-<version>-<rel>/` whose `desc` names it and whose `files`
lists its paths relative to the root (directories end in "/"). Reading it needs no pacman binary
and honours --root exactly; the tests check every answer against `pacman -Qo`.
"""

from __future__ import annotations

import os
from pathlib import Path

from kheaders_pkg.distro.base import Owner, PackageFamily, path_aliases, tool
from kheaders_pkg.distro.pacman_package import build_pacman_package, pacman_package_name
from kheaders_pkg.layout import Layout

DBPATH = "var/lib/pacman"
LOCAL_DB = f"{DBPATH}/local"
# pacman creates db.lck with O_EXCL for the whole transaction, hooks included, and removes it at
# the end: its existence is the lock (no fcntl lock to ask about). A stale one after a crash
# blocks pacman too, until someone removes it.
LOCK = f"{DBPATH}/db.lck"
CONFIG = "etc/pacman.conf"


def _pacman_args(layout: Layout) -> list[str]:
    """pacman pointed at the target root: its database and its own pacman.conf (or none, so
    the host's settings never apply to another root). The built-in hook directory
    (usr/share/libalpm/hooks) is taken inside --root by pacman itself."""
    root = layout.root.absolute()
    config = root / CONFIG
    return [
        "pacman",
        "--root",
        str(root),
        "--dbpath",
        str(root / DBPATH),
        "--config",
        str(config) if config.is_file() else os.devnull,
        "--noconfirm",
        "--noprogressbar",
    ]


def _sections(text: str) -> dict[str, list[str]]:
    """`%NAME%`-headed sections of a pacman db entry, each a list of lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("%") and line.endswith("%") and len(line) > 2:
            current = sections.setdefault(line.strip("%"), [])
        elif line and current is not None:
            current.append(line)
    return sections


class Pacman(PackageFamily):
    name = "pacman"
    format = "pacman"

    @classmethod
    def package_name(cls, release: str) -> str:
        return pacman_package_name(release)

    @classmethod
    def present(cls, layout: Layout) -> bool:
        return (layout.root / LOCAL_DB).is_dir()

    @classmethod
    def busy(cls, layout: Layout) -> str | None:
        lock = layout.root / LOCK
        return f"{lock} exists (pacman is running)" if lock.exists() else None

    @classmethod
    def owner(cls, layout: Layout, inside_path: str) -> Owner | None:
        # A directory is listed with a trailing "/" (Arch's linux-headers ships build/ as one).
        names = {p.strip("/") for p in path_aliases(layout, inside_path)}
        wanted = names | {f"{name}/" for name in names}
        for entry in sorted((layout.root / LOCAL_DB).glob("*/files")):
            try:
                files = _sections(entry.read_text(errors="replace")).get("FILES", [])
            except OSError:
                continue
            if wanted.intersection(files):
                return cls._describe(entry.parent)
        return None

    @classmethod
    def installed_version(cls, layout: Layout, package_name: str) -> str | None:
        for desc in sorted((layout.root / LOCAL_DB).glob(f"{package_name}-*/desc")):
            owner = cls._describe(desc.parent)
            if owner.package == package_name:
                return owner.version
        return None

    @classmethod
    def emit(cls, layout: Layout, tree: Path, out_dir: Path) -> Path:
        return build_pacman_package(layout, tree, out_dir)

    @classmethod
    def register(cls, layout: Layout, package: Path) -> None:
        # --dbonly: the files are in place; pacman records the package without extracting or
        # checking file conflicts. An upgrade from the previous generation forgets that
        # generation's files without deleting them (the core's gc does), like rpm --justdb.
        tool([*_pacman_args(layout), "--upgrade", "--dbonly", "--noscriptlet", package])

    @classmethod
    def unregister(cls, layout: Layout, release: str) -> None:
        # Like dpkg -r and rpm -e, the package's files go with it. -dd: nothing may keep the
        # record alive by depending on kernel-ikheaders-$KVER when the kernel itself is gone.
        name = cls.package_name(release)
        if cls.installed_version(layout, name) is None:
            return
        tool([*_pacman_args(layout), "--remove", "--nodeps", "--nodeps", "--noscriptlet", name])

    @classmethod
    def _describe(cls, entry: Path) -> Owner:
        try:
            desc = _sections((entry / "desc").read_text(errors="replace"))
        except OSError:
            desc = {}
        name = desc.get("NAME", [entry.name])[0]
        version = desc.get("VERSION", [None])[0]
        return Owner(cls.name, name, version)
