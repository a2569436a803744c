"""Helpers for the reliability tests: mount small filesystems, check published trees.

The manifest reader here is deliberately our own (a dozen lines): these tests judge the tool's
output, so they do not lean on the tool's parser to do it.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import stat
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kheaders_pkg.errors import ExitCode

TREES = "usr/src/kheaders-pkg"
STAMP = ".kheaders-pkg.json"
MANIFEST = ".kheaders-pkg.manifest"
DOCUMENTED = frozenset(int(c) for c in ExitCode)
# Names this tool creates in its trees dir and in /lib/modules/$KVER while it works.
LEFTOVER = re.compile(r"^(\.staging-|\.trash-|\.(build|source)\.kheaders-pkg-new$)")


def assert_clean_error(p: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """The documented failure shape: the code, one line on stderr, no traceback."""
    detail = f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert p.returncode == code, detail
    assert "Traceback" not in p.stderr, detail
    errors = [ln for ln in p.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, detail
    for w in words:
        assert w in errors[0].lower(), detail


# --- small filesystems ------------------------------------------------------------------------


@contextmanager
def mounted_tmpfs(path: Path, size: str, *, ro: bool = False) -> Iterator[Path]:
    """A real size-limited filesystem at `path` (root only; tests need it, so no fallback)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0755" + (",ro" if ro else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True)


@contextmanager
def bind_ro(path: Path) -> Iterator[Path]:
    """`path` made read-only by a read-only bind mount of itself (chmod does not stop root)."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# --- published trees --------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestLine:
    kind: str
    value: str  # sha256 for files, the target for links
    size: int
    path: str


def read_manifest(tree: Path) -> list[ManifestLine]:
    out = []
    for line in (tree / MANIFEST).read_text().splitlines():
        kind, value, size, path = line.split("\t")
        out.append(ManifestLine(kind, value, int(size) if kind == "f" else 0, path))
    return out


def tree_problems(
    tree: Path, sample: int | None = None, rng: random.Random | None = None
) -> list[str]:
    """[] when the tree is complete: stamp readable, every (or `sample`) manifest entry right."""
    import json

    try:
        stamp = json.loads((tree / STAMP).read_text())
        lines = read_manifest(tree)
    except (OSError, ValueError) as err:
        return [f"{tree}: stamp or manifest unreadable: {err}"]
    problems: list[str] = []
    if stamp.get("file_count") != len(lines):
        problems.append(f"{tree}: stamp file_count {stamp.get('file_count')} != {len(lines)}")
    if sample is not None and sample < len(lines):
        lines = (rng or random.Random(0)).sample(lines, sample)
    for e in lines:
        p = tree / e.path
        try:
            st = os.lstat(p)
        except OSError as err:
            problems.append(f"{e.path}: {err.strerror}")
            continue
        if e.kind == "l":
            if not stat.S_ISLNK(st.st_mode) or os.readlink(p) != e.value:
                problems.append(f"{e.path}: wrong link")
        elif not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
            problems.append(f"{e.path}: wrong kind or size")
        else:
            with open(p, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != e.value:
                    problems.append(f"{e.path}: content differs")
    return problems


def link_target(root: Path, release: str, name: str) -> str | None:
    try:
        return os.readlink(root / "lib/modules" / release / name)
    except FileNotFoundError:
        return None


def published_trees(root: Path, release: str) -> dict[str, Path]:
    """build/source that exist, as host paths (our links are absolute inside the root)."""
    out = {}
    for name in ("build", "source"):
        target = link_target(root, release, name)
        if target is not None:
            assert target.startswith("/"), f"{name} -> {target} is not absolute"
            out[name] = root / target.lstrip("/")
    return out


def generation_dirs(root: Path, release: str) -> list[str]:
    base = root / TREES / release
    try:
        return sorted(n for n in os.listdir(base) if n.startswith("gen-"))
    except FileNotFoundError:
        return []


def leftovers(root: Path) -> list[str]:
    found: list[str] = []
    for base in (root / TREES, root / "lib/modules"):
        for dirpath, dirnames, filenames in os.walk(base):
            for n in dirnames + filenames:
                if LEFTOVER.match(n):
                    found.append(os.path.join(dirpath, n))
            # Do not descend into generations (thousands of headers, none of them ours to check).
            dirnames[:] = [d for d in dirnames if not d.startswith("gen-")]
    return sorted(found)


def read_loop(
    root: Path,
    release: str,
    stop: threading.Event,
    seed: int,
    problems: list[str],
    foreign_marker: str | None = None,
) -> int:
    """A header consumer in a loop: resolve build, read the stamp, verify a sample of the tree.

    A foreign tree (diverted and restored in the storm) counts as complete when it holds
    `foreign_marker`. Returns the number of reads; appends what it saw wrong to `problems`.
    """
    rng = random.Random(seed)
    reads = 0
    while not stop.is_set():
        reads += 1
        target = link_target(root, release, "build")
        if target is None:
            problems.append(f"reader {seed} read {reads}: build is missing")
            continue
        tree = (
            (root / "lib/modules" / release / target)
            if not target.startswith("/")
            else (root / target.lstrip("/"))
        )
        if foreign_marker is not None and (tree / foreign_marker).is_file():
            continue
        if found := tree_problems(tree, sample=64, rng=rng):
            problems.append(f"reader {seed} read {reads}: {target}: {found[:3]}")
    return reads


# --- "nothing written outside" ----------------------------------------------------------------


def snapshot(base: Path) -> dict[str, tuple[int, int, int, str | None]]:
    """Every entry under `base`: mode, size, mtime_ns, link target."""
    out: dict[str, tuple[int, int, int, str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for n in [*dirnames, *filenames, "."]:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            out[os.path.relpath(p, base)] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return out


def ours_in(directory: Path, names: Sequence[str] = ("kheaders", ".staging-", "gen-")) -> set[str]:
    """Entries in `directory` whose names this tool (or bcc's extraction) would use."""
    try:
        return {n for n in os.listdir(directory) if any(k in n for k in names)}
    except FileNotFoundError:
        return set()


def plant_foreign_tree(root: Path, release: str, links: dict[str, str]) -> Path:
    """A distro-looking tree for `release` that does not match any corpus kernel, `build` and
    `source` pointing at it with exactly the given link texts, and foreign = "divert" configured
    so that sync has something to divert and restore something to put back."""
    tree = root / f"usr/src/linux-headers-{release}"
    (tree / "include/linux").mkdir(parents=True)
    (tree / ".config").write_text("CONFIG_NOT_THIS_KERNEL=y\n")
    mdir = root / "lib/modules" / release
    mdir.mkdir(parents=True)
    for name, target in links.items():
        os.symlink(target, mdir / name)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/kheaders-pkg.toml").write_text('foreign = "divert"\n')
    return tree
