"""The plugin base: one small class per package family, registered by defining it.

The core never asks "is this Debian?"; it asks each registered family whether its database is
present under the root, and lets that family answer ownership, build and registration questions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

from kheaders_pkg.errors import PackagingError
from kheaders_pkg.layout import Layout
from kheaders_pkg.run import run

# Every package we generate is named PACKAGE_PREFIX + release; nothing else may start with it.
PACKAGE_PREFIX = "kheaders-tree-"

# The top-level directories a merged-/usr system turns into symlinks to usr/X. Package databases
# record the path the package shipped, so /lib/modules/... and /usr/lib/modules/... are the same
# file to ask about.
USRMERGE_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class Owner:
    """A package that owns a path, as its package manager names it."""

    family: str
    package: str
    version: str | None

    @property
    def is_ours(self) -> bool:
        return is_ours(self.package)

    def __str__(self) -> str:
        version = f", {self.version}" if self.version else ""
        return f"{self.package} ({self.family}{version})"


def tool(argv: Sequence[str | os.PathLike[str]]) -> str:
    """Run dpkg, rpm or rpmbuild through the one run() wrapper; a failure is a PackagingError
    ending with the tool's last stderr line. Returns stdout."""
    return run(argv, error=PackagingError).stdout.decode("utf-8", "replace")


def is_ours(package_name: str) -> bool:
    """Whether a package name is one kheaders-pkg generates (dpkg's `name:arch` form accepted)."""
    name = package_name.split(":", 1)[0]
    return name.startswith(PACKAGE_PREFIX) and len(name) > len(PACKAGE_PREFIX)


def path_aliases(layout: Layout, inside_path: str) -> tuple[str, ...]:
    """`inside_path` and the other spelling of it on a merged-/usr root (`/lib` <-> `/usr/lib`),
    when the root really has that top-level symlink."""
    path = PurePosixPath("/", inside_path)
    parts = path.parts
    names = [str(path)]
    if len(parts) > 1 and parts[1] in USRMERGE_DIRS:
        top = parts[1]
        if (layout.root / top).is_symlink():
            names.append(str(PurePosixPath("/usr", *parts[1:])))
    elif len(parts) > 2 and parts[1] == "usr" and parts[2] in USRMERGE_DIRS:
        if (layout.root / parts[2]).is_symlink():
            names.append(str(PurePosixPath("/", *parts[2:])))
    return tuple(names)


class PackageFamily:
    """One package family (dpkg, rpm, pacman). Subclasses register themselves by being defined.

    Every method takes the Layout, so `--root` is honoured in one way: the family's database and
    tools are pointed at `layout.root`.
    """

    name: ClassVar[str]  # the family's key, e.g. "dpkg"
    format: ClassVar[str | None] = None  # the package format it emits ("deb", "rpm"), or None
    registry: ClassVar[dict[str, type[PackageFamily]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name in PackageFamily.registry:
            raise TypeError(f"package family {cls.name!r} defined twice")
        PackageFamily.registry[cls.name] = cls

    @classmethod
    def package_name(cls, release: str) -> str:
        """What our package for `release` is called in this family."""
        return PACKAGE_PREFIX + release

    @classmethod
    def present(cls, layout: Layout) -> bool:
        """Whether this family's database exists under the root."""
        raise NotImplementedError

    @classmethod
    def owner(cls, layout: Layout, inside_path: str) -> Owner | None:
        """The package that owns `inside_path` (not following a final symlink), if any."""
        raise NotImplementedError

    @classmethod
    def busy(cls, layout: Layout) -> str | None:
        """Why the package manager cannot be used right now (its lock is held), or None."""
        return None

    @classmethod
    def emit(cls, layout: Layout, tree: Path, out_dir: Path) -> Path:
        """Build a package holding the generated `tree`; return its path (inside `out_dir`)."""
        raise PackagingError(f"{cls.name}: building packages is not supported")

    @classmethod
    def register(cls, layout: Layout, package: Path) -> None:
        """Record `package` in the database; its files are already in place."""
        raise PackagingError(f"{cls.name}: registering packages is not supported")

    @classmethod
    def unregister(cls, layout: Layout, release: str) -> None:
        """Remove our package for `release` (and the files it lists) from the database."""
        raise PackagingError(f"{cls.name}: removing packages is not supported")

    @classmethod
    def installed_version(cls, layout: Layout, package_name: str) -> str | None:
        """The installed version of `package_name`, or None when it is not installed."""
        raise NotImplementedError
