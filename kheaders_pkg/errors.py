"""One exception hierarchy; each class carries its documented exit code.

Every error a user can cause ends as one line on stderr naming what was wrong and what was kept,
never a traceback. The codes are part of the interface (README "Exit codes").
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0  # done; for `check`: the tree is fresh (ours or a matching distro tree)
    INTERNAL = 1  # a bug: an unexpected exception (reported with a traceback only under -v)
    USAGE = 2  # bad command line (argparse's own code)
    NEEDS_SYNC = 3  # `check`: headers missing or stale, `sync` would regenerate them
    FOREIGN_STALE = 4  # a tree we do not own does not match the kernel; left alone
    UNSUPPORTED = 5  # the kernel has no CONFIG_IKHEADERS (or no archive can be had)
    BAD_ARCHIVE = 6  # the headers archive is corrupt, hostile or over a limit; nothing published
    BAD_KERNEL = 7  # the kernel's files (notes, config, image, module) are unreadable or malformed
    FILESYSTEM = 8  # read-only, full, permission denied, unsafe path; previous tree kept
    BUSY = 9  # another kheaders-pkg run holds the lock past the wait limit
    CONFIG = 10  # /etc/kheaders-pkg.toml is invalid
    PACKAGING = 11  # emitting or registering a package failed
    QUEUED = 12  # the package manager is busy: the registration is queued, not lost
    DAMAGED = 13  # `verify`: the published tree differs from its generation's manifest
    ELSEWHERE = 14  # published, but not at /lib/modules/$KVER/build (read-only root, no sysext)
    KBUILD = 15  # a module-building (kbuild) tree cannot be made; the headers-only tree is kept


class KheadersError(Exception):
    """Base of every error we expect; `str()` is the one line the user sees."""

    exit_code: ExitCode = ExitCode.INTERNAL


class UsageError(KheadersError):
    exit_code = ExitCode.USAGE


class UnsupportedError(KheadersError):
    exit_code = ExitCode.UNSUPPORTED


class ArchiveError(KheadersError):
    """The archive is corrupt, hostile or over a limit."""

    exit_code = ExitCode.BAD_ARCHIVE


class KernelDataError(KheadersError):
    """A kernel file (notes, config, image, module) is missing or malformed."""

    exit_code = ExitCode.BAD_KERNEL


class NotesError(KernelDataError):
    pass


class ELFError(KernelDataError):
    pass


class ImageError(KernelDataError):
    pass


class FilesystemError(KheadersError):
    exit_code = ExitCode.FILESYSTEM


class UnsafePathError(FilesystemError):
    """A path would leave the root, follows a symlink it must not, or is owned by someone else."""


class ManifestError(FilesystemError):
    """Our manifest at the top of a generated tree is malformed: the tree cannot be trusted."""


class BusyError(KheadersError):
    exit_code = ExitCode.BUSY


class ConfigError(KheadersError):
    exit_code = ExitCode.CONFIG


class PackagingError(KheadersError):
    exit_code = ExitCode.PACKAGING


class QueuedError(KheadersError):
    exit_code = ExitCode.QUEUED


class KbuildError(KheadersError):
    """`kbuild` was asked for and cannot be made: Module.symvers cannot be recovered or checked,
    or a piece of the kbuild tree is missing (the line says which and from which package)."""

    exit_code = ExitCode.KBUILD


class ElsewhereError(KheadersError):
    """Headers are published, but not where tools look by default (a read-only root without
    systemd-sysext, or a merge that failed): the line names the path and the environment
    settings that reach it."""

    exit_code = ExitCode.ELSEWHERE


class TreeDamagedError(KheadersError):
    """The published tree differs from its manifest: changed from outside since it was made."""

    exit_code = ExitCode.DAMAGED


class MissingPartError(UnsupportedError):
    """A Python package this command needs is not installed here (exit 5, like a kernel without
    the archive: this installation cannot do it), with what to install."""


# The optional parts and how each way of installing the tool gets them. The rpm bindings exist only
# as the distribution's package (nothing on PyPI provides `rpm`), so a plain virtual environment
# needs --system-site-packages to see them.
MISSING_PART_ADVICE = {
    "rpm": "the rpm Python bindings: install python3-rpm (apt or dnf); a virtual environment "
    "needs --system-site-packages to see them",
    "jinja2": "jinja2: install python3-jinja2 (apt or dnf) or `pip install jinja2`",
    "markupsafe": "jinja2's markupsafe: install python3-markupsafe or `pip install markupsafe`",
    "debian_inspector": "debian-inspector: `pip install debian-inspector`",
}


def missing_part(error: ModuleNotFoundError) -> MissingPartError | None:
    """The one-line error for an optional part that failed to import, or None for a bug."""
    top = (error.name or "").partition(".")[0]
    advice = MISSING_PART_ADVICE.get(top)
    if advice is None:
        return None
    return MissingPartError(f"this command needs {advice}")
