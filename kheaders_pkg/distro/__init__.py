"""Package families: who owns a path, and our generated trees as real packages.

The core calls the functions below and never names a distribution; each family in this package
(dpkg, rpm, pacman) answers for its own database when that database is present under the root.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kheaders_pkg.distro import arch, debian, rpm  # noqa: F401  (defining them registers them)
from kheaders_pkg.distro.base import PACKAGE_PREFIX, Owner, PackageFamily, is_ours
from kheaders_pkg.distro.identity import tree_package
from kheaders_pkg.distro.queue import Action, Request, dequeue, enqueue, now, pending
from kheaders_pkg.errors import PackagingError, QueuedError
from kheaders_pkg.layout import Layout, check_release
from kheaders_pkg.stamp import has_stamp

__all__ = [
    "PACKAGE_PREFIX",
    "Owner",
    "PackageFamily",
    "all_families",
    "drain_queue",
    "emit_package",
    "families",
    "family_for_format",
    "is_ours",
    "owner_of",
    "register_tree",
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
    """Build a package of format `package_format` ("deb", "rpm") from a generated tree."""
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
    assert request.tree is not None
    tree = layout.host(request.tree)
    built = family.emit(layout, tree, _packages_dir(layout))
    try:
        _attempt(layout, family, request, lambda: family.register(layout, built))
    finally:
        built.unlink(missing_ok=True)


def register_tree(layout: Layout, tree: Path) -> str | None:
    """Build our package of `tree` and record it in the root's package database.

    Returns the family's name, or None when the root has no database we build packages for.
    Raises QueuedError (exit 12) when the package manager's lock is held: the request is written
    to `<state>/queue/<release>.json` for `drain_queue`. Raises PackagingError otherwise.
    """
    family = _registering_family(layout)
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


def unregister_release(layout: Layout, release: str) -> str | None:
    """Remove our package for `release` (dpkg and rpm remove its listed files too).

    Returns the family's name, None without a database; queues like `register_tree`.
    """
    check_release(release)
    family = _registering_family(layout)
    if family is None:
        return None
    request = Request(Action.UNREGISTER, release, family.name, None, now(), "")
    reason = family.busy(layout)
    if reason is not None:
        raise _queue(layout, _with_reason(request, reason))
    _attempt(layout, family, request, lambda: family.unregister(layout, release))
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
                family.unregister(layout, request.release)
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
