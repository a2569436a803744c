"""What a generated tree is called as a package: a pure function of its stamp and location.

The name identifies the kernel (its release), the version the exact build: the generation number,
which grows with every regeneration of a release, then the first hex digits of the build id (the
archive digest when the kernel has no build id). Generation first makes a newer regeneration sort
higher under both dpkg's and rpm's comparison; the id only tells builds apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kheaders_pkg.distro.base import PACKAGE_PREFIX
from kheaders_pkg.errors import PackagingError
from kheaders_pkg.layout import Layout
from kheaders_pkg.stamp import Stamp, StampError, read_stamp

SHORT_ID_LEN = 12

# dpkg: names are [a-z0-9][a-z0-9+.-]+ (deb-control(5)); rpm allows more (A-Z, _). A release
# character outside the set becomes "+", which is valid in both and never appears in Linux's own
# version scheme, so mapped names stay recognisable.
_DEB_NAME_BAD = re.compile(r"[^a-z0-9+.-]")
_RPM_NAME_BAD = re.compile(r"[^A-Za-z0-9+._-]")


def deb_package_name(release: str) -> str:
    return PACKAGE_PREFIX + _DEB_NAME_BAD.sub("+", release.lower())


def rpm_package_name(release: str) -> str:
    return PACKAGE_PREFIX + _RPM_NAME_BAD.sub("+", release)


def package_version(generation: int, short_id: str) -> str:
    """`<generation>.<id12>`: valid as a Debian upstream version and as an rpm Version."""
    if not re.fullmatch(r"[0-9a-f]{1,64}", short_id):
        raise PackagingError(f"build id {short_id!r} is not lower-case hex")
    return f"{generation}.{short_id[:SHORT_ID_LEN]}"


@dataclass(frozen=True)
class TreePackage:
    """The facts a package of one generated tree is made from."""

    release: str
    generation: int
    short_id: str
    id_kind: str  # "build id" or "archive sha256": what short_id was taken from
    inside_dir: str  # the tree's absolute path inside the target root
    stamp: Stamp
    # The tree passed kbuild's self-check and holds every piece a module build needs (kbuild.py):
    # only then may the package stand in for the distro's module-building headers.
    builds_modules: bool = False

    @property
    def version(self) -> str:
        return package_version(self.generation, self.short_id)

    @property
    def deb_name(self) -> str:
        return deb_package_name(self.release)

    @property
    def rpm_name(self) -> str:
        return rpm_package_name(self.release)

    @property
    def provides_name(self) -> str:
        """The capability header consumers may depend on: honest, unlike linux-headers-$KVER or
        kernel-devel-uname-r, which promise a kbuild tree (Makefile, scripts/, Module.symvers)."""
        return "kernel-ikheaders-" + _DEB_NAME_BAD.sub("+", self.release.lower())

    @property
    def deb_module_provides(self) -> tuple[str, ...]:
        """What dkms and module packages look for on Debian: the headers package of this release
        (and the virtual `linux-headers` dkms recommends); nothing for a headers-only tree."""
        if not self.builds_modules:
            return ()
        return (f"linux-headers-{_DEB_NAME_BAD.sub('+', self.release.lower())}", "linux-headers")

    @property
    def rpm_module_provides(self) -> tuple[str, ...]:
        """What akmods and kmod packages require on Fedora: kernel-devel-uname-r = $KVER."""
        return (f"kernel-devel-uname-r = {self.release}",) if self.builds_modules else ()

    @property
    def release_dir(self) -> str:
        return str(PurePosixPath(self.inside_dir).parent)


def tree_package(layout: Layout, tree: Path) -> TreePackage:
    """Read the stamp of `tree` (a generation directory under the root) into package facts."""
    try:
        stamp = read_stamp(tree)
    except StampError as e:
        raise PackagingError(f"cannot package {tree}: {e}") from None
    try:
        relative = tree.absolute().relative_to(layout.root.absolute())
    except ValueError:
        raise PackagingError(f"{tree} is not inside the root {layout.root}") from None
    inside = str(PurePosixPath("/", relative.as_posix()))
    if PurePosixPath(inside).parent.name != stamp.release:
        raise PackagingError(
            f"{tree}: stamp says release {stamp.release!r}, the directory says otherwise"
        )
    if stamp.build_id:
        short_id, id_kind = stamp.build_id.lower()[:SHORT_ID_LEN], "build id"
    else:
        short_id, id_kind = stamp.archive_sha256.lower()[:SHORT_ID_LEN], "archive sha256"
    return TreePackage(
        release=stamp.release,
        generation=stamp.generation,
        short_id=short_id,
        id_kind=id_kind,
        inside_dir=inside,
        stamp=stamp,
        builds_modules=_builds_modules(tree),
    )


def _builds_modules(tree: Path) -> bool:
    from kheaders_pkg.kbuild import read_record

    record = read_record(tree)
    return record is not None and record.ready
