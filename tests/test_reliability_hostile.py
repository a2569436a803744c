"""A hostile or odd root: our directories as symlinks, someone else's or world-writable; planted
staging names; --root paths with symlinks that point out. Refused with one line and exit 8, or
handled, and never a write outside the root."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import corpus_kernel, run_cli
from tests.reliability_util import (
    assert_clean_error,
    generation_dirs,
    leftovers,
    link_target,
    mounted_tmpfs,
    ours_in,
    published_trees,
    snapshot,
    tree_problems,
)

KH_A = corpus_kernel("kh-6.1.192-kh-a")
RELEASE = KH_A.release
TREES = "usr/src/kheaders-pkg"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "fs", "512m") as fs:
        r = fs / "root"
        r.mkdir()
        yield r


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A directory outside the root that nothing may touch."""
    c = tmp_path / "canary"
    (c / "sub").mkdir(parents=True)
    (c / "file").write_text("canary\n")
    (c / "sub/inner").write_text("inner\n")
    return c


def _sync_outside_untouched(root: Path, canary: Path) -> tuple[int, str]:
    """Run sync; the canary, /tmp and the host's own paths must not change."""
    before = snapshot(canary)
    tmp_before = ours_in(Path("/tmp"))
    host = {p: os.path.lexists(p) for p in (f"/lib/modules/{RELEASE}", "/usr/src/kheaders-pkg")}
    p = run_cli(root, KH_A.sysroot, "sync")
    assert "Traceback" not in p.stderr, p.stderr
    assert snapshot(canary) == before, "the canary outside the root changed"
    assert ours_in(Path("/tmp")) - tmp_before == set(), "sync created files in /tmp"
    assert {p: os.path.lexists(p) for p in host} == host, "sync wrote to the host's own paths"
    return p.returncode, p.stderr


# --- our directories --------------------------------------------------------------------------


def _trees_symlink_inside(root: Path, canary: Path) -> None:
    (root / "srv/elsewhere").mkdir(parents=True)
    (root / "usr/src").mkdir(parents=True)
    os.symlink("/srv/elsewhere", root / TREES)


def _trees_symlink_to_canary(root: Path, canary: Path) -> None:
    (root / "usr/src").mkdir(parents=True)
    os.symlink(str(canary), root / TREES)
    # Inside the root, that absolute path exists too: the tool must still refuse the symlink.
    (root / str(canary).lstrip("/")).mkdir(parents=True)


def _release_symlink(root: Path, canary: Path) -> None:
    (root / TREES).mkdir(parents=True)
    (root / "etc").mkdir()
    os.symlink("/etc", root / TREES / RELEASE)


def _trees_foreign_uid(root: Path, canary: Path) -> None:
    (root / TREES).mkdir(parents=True)
    os.chown(root / TREES, 12345, 12345)


def _trees_world_writable(root: Path, canary: Path) -> None:
    (root / TREES).mkdir(parents=True)
    os.chmod(root / TREES, 0o777)


def _release_foreign_uid(root: Path, canary: Path) -> None:
    (root / TREES / RELEASE).mkdir(parents=True)
    os.chown(root / TREES / RELEASE, 12345, 12345)


def _release_world_writable(root: Path, canary: Path) -> None:
    (root / TREES / RELEASE).mkdir(parents=True)
    os.chmod(root / TREES / RELEASE, 0o1777)


def _lock_symlink(root: Path, canary: Path) -> None:
    (root / TREES).mkdir(parents=True)
    os.symlink(str(canary / "file"), root / TREES / ".lock")


