"""dpkg: Debian, Ubuntu and their derivatives."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from kheaders_pkg.distro.base import Owner, PackageFamily, path_aliases, tool
from kheaders_pkg.distro.contents import (
    installed_size_kib,
    stage,
    tree_directories,
    verified_files,
)
from kheaders_pkg.distro.identity import TreePackage, deb_package_name, tree_package
from kheaders_pkg.distro.queue import first_held
from kheaders_pkg.distro.render import render
from kheaders_pkg.errors import PackagingError
from kheaders_pkg.kernel.machine import tree_arch
from kheaders_pkg.layout import Layout

ADMINDIR = "var/lib/dpkg"
# apt and dpkg frontends take lock-frontend first, then dpkg takes lock (the database lock).
LOCKS = ("lock-frontend", "lock")
MAINTAINER = "kheaders-pkg (generated on this machine) <root@localhost>"
# xz level for data.tar. Measured on the 6.1 corpus tree (35 MB, 2 cores): -z1 5.3 MB in 3 s,
# -z3 5.1 MB in 10 s, -z6 4.4 MB in 26 s. xz, not zstd: every dpkg since squeeze reads it.
XZ_LEVEL = 1


def _admindir(layout: Layout) -> Path:
    return layout.root / ADMINDIR


def _dpkg_root_args(layout: Layout) -> list[str]:
    """Point dpkg at the target root. Outside "/" our package has no maintainer scripts, so
    running none in a chroot is no loss, and it keeps dpkg from needing a complete root."""
    args = [f"--root={layout.root}", f"--admindir={_admindir(layout)}"]
    if layout.root.resolve() != Path("/"):
        args += [f"--log={layout.root / 'var/log/dpkg.log'}", "--force-script-chrootless"]
    return args


def architecture(layout: Layout, tree: Path) -> str:
    """The package's dpkg architecture: the kernel's (an x86 host preparing an arm64 root emits
    arm64), unless the target's native architecture is a userland that runs this kernel. Like
    Debian's own linux-headers packages, the package then takes the userland's architecture (an
    amd64 kernel on an i386 userland ships i386 headers)."""
    native = _native_architecture(layout)
    kernel = tree_arch(tree)
    if kernel is None or native in (kernel.deb, *kernel.compat_deb):
        return native
    return kernel.deb


def _native_architecture(layout: Layout) -> str:
    """The first line of var/lib/dpkg/arch when dpkg wrote it, else what the dpkg we run says."""
    arch_file = _admindir(layout) / "arch"
    try:
        lines = arch_file.read_text().split()
    except OSError:
        lines = []
    if lines:
        return lines[0]
    return tool(["dpkg", "--print-architecture"]).strip()


def _single_line(name: str, value: str) -> str:
    if "\n" in value or not value.strip():
        raise PackagingError(f"control field {name} would be empty or span lines: {value!r}")
    return value


def _control(package: TreePackage, arch: str, installed_size: int) -> str:
    stamp = package.stamp
    return render(
        "deb/control.j2",
        name=_single_line("Package", package.deb_name),
        version=_single_line("Version", package.version),
        architecture=_single_line("Architecture", arch),
        maintainer=MAINTAINER,
        installed_size=installed_size,
        provides=package.provides_name,
        module_provides=package.deb_module_provides,
        release=package.release,
        generation=package.generation,
        id_kind=package.id_kind,
        short_id=package.short_id,
        tool_version=_single_line("tool_version", stamp.tool_version),
        archive_source=str(stamp.archive_source),
        archive_sha256=stamp.archive_sha256,
        inside_dir=_single_line("path", package.inside_dir),
    )


class Dpkg(PackageFamily):
    name = "dpkg"
    format = "deb"

    @classmethod
    def package_name(cls, release: str) -> str:
        return deb_package_name(release)

    @classmethod
    def present(cls, layout: Layout) -> bool:
        return (_admindir(layout) / "status").is_file()

    @classmethod
    def busy(cls, layout: Layout) -> str | None:
        return first_held(tuple(_admindir(layout) / lock for lock in LOCKS))

    @classmethod
    def owner(cls, layout: Layout, inside_path: str) -> Owner | None:
        # The info/*.list files are what `dpkg -S` reads; reading them ourselves needs no dpkg
        # binary (a Debian image inspected from another distro) and honours --root exactly.
        wanted = path_aliases(layout, inside_path)
        info = _admindir(layout) / "info"
        if not info.is_dir():
            return None
        for listing in sorted(info.glob("*.list")):
            try:
                text = "\n" + listing.read_text(errors="replace")
            except OSError:
                continue
            if not text.endswith("\n"):
                text += "\n"
            if any(f"\n{path}\n" in text for path in wanted):
                package = listing.name.removesuffix(".list").split(":", 1)[0]
                return Owner(cls.name, package, cls.installed_version(layout, package))
        return None

    @classmethod
    def installed_version(cls, layout: Layout, package_name: str) -> str | None:
        try:
            status = (_admindir(layout) / "status").read_text(errors="replace")
        except OSError:
            return None
        for paragraph in status.split("\n\n"):
            if not paragraph.startswith(f"Package: {package_name}\n"):
                continue
            state = (_field(paragraph, "Status") or "").split()
            if state[-1:] in (["not-installed"], ["config-files"]):
                continue
            return _field(paragraph, "Version")
        return None

    @classmethod
    def emit(cls, layout: Layout, tree: Path, out_dir: Path) -> Path:
        tree = tree.absolute()
        package = tree_package(layout, tree)
        arch = architecture(layout, tree)
        files = verified_files(tree)
        directories = tree_directories(files) | _parents(package.inside_dir)
        out_dir = out_dir.absolute()
        out_dir.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(dir=out_dir, prefix=".build-deb-"))
        try:
            staged = build / "root"
            stage(tree, files, staged / package.inside_dir.lstrip("/"))
            control_dir = staged / "DEBIAN"
            control_dir.mkdir(mode=0o755)
            control_dir.chmod(0o755)
            size = installed_size_kib(files, len(directories) + 1)
            (control_dir / "control").write_text(_control(package, arch, size))
            prefix = package.inside_dir.lstrip("/")
            md5s = [
                {"md5": f.md5, "path": f"{prefix}/{f.path}"} for f in files if f.md5 is not None
            ]
            (control_dir / "md5sums").write_text(render("deb/md5sums.j2", files=md5s))
            for name in ("control", "md5sums"):
                (control_dir / name).chmod(0o644)
            result = out_dir / f"{package.deb_name}_{package.version}_{arch}.deb"
            tool(
                [
                    "dpkg-deb",
                    "--root-owner-group",
                    "-Zxz",
                    f"-z{XZ_LEVEL}",
                    "--build",
                    staged,
                    result,
                ]
            )
        finally:
            shutil.rmtree(build, ignore_errors=True)
        return result

    @classmethod
    def register(cls, layout: Layout, package: Path) -> None:
        # dpkg has no database-only install: it unpacks the same bytes over the tree, file by
        # file through rename, so a reader never sees a partial header.
        tool(["dpkg", *_dpkg_root_args(layout), "--install", package])

    @classmethod
    def unregister(cls, layout: Layout, release: str) -> None:
        # dpkg cannot forget a package and keep its files: the package's tree goes with it.
        name = cls.package_name(release)
        if cls.installed_version(layout, name) is None:
            return
        tool(["dpkg", *_dpkg_root_args(layout), "--remove", name])


def _parents(inside_dir: str) -> set[str]:
    """The directories above the tree that a .deb also carries (/usr, /usr/src, ...)."""
    parts = inside_dir.strip("/").split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def _field(paragraph: str, name: str) -> str | None:
    """A single-line field of a dpkg status paragraph (Status and Version always are single-line,
    deb-control(5)). Read here, not through a library: the distribution's packages of this tool
    depend on python3-jinja2 only, and `remove` must work from them (package removal calls it)."""
    prefix = f"{name.lower()}:"
    for line in paragraph.splitlines():
        if line[:1] not in (" ", "\t") and line.lower().startswith(prefix):
            return line[len(prefix) :].strip() or None
    return None
