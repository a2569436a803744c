"""Package families: who owns a path, and our generated trees as real packages.

The core calls the functions below and never names a distribution; each family in this package
(dpkg, rpm, pacman) answers for its own database when that database is present under the root.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from kheaders_pkg.config import Config
from kheaders_pkg.distro import arch, debian, rpm  # noqa: F401  (defining them registers them)
from kheaders_pkg.distro.base import PACKAGE_PREFIX, Owner, PackageFamily, is_ours
from kheaders_pkg.distro.identity import tree_package
from kheaders_pkg.distro.queue import Action, Request, dequeue, enqueue, now, pending
from kheaders_pkg.errors import KernelDataError, PackagingError, QueuedError
from kheaders_pkg.layout import Layout, check_release
from kheaders_pkg.stamp import has_stamp

__all__ = [
    "PACKAGE_PREFIX",
    "Owner",
    "PackageFamily",
    "all_families",
    "current_tree",
    "drain_queue",
    "emit_and_register",
    "emit_command",
    "emit_package",
    "families",
    "family_for_format",
    "is_ours",
    "owner_of",
    "register_command",
    "register_tree",
    "unregister_all",
    "unregister_release",
]

PACKAGES_DIR = "packages"  # under the state dir: private build dirs and packages being registered


def all_families() -> tuple[type[PackageFamily], ...]:
    return tuple(PackageFamily.registry.values())


def families(layout: Layout) -> tuple[type[PackageFamily], ...]:
    """The families whose database exists under the root, in registration order."""
    return tuple(f for f in all_families() if f.present(layout))


def family_for_format(package_format: str) -> type[PackageFamily]:
    for family in all_families():
        if family.format == package_format:
            return family
    known = ", ".join(sorted(f.format for f in all_families() if f.format))
    raise PackagingError(f"unknown package format {package_format!r} (known: {known})")


def owner_of(layout: Layout, inside_path: str) -> Owner | None:
    """The first package, in any present database, that owns `inside_path` (the path itself,
    not what a final symlink points to)."""
    for family in families(layout):
        found = family.owner(layout, inside_path)
        if found is not None:
            return found
    return None


def emit_package(layout: Layout, tree: Path, out_dir: Path, package_format: str) -> Path:
    """Build a package of format `package_format` ("deb", "rpm", "pacman") from a generated tree."""
    return family_for_format(package_format).emit(layout, tree, out_dir)


def _registering_family(layout: Layout) -> type[PackageFamily] | None:
    """The root's package manager, if it is one we can build packages for."""
    for family in families(layout):
        if family.format is not None:
            return family
    return None


def _packages_dir(layout: Layout) -> Path:
    return layout.state() / PACKAGES_DIR


def _queue(layout: Layout, request: Request) -> QueuedError:
    path = enqueue(layout, request)
    return QueuedError(
        f"{request.family} is busy ({request.reason}); {request.action} of {request.release} "
        f"queued in {path}"
    )


def _attempt(
    layout: Layout, family: type[PackageFamily], request: Request, action: Callable[[], None]
) -> None:
    """Run `action`; if it fails because the package manager became busy meanwhile, queue."""
    try:
        action()
    except PackagingError:
        reason = family.busy(layout)
        if reason is None:
            raise
        raise _queue(layout, _with_reason(request, reason)) from None


def _with_reason(request: Request, reason: str) -> Request:
    return Request(request.action, request.release, request.family, request.tree, now(), reason)


def _register(layout: Layout, family: type[PackageFamily], request: Request) -> None:
    if request.tree is None:
        raise PackagingError(f"queued registration of {request.release} names no tree")
    tree = layout.host(request.tree)
    built = family.emit(layout, tree, _packages_dir(layout))
    try:
        _attempt(layout, family, request, functools.partial(family.register, layout, built))
    finally:
        built.unlink(missing_ok=True)


def register_tree(layout: Layout, tree: Path, package_format: str | None = None) -> str | None:
    """Build our package of `tree` and record it in the root's package database.

    `package_format` picks the family ("deb", "rpm", "pacman"); by default the root's own.
    Returns the family's name, or None when the root has no database we build packages for. Raises
    QueuedError (exit 12) when the package manager's lock is held: the request is written to
    `<state>/queue/<release>.json` for `drain_queue`. Raises PackagingError otherwise.
    """
    family = _registering_family(layout)
    if package_format is not None:
        family = family_for_format(package_format)
        if not family.present(layout):
            raise PackagingError(
                f"cannot register a {package_format} package: no {family.name} database "
                f"under {layout.root}"
            )
    if family is None:
        return None
    package = tree_package(layout, tree)
    request = Request(Action.REGISTER, package.release, family.name, package.inside_dir, now(), "")
    reason = family.busy(layout)
    if reason is not None:
        raise _queue(layout, _with_reason(request, reason))
    _register(layout, family, request)
    dequeue(layout, package.release)  # this registration supersedes any queued one
    return family.name


def unregister_release(
    layout: Layout, release: str, family: type[PackageFamily] | None = None
) -> str | None:
    """Remove our package for `release` (dpkg and rpm remove its listed files too).

    Returns the family's name, None without a database; queues like `register_tree`.
    """
    check_release(release)
    family = family or _registering_family(layout)
    if family is None:
        return None
    request = Request(Action.UNREGISTER, release, family.name, None, now(), "")
    reason = family.busy(layout)
    if reason is not None:
        raise _queue(layout, _with_reason(request, reason))
    _attempt(layout, family, request, functools.partial(family.unregister, layout, release))
    dequeue(layout, release)
    return family.name


