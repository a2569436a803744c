"""rpm: Fedora, RHEL and relatives, openSUSE.

The database path is always explicit: rpm's default differs between distributions (Fedora
/usr/lib/sysimage/rpm with /var/lib/rpm a link to it; Debian's rpm uses ~/.rpmdb), and only the
target root's own database is the right one.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from kheaders_pkg.distro.base import Owner, PackageFamily, path_aliases, tool
from kheaders_pkg.distro.identity import rpm_package_name, tree_package
from kheaders_pkg.distro.queue import first_held
from kheaders_pkg.distro.render import render
from kheaders_pkg.errors import PackagingError
from kheaders_pkg.kernel.machine import tree_arch
from kheaders_pkg.layout import Layout

if TYPE_CHECKING:
    # The rpm bindings exist only as the distribution's python3-rpm: they are imported where
    # the rpm database is read, so a virtual environment without them still emits .debs and the
    # rpm commands end in a one-line error naming the package (errors.missing_part).
    import rpm

# Where an rpmdb lives inside a root, newest convention first.
DB_DIRS = ("/usr/lib/sysimage/rpm", "/var/lib/rpm")
DB_FILES = ("rpmdb.sqlite", "Packages.db", "Packages")
LOCK_NAME = ".rpm.lock"  # rpm's %_rpmlock_path default: %{_dbpath}/.rpm.lock
PAYLOAD = "w3T.xzdio"  # xz level 3, threaded: headers are text


def dbpath(layout: Layout) -> str | None:
    """The rpmdb's directory inside the root, or None when the root has none."""
    for directory in DB_DIRS:
        host = layout.root / directory.lstrip("/")
        if any((host / name).is_file() for name in DB_FILES):
            return directory
    return None


def _require_dbpath(layout: Layout) -> str:
    path = dbpath(layout)
    if path is None:
        raise PackagingError(f"no rpm database under {layout.root}")
    return path


@contextmanager
def _transaction(layout: Layout) -> Iterator[rpm.TransactionSet]:
    """A read-only view of the root's rpmdb. `_dbpath` is process-global in librpm, so it is set
    for the duration and removed again."""
    import rpm

    rpm.addMacro("_dbpath", _require_dbpath(layout))
    try:
        ts = rpm.TransactionSet(str(layout.root))
        ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
        try:
            ts.openDB()
            yield ts
        finally:
            ts.closeDB()
    finally:
        rpm.delMacro("_dbpath")


def _evr(header: rpm.hdr) -> str:
    import rpm

    epoch = header[rpm.RPMTAG_EPOCH]
    evr = f"{header[rpm.RPMTAG_VERSION]}-{header[rpm.RPMTAG_RELEASE]}"
    return f"{epoch}:{evr}" if epoch else evr


def _rpm_tool_args(layout: Layout) -> list[str]:
    args = ["--root", str(layout.root), "--dbpath", _require_dbpath(layout)]
    # Debian's rpm refuses to touch a dpkg-managed system without --force-debian; the option
    # exists only in Debian's build, so it is passed only where rpm is that build.
    if _is_debian_rpm():
        args.append("--force-debian")
    return args


@functools.cache
def _is_debian_rpm() -> bool:
    return "force-debian" in tool(["rpm", "--help"])


