"""pacman (Arch Linux and derivatives): ownership only, read from the local database.

Each installed package is a directory `var/lib/pacman/local/<name>-<version>-<rel>/` whose `desc`
names it and whose `files` lists its paths, relative to the root (directories end in "/").
"""

from __future__ import annotations

from pathlib import Path

from kheaders_pkg.distro.base import Owner, PackageFamily, path_aliases
from kheaders_pkg.layout import Layout

LOCAL_DB = "var/lib/pacman/local"
LOCK = "var/lib/pacman/db.lck"  # exists while pacman runs (not an fcntl lock)


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

    @classmethod
    def present(cls, layout: Layout) -> bool:
        return (layout.root / LOCAL_DB).is_dir()

    @classmethod
    def busy(cls, layout: Layout) -> str | None:
        lock = layout.root / LOCK
        return f"{lock} exists (pacman is running)" if lock.exists() else None

    @classmethod
    def owner(cls, layout: Layout, inside_path: str) -> Owner | None:
        wanted = {p.lstrip("/") for p in path_aliases(layout, inside_path)}
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
    def _describe(cls, entry: Path) -> Owner:
        try:
            desc = _sections((entry / "desc").read_text(errors="replace"))
        except OSError:
            desc = {}
        name = desc.get("NAME", [entry.name])[0]
        version = desc.get("VERSION", [None])[0]
        return Owner(cls.name, name, version)