def drain_queue(layout: Layout) -> list[str]:
    """Carry out queued requests whose package manager is free; return the releases done.

    A request whose tree has gone since (regenerated again, or collected) is dropped: a newer
    request or none is the right one. Requests still blocked stay queued. Failures are raised as
    one PackagingError after every request was tried; their queue files stay.
    """
    done: list[str] = []
    failed: list[str] = []
    for request in pending(layout):
        family = PackageFamily.registry.get(request.family)
        if family is None or not family.present(layout):
            dequeue(layout, request.release)
            continue
        if family.busy(layout) is not None:
            continue
        try:
            if request.action is Action.UNREGISTER:
                unregister = functools.partial(family.unregister, layout, request.release)
                _attempt(layout, family, request, unregister)
            elif request.tree is None or not has_stamp(layout.host(request.tree)):
                dequeue(layout, request.release)
                continue
            else:
                _register(layout, family, request)
        except QueuedError:
            continue  # busy again: _attempt re-queued it with the new reason
        except PackagingError as e:
            failed.append(f"{request.release}: {e}")
            continue
        dequeue(layout, request.release)
        done.append(request.release)
    if failed:
        raise PackagingError(f"queued registrations failed: {'; '.join(failed)}")
    return done


# --- what the command line calls ------------------------------------------------------------


def _release(layout: Layout, release: str | None) -> str:
    """The given release, or the running kernel's (`uname -r`, under --kernel-fs)."""
    if release is not None:
        return check_release(release)
    try:
        return check_release(layout.kernel.osrelease.read_text().strip())
    except OSError as e:
        raise KernelDataError(f"{layout.kernel.osrelease}: cannot read ({e.strerror})") from None


def current_tree(layout: Layout, release: str) -> Path:
    """Our generated tree that `build` points to for `release`; PackagingError if there is none."""
    from kheaders_pkg.tree import TreeKind, tree_state

    state = tree_state(layout, release)
    if state.kind is not TreeKind.OURS or state.tree is None or state.stamp is None:
        raise PackagingError(
            f"no generated tree for {release} to package ({state.kind}); run sync first"
        )
    return state.tree


def _kept_packages_dir(layout: Layout, release: str) -> Path:
    return _packages_dir(layout) / check_release(release)


def emit_and_register(
    layout: Layout, config: Config, release: str, generation: Path | None
) -> list[Path]:
    """After a regeneration: build the packages `config.emit` names and, with `config.register`,
    register the root's own format. Built packages not registered are kept, one per format, in
    `<state>/packages/<release>/`; returns their paths. Raises QueuedError after building when
    the registration had to be queued."""
    tree = generation if generation is not None else current_tree(layout, release)
    registering = _registering_family(layout) if config.register else None
    formats = [str(f) for f in config.emit]
    if config.register and (registering is None or registering.format not in formats):
        found = registering.name if registering else "none"
        raise PackagingError(
            f"cannot register: emit = {formats} does not include the root's package format "
            f"(package manager: {found})"
        )
    kept: list[Path] = []
    for package_format in formats:
        family = family_for_format(package_format)
        if family is registering:
            continue
        directory = _kept_packages_dir(layout, release)
        for old in directory.glob(f"*.{package_format}"):
            old.unlink()
        kept.append(family.emit(layout, tree, directory))
    if registering is not None:
        register_tree(layout, tree, registering.format)
    return kept


def emit_command(layout: Layout, release: str | None, package_format: str, out_dir: Path) -> Path:
    """`kheaders-pkg emit`: a package of the current tree of `release` (default: running)."""
    tree = current_tree(layout, _release(layout, release))
    return emit_package(layout, tree, out_dir, package_format)


def register_command(
    layout: Layout, config: Config, release: str | None, package_format: str | None
) -> str:
    """`kheaders-pkg register`: register the current tree of `release`; returns a line to print."""
    drain_queue(layout)
    name = _release(layout, release)
    tree = current_tree(layout, name)
    family = register_tree(layout, tree, package_format)
    if family is None:
        return f"nothing to register {name} with: no package database under {layout.root}"
    package = tree_package(layout, tree)
    return f"registered {name} (version {package.version}) with {family}"


def unregister_all(layout: Layout, release: str) -> list[str]:
    """A kernel is going away: remove our package for `release` from every present database
    (and its files) and drop kept packages and queued requests. Returns the families done;
    raises QueuedError, after trying every family, if one was busy."""
    done: list[str] = []
    queued: QueuedError | None = None
    for family in families(layout):
        if family.format is None:
            continue
        try:
            if family.installed_version(layout, family.package_name(release)) is not None:
                unregister_release(layout, release, family)
                done.append(family.name)
        except QueuedError as e:
            queued = e
    directory = _kept_packages_dir(layout, release)
    if directory.is_dir():
        for old in directory.iterdir():
            old.unlink()
        directory.rmdir()
    if queued is not None:
        raise queued
    dequeue(layout, release)
    return done