REFUSED: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "trees dir is a symlink inside the root": (_trees_symlink_inside, "symlink"),
    "trees dir is a symlink to a path outside": (_trees_symlink_to_canary, "symlink"),
    "release dir is a symlink": (_release_symlink, "symlink"),
    "trees dir owned by uid 12345": (_trees_foreign_uid, "uid 12345"),
    "trees dir world-writable": (_trees_world_writable, "writable by others"),
    "release dir owned by uid 12345": (_release_foreign_uid, "uid 12345"),
    "release dir world-writable": (_release_world_writable, "writable by others"),
    "lock is a symlink": (_lock_symlink, "lock"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsafe_tree_directories_are_refused_with_one_line(
    root: Path, canary: Path, case: str
) -> None:
    plant, words = REFUSED[case]
    plant(root, canary)
    code, err = _sync_outside_untouched(root, canary)
    assert_clean_error_text(code, err, 8, words)
    assert link_target(root, RELEASE, "build") is None
    assert leftovers(root) == []
    # Nothing was written anywhere a generation could hide: no gen-* directory in the whole root.
    assert not [p for p in root.rglob("gen-*")], "a generation was written despite the refusal"


def assert_clean_error_text(code: int, err: str, want: int, words: str) -> None:
    import subprocess

    assert_clean_error(subprocess.CompletedProcess([], code, "", err), want, words.lower())


# --- planted names ----------------------------------------------------------------------------


def test_planted_staging_and_trash_directories_are_cleaned(root: Path, canary: Path) -> None:
    trees = root / TREES
    (trees / f".staging-{RELEASE}-00000000/include").mkdir(parents=True)
    (trees / f".staging-{RELEASE}-00000000/include/evil.h").write_text("#error planted\n")
    (trees / f"{RELEASE}/.trash-gen-0009-aa-11111111").mkdir(parents=True)
    os.symlink(str(canary), trees / f".staging-{RELEASE}-deadbeef")
    os.symlink(str(canary), trees / ".trash-x")
    code, err = _sync_outside_untouched(root, canary)
    assert code == 0, err
    assert leftovers(root) == []
    assert (canary / "file").read_text() == "canary\n"
    tree = published_trees(root, RELEASE)["build"]
    assert tree_problems(tree) == []
    assert not (tree / "include/evil.h").exists()


def test_planted_temporary_link_is_replaced_not_followed(root: Path, canary: Path) -> None:
    mdir = root / "lib/modules" / RELEASE
    mdir.mkdir(parents=True)
    os.symlink(str(canary), mdir / ".build.kheaders-pkg-new")
    code, err = _sync_outside_untouched(root, canary)
    assert code == 0, err
    assert leftovers(root) == []
    gen = generation_dirs(root, RELEASE)[0]
    assert link_target(root, RELEASE, "build") == f"/{TREES}/{RELEASE}/{gen}"


def test_planted_record_temp_symlink_is_not_written_through(root: Path, canary: Path) -> None:
    """The divert record is written via NAME.json.new: a symlink planted there must not be
    followed (it would overwrite any file on the host)."""
    distro = root / f"usr/src/linux-headers-{RELEASE}"
    distro.mkdir(parents=True)
    (distro / ".config").write_text("CONFIG_OTHER=y\n")
    mdir = root / "lib/modules" / RELEASE
    mdir.mkdir(parents=True)
    os.symlink(f"/usr/src/linux-headers-{RELEASE}", mdir / "build")
    (root / "etc").mkdir()
    (root / "etc/kheaders-pkg.toml").write_text('foreign = "divert"\n')
    links = root / "var/lib/kheaders-pkg/links"
    links.mkdir(parents=True)
    os.symlink(str(canary / "file"), links / f"{RELEASE}.json.new")
    code, err = _sync_outside_untouched(root, canary)
    assert code == 0, err
    record = json.loads((links / f"{RELEASE}.json").read_text())
    assert record == {"build": f"/usr/src/linux-headers-{RELEASE}", "source": None}


# --- --root paths with symlinks that point out ------------------------------------------------


def _lib_abs(root: Path, canary: Path) -> None:
    os.symlink("/lib", root / "lib")


def _usr_src_abs(root: Path, canary: Path) -> None:
    (root / "usr").mkdir()
    os.symlink("/usr/src", root / "usr/src")


def _modules_release_to_etc(root: Path, canary: Path) -> None:
    (root / "lib/modules").mkdir(parents=True)
    os.symlink("/etc", root / "lib/modules" / RELEASE)


def _modules_release_to_canary(root: Path, canary: Path) -> None:
    (root / "lib/modules").mkdir(parents=True)
    os.symlink(str(canary), root / "lib/modules" / RELEASE)


def _modules_release_dotdot(root: Path, canary: Path) -> None:
    (root / "lib/modules").mkdir(parents=True)
    os.symlink("../../../../../../../../" + str(canary).lstrip("/"), root / "lib/modules" / RELEASE)


OUTWARD = {
    "lib -> /lib": _lib_abs,
    "usr/src -> /usr/src": _usr_src_abs,
    "lib/modules/KVER -> /etc": _modules_release_to_etc,
    "lib/modules/KVER -> canary (absolute)": _modules_release_to_canary,
    "lib/modules/KVER -> ../../.. canary": _modules_release_dotdot,
}


@pytest.mark.parametrize("case", sorted(OUTWARD))
def test_root_symlinks_pointing_out_are_followed_inside_the_root_only(
    root: Path, canary: Path, case: str
) -> None:
    """Like chroot: an absolute link means the same path under --root, never the host's."""
    OUTWARD[case](root, canary)
    code, err = _sync_outside_untouched(root, canary)
    if code == 0:
        assert run_cli(root, KH_A.sysroot, "check").returncode == 0
        assert leftovers(root) == []
    else:
        assert_clean_error_text(code, err, 8, "")
