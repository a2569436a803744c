"""`verify` and `sync --verify`, through the installed console script: each way a published tree
gets damaged from outside is found (exit 13, naming the path) and replaced by a new generation
that shares only intact files; the damaged generation is never changed in place."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kheaders_pkg.errors import ExitCode
from kheaders_pkg.verify import SHOWN, DamageKind, verify_generation
from tests.conftest import copy_sysroot, corpus_kernel
from tests.test_cli_installed import assert_one_line_error, run

SCHED = "include/linux/sched.h"
FS = "include/linux/fs.h"
NETFILTER = "include/uapi/linux/netfilter"


class Root:
    def __init__(self, tmp_path: Path, kfs: Path | None = None) -> None:
        self.kfs = kfs or copy_sysroot(corpus_kernel("kh-6.1.192-kh-a"), tmp_path / "kfs")
        self.root = tmp_path / "root"
        self.root.mkdir(exist_ok=True)
        self.release = "6.1.192-kh"

    def cli(self, *args: str) -> tuple[int, str, str]:
        p = run("--root", self.root, "--kernel-fs", self.kfs, *args)
        return p.returncode, p.stdout, p.stderr

    def tree(self) -> Path:
        link = self.root / "lib/modules" / self.release / "build"
        return self.root / os.readlink(link).lstrip("/")


@pytest.fixture(scope="module")
def synced_once(tmp_path_factory: pytest.TempPathFactory) -> Root:
    r = Root(tmp_path_factory.mktemp("verify"))
    code, _, err = r.cli("sync")
    assert code == 0, err
    return r


@pytest.fixture
def synced(synced_once: Root, tmp_path: Path) -> Root:
    """A private copy of one synced root (cp -a keeps the links and modes as sync made them)."""
    subprocess.run(["cp", "-a", str(synced_once.root), str(tmp_path / "root")], check=True)
    return Root(tmp_path, synced_once.kfs)


def _append(t: Path) -> None:
    with open(t / SCHED, "a") as f:
        f.write("#define CHEF 1\n")


def _truncate(t: Path) -> None:
    os.truncate(t / SCHED, 100)


def _same_size(t: Path) -> None:
    data = bytearray((t / SCHED).read_bytes())
    data[10] ^= 0x20
    (t / SCHED).write_bytes(bytes(data))


def _delete(t: Path) -> None:
    (t / SCHED).unlink()


def _extra(t: Path) -> None:
    (t / "include/linux/planted.h").write_text("#define X 1\n")


def _mode(t: Path) -> None:
    (t / SCHED).chmod(0o666)


def _executable(t: Path) -> None:
    (t / SCHED).chmod(0o755)


def _symlink(t: Path) -> None:
    copy = t.parent / "elsewhere.h"
    shutil.copyfile(t / SCHED, copy)
    (t / SCHED).unlink()
    os.symlink(copy, t / SCHED)


def _delete_dir(t: Path) -> None:
    shutil.rmtree(t / NETFILTER)


def _dir_symlink(t: Path) -> None:
    copy = t.parent / "netfilter-copy"
    shutil.copytree(t / NETFILTER, copy)
    shutil.rmtree(t / NETFILTER)
    os.symlink(copy, t / NETFILTER)


TAMPER: dict[str, tuple[Callable[[Path], None], str, DamageKind]] = {
    "appended-line": (_append, SCHED, DamageKind.SIZE),
    "truncated": (_truncate, SCHED, DamageKind.SIZE),
    "same-size-change": (_same_size, SCHED, DamageKind.CONTENT),
    "deleted-file": (_delete, SCHED, DamageKind.MISSING),
    "extra-file": (_extra, "include/linux/planted.h", DamageKind.EXTRA),
    "mode-change": (_mode, SCHED, DamageKind.MODE),
    "made-executable": (_executable, SCHED, DamageKind.MODE),
    "replaced-by-symlink": (_symlink, SCHED, DamageKind.TYPE),
    "deleted-directory": (_delete_dir, NETFILTER, DamageKind.MISSING),
    "directory-replaced-by-symlink": (_dir_symlink, NETFILTER, DamageKind.TYPE),
}


def test_an_untouched_tree_is_intact(synced: Root) -> None:
    code, out, err = synced.cli("verify")
    assert code == 0, err
    assert out.startswith("intact: ") and synced.tree().name in out
    code, out, _ = synced.cli("verify", "--json")
    obj = json.loads(out)
    assert code == 0 and obj["intact"] is True and obj["damage"] == []
    assert obj["checked"] > 1000 and obj["release"] == synced.release


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_damage_is_found_and_a_new_generation_replaces_it(synced: Root, case: str) -> None:
    tamper, path, kind = TAMPER[case]
    damaged = synced.tree()
    intact_inode = os.stat(damaged / FS).st_ino
    tamper(damaged)
    before = {p: (damaged / p).lstat() for p in (SCHED, NETFILTER) if os.path.lexists(damaged / p)}

    # `check` compares identities only: still fresh. `verify` reads the files.
    assert synced.cli("check")[0] == 0
    p = run("--root", synced.root, "--kernel-fs", synced.kfs, "verify")
    assert_one_line_error(p, ExitCode.DAMAGED, path, "sync --verify")
    code, out, _ = synced.cli("verify", "--json")
    assert code == ExitCode.DAMAGED
    found = json.loads(out)["damage"]
    assert {"path": path, "kind": str(kind)} in [
        {"path": d["path"], "kind": d["kind"]} for d in found
    ], found

    # Plain sync trusts the identity; sync --verify makes a new generation.
    assert synced.cli("sync")[1].startswith("fresh: ")
    code, out, err = synced.cli("sync", "--verify")
    assert code == 0, err
    assert "damaged: " in out and path in out
    repaired = synced.tree()
    assert repaired != damaged
    assert synced.cli("verify")[0] == 0
    # Intact files are shared with the damaged generation; the damaged one is not.
    assert os.stat(repaired / FS).st_ino == intact_inode
    if path == SCHED and (damaged / SCHED).is_file() and not (damaged / SCHED).is_symlink():
        assert os.stat(repaired / SCHED).st_ino != os.stat(damaged / SCHED).st_ino
    # The damaged generation was not repaired in place.
    if damaged.exists():
        for rel, st in before.items():
            assert (damaged / rel).lstat().st_ino == st.st_ino
            assert (damaged / rel).lstat().st_size == st.st_size
        assert not verify_generation(damaged, synced.release).intact
    # A second sync --verify has nothing to do.
    code, out, _ = synced.cli("sync", "--verify")
    assert code == 0 and out.startswith("fresh: ") and synced.tree() == repaired


def test_many_damaged_paths_name_the_first_few_then_count(synced: Root) -> None:
    t = synced.tree()
    headers = sorted((t / "include/linux").glob("a*.h"))[: SHOWN + 3]
    for h in headers:
        with open(h, "a") as f:
            f.write("\n")
    p = run("--root", synced.root, "--kernel-fs", synced.kfs, "verify")
    assert_one_line_error(p, ExitCode.DAMAGED, "and 3 more", f"{SHOWN + 3} damaged paths")
    for h in headers[:SHOWN]:
        assert h.relative_to(t).as_posix() in p.stderr
    assert headers[-1].relative_to(t).as_posix() not in p.stderr


def test_a_changed_manifest_shares_nothing_with_the_new_generation(synced: Root) -> None:
    t = synced.tree()
    with open(t / ".kheaders-pkg.manifest", "a") as f:
        f.write("f\t" + "0" * 64 + "\t1\tzzz\n")
    p = run("--root", synced.root, "--kernel-fs", synced.kfs, "verify")
    assert_one_line_error(p, ExitCode.DAMAGED, ".kheaders-pkg.manifest")
    code, _, err = synced.cli("sync", "--verify")
    assert code == 0, err
    new = synced.tree()
    assert os.stat(new / FS).st_ino != os.stat(t / FS).st_ino
    assert synced.cli("verify")[0] == 0


def test_verify_without_a_tree_of_ours_says_sync_would_make_one(tmp_path: Path) -> None:
    r = Root(tmp_path)
    code, out, _ = r.cli("verify")
    assert code == ExitCode.NEEDS_SYNC and "no tree of ours" in out
    code, out, _ = r.cli("verify", "--kernel", r.release)
    assert code == ExitCode.NEEDS_SYNC


def test_sync_verify_on_a_missing_tree_makes_one(tmp_path: Path) -> None:
    r = Root(tmp_path)
    code, _, err = r.cli("sync", "--verify")
    assert code == 0, err
    assert r.cli("verify")[0] == 0
