"""The tool's source package input and the private root its packages are installed into.

Shared by the benchmarks (figure 1 times the installed .deb, benchmarks/shipped.py) and the tests
that install the .deb and .rpm (tests/packages.py), so both build from the same copy of the
checkout and install into the same kind of namespace.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What a source package never holds: virtual environments, caches, and scratch output of
# scripts/demo and the benchmarks (it contains symlinks into a scratch root).
SOURCE_SKIP = frozenset(
    {".venv", ".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
    | {"scratch", "results"}
)

# Overlays over the host's /usr, /etc and /var (merged /usr: /lib is usr/lib), on a tmpfs at
# $KH_OVERLAY that only this namespace sees; /run/systemd is hidden so no maintainer script talks
# to a systemd. What the package changes vanishes with the namespace.
NAMESPACE_SETUP = """\
set -eu
mount -t tmpfs tmpfs "$KH_OVERLAY"
for d in usr etc var; do
    mkdir -p "$KH_OVERLAY/$d.upper" "$KH_OVERLAY/$d.work"
    mount -t overlay overlay \\
        -o "lowerdir=/$d,upperdir=$KH_OVERLAY/$d.upper,workdir=$KH_OVERLAY/$d.work" "/$d"
done
if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; fi
"""


def copy_source(dest: Path) -> None:
    """Copy the checkout to `dest` as a package build sees it."""
    shutil.copytree(REPO, dest, ignore=lambda _d, names: [n for n in names if n in SOURCE_SKIP])


def private_root_argv(script: str, *args: str) -> list[str]:
    """The command running `script` (sh, after NAMESPACE_SETUP) as root in a private mount
    namespace; `args` are its "$@". The caller's environment must set KH_OVERLAY."""
    sh = ["sh", "-c", NAMESPACE_SETUP + script, "sh", *args]
    return ["unshare", "--mount", "--propagation", "private", *sh]