class Rpm(PackageFamily):
    name = "rpm"
    format = "rpm"

    @classmethod
    def package_name(cls, release: str) -> str:
        return rpm_package_name(release)

    @classmethod
    def present(cls, layout: Layout) -> bool:
        return dbpath(layout) is not None

    @classmethod
    def busy(cls, layout: Layout) -> str | None:
        path = dbpath(layout)
        if path is None:
            return None
        return first_held((layout.root / path.lstrip("/") / LOCK_NAME,))

    @classmethod
    def owner(cls, layout: Layout, inside_path: str) -> Owner | None:
        import rpm

        with _transaction(layout) as ts:
            for path in path_aliases(layout, inside_path):
                for header in ts.dbMatch("basenames", path):
                    return Owner(cls.name, str(header[rpm.RPMTAG_NAME]), _evr(header))
        return None

    @classmethod
    def installed_version(cls, layout: Layout, package_name: str) -> str | None:
        import rpm

        with _transaction(layout) as ts:
            versions = sorted(
                (
                    (str(h[rpm.RPMTAG_EPOCH] or 0), h[rpm.RPMTAG_VERSION], h[rpm.RPMTAG_RELEASE])
                    for h in ts.dbMatch("name", package_name)
                ),
                key=functools.cmp_to_key(rpm.labelCompare),
            )
        if not versions:
            return None
        epoch, version, release = versions[-1]
        return f"{version}-{release}" if epoch == "0" else f"{epoch}:{version}-{release}"

    @classmethod
    def emit(cls, layout: Layout, tree: Path, out_dir: Path) -> Path:
        tree = tree.absolute()
        package = tree_package(layout, tree)
        stamp = package.stamp
        spec = render(
            "rpm/kheaders.spec.j2",
            name=package.rpm_name,
            version=package.version,
            release=package.release,
            release_dir=package.release_dir,
            inside_dir=package.inside_dir,
            provides=package.provides_name,
            module_provides=package.rpm_module_provides,
            generation=package.generation,
            id_kind=package.id_kind,
            short_id=package.short_id,
            tool_version=stamp.tool_version,
            archive_source=str(stamp.archive_source),
            archive_sha256=stamp.archive_sha256,
        )
        out_dir = out_dir.absolute()
        out_dir.mkdir(parents=True, exist_ok=True)
        topdir = Path(tempfile.mkdtemp(dir=out_dir, prefix=".build-rpm-"))
        try:
            spec_path = topdir / f"{package.rpm_name}.spec"
            spec_path.write_text(spec)
            # Hard links into the buildroot when the tree shares the filesystem: no 35 MB copy.
            same_fs = os.stat(tree).st_dev == os.stat(topdir).st_dev
            defines = {
                "_topdir": str(topdir),
                "_dbpath": str(topdir / "rpmdb"),
                "_tmppath": str(topdir / "tmp"),
                "_build_id_links": "none",
                "__os_install_post": "%{nil}",
                "_binary_payload": PAYLOAD,
                "kh_source": str(tree),
                "kh_copy": "cp -al" if same_fs else "cp -a",
            }
            (topdir / "tmp").mkdir()
            argv: list[str] = ["rpmbuild", "-bb", "--nodeps", "--quiet"]
            # The package's architecture is the kernel's. rpmbuild refuses a BuildArch the host
            # cannot build for ("No compatible architectures found"); --target sets it instead.
            kernel = tree_arch(tree)
            if kernel is not None:
                argv += ["--target", kernel.rpm]
            for key, value in defines.items():
                argv += ["--define", f"{key} {value}"]
            tool([*argv, spec_path])
            built = sorted((topdir / "RPMS").glob(f"*/{package.rpm_name}-{package.version}-*.rpm"))
            if len(built) != 1:
                raise PackagingError(f"rpmbuild left {len(built)} packages in {topdir}/RPMS")
            result = out_dir / built[0].name
            os.replace(built[0], result)
        finally:
            shutil.rmtree(topdir, ignore_errors=True)
        return result

    @classmethod
    def register(cls, layout: Layout, package: Path) -> None:
        # --justdb: the files are already in place. -U replaces the previous generation's record;
        # --oldpackage/--replacepkgs because what is on disk is the truth even if the database
        # holds a higher generation (state wiped) or this very one.
        tool(
            [
                "rpm",
                *_rpm_tool_args(layout),
                "-U",
                "--justdb",
                "--nodeps",
                "--noscripts",
                "--notriggers",
                "--oldpackage",
                "--replacepkgs",
                package,
            ]
        )

    @classmethod
    def unregister(cls, layout: Layout, release: str) -> None:
        # Like dpkg -r (which cannot do otherwise), the package's files go with it.
        name = cls.package_name(release)
        if cls.installed_version(layout, name) is None:
            return
        tool(
            [
                "rpm",
                *_rpm_tool_args(layout),
                "-e",
                "--allmatches",
                "--nodeps",
                "--noscripts",
                "--notriggers",
                name,
            ]
        )
