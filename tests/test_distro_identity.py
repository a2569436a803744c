"""Package identity, version ordering, the lock probe and the queue file: pure or nearly so, no
package tool run (the rpm and debian-inspector libraries are used). pacman's ownership answers are
checked against pacman itself, in a database pacman made, in test_distro_pacman.py."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
import rpm
from debian_inspector.version import Version

from kheaders_pkg.distro import is_ours
from kheaders_pkg.distro.base import path_aliases
from kheaders_pkg.distro.identity import deb_package_name, package_version, rpm_package_name
from kheaders_pkg.distro.queue import Action, Request, enqueue, lock_holder, pending, queue_file
from kheaders_pkg.errors import PackagingError
from kheaders_pkg.layout import Layout
from tests.conftest import hold_lock as _hold_lock

# (older generation, its build id, newer generation, its build id): newer must sort higher.
SUCCESSIVE = [
    (1, "eb4fbcd037e7", 2, "0000aaaabbbb"),  # the id never outweighs the generation
    (1, "ffffffffffff", 2, "000000000000"),
    (9, "1234567890ab", 10, "1234567890ab"),  # numeric, not lexical
    (99, "abcdefabcdef", 100, "000000000001"),
    (1, "0000aaaabbbb", 1, "0000aaaabbbc"),  # same generation: only tells builds apart
    (1999, "a", 2000, "b"),
]


@pytest.mark.parametrize(("old_gen", "old_id", "new_gen", "new_id"), SUCCESSIVE)
def test_newer_generation_sorts_higher_for_dpkg_and_rpm(
    old_gen: int, old_id: str, new_gen: int, new_id: str
) -> None:
    old, new = package_version(old_gen, old_id), package_version(new_gen, new_id)
    assert Version.from_string(old) < Version.from_string(new)
    assert rpm.labelCompare(("0", old, "1"), ("0", new, "1")) == -1


def test_same_build_compares_equal() -> None:
    v = package_version(3, "6b6f5988478a")
    assert v == "3.6b6f5988478a"
    assert Version.from_string(v) == Version.from_string(v)
    assert rpm.labelCompare(("0", v, "1"), ("0", v, "1")) == 0


def test_version_uses_the_first_twelve_hex_digits() -> None:
    assert package_version(7, "eb4fbcd037e7253717950bf2b93bd5566f47c56f") == "7.eb4fbcd037e7"


@pytest.mark.parametrize("bad", ["", "EB4F", "eb4f-1", "xyz", "eb4f\n"])
def test_version_refuses_an_id_that_is_not_hex(bad: str) -> None:
    with pytest.raises(PackagingError):
        package_version(1, bad)


NAMES = [
    ("6.1.0-56-amd64", "kheaders-tree-6.1.0-56-amd64", "kheaders-tree-6.1.0-56-amd64"),
    (
        "6.12.107+deb13-amd64",
        "kheaders-tree-6.12.107+deb13-amd64",
        "kheaders-tree-6.12.107+deb13-amd64",
    ),
    ("6.1.192-kh", "kheaders-tree-6.1.192-kh", "kheaders-tree-6.1.192-kh"),
    ("6.5.6-300.fc39.x86_64", "kheaders-tree-6.5.6-300.fc39.x86+64", None),
    ("6.8.0_My~Build", "kheaders-tree-6.8.0+my+build", "kheaders-tree-6.8.0_My+Build"),
]


@pytest.mark.parametrize(("release", "deb", "rpm_name"), NAMES)
def test_package_name_carries_the_release_in_each_format(
    release: str, deb: str, rpm_name: str | None
) -> None:
    assert deb_package_name(release) == deb
    assert rpm_package_name(release) == (rpm_name or "kheaders-tree-" + release)
    assert is_ours(deb_package_name(release))
    assert is_ours(rpm_package_name(release))


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("kheaders-tree-6.1.0-56-amd64", True),
        ("kheaders-tree-6.1.0-56-amd64:amd64", True),
        ("kheaders-tree-", False),
        ("kheaders-pkg", False),
        ("linux-headers-6.1.0-56-amd64", False),
        ("kernel-devel", False),
        ("", False),
    ],
)
def test_is_ours_recognises_only_generated_packages(name: str, ours: bool) -> None:
    assert is_ours(name) is ours


def test_lock_probe_names_the_holder_without_taking_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    assert lock_holder(lock) is None
    child = _hold_lock(lock)
    try:
        assert lock_holder(lock) == child.pid
        # The probe did not take or break the lock: a non-blocking attempt still fails.
        with lock.open("r+") as f, pytest.raises(OSError):
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        child.communicate("")
    assert lock_holder(lock) is None


def test_lock_probe_does_not_create_a_missing_lock(tmp_path: Path) -> None:
    assert lock_holder(tmp_path / "absent") is None
    assert not (tmp_path / "absent").exists()


def test_a_newer_request_for_a_release_replaces_the_queued_one(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path)
    first = Request(Action.REGISTER, "6.1.192-kh", "dpkg", "/usr/src/x/gen-0001", "2026-01-01", "a")
    second = Request(
        Action.REGISTER, "6.1.192-kh", "dpkg", "/usr/src/x/gen-0002", "2026-01-02", "b"
    )
    enqueue(layout, first)
    path = enqueue(layout, second)
    assert path == tmp_path / "var/lib/kheaders-pkg/queue/6.1.192-kh.json"
    assert pending(layout) == [second]


def test_unreadable_queue_entries_are_skipped_not_fatal(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path)
    good = Request(Action.UNREGISTER, "6.1.0-56-amd64", "rpm", None, "2026-01-01", "busy")
    enqueue(layout, good)
    (queue_file(layout, "6.1.0-56-amd64").parent / "junk.json").write_text("{not json")
    (queue_file(layout, "6.1.0-56-amd64").parent / "other.json").write_text(good.to_json())
    assert pending(layout) == [good]  # other.json names another release: not trusted


def _merged_usr_root(root: Path) -> Path:
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    return root


def test_merged_usr_roots_ask_for_both_spellings(tmp_path: Path) -> None:
    merged = Layout(root=_merged_usr_root(tmp_path / "merged"))
    (tmp_path / "split/lib").mkdir(parents=True)
    split = Layout(root=tmp_path / "split")
    build = "/lib/modules/6.1.0-56-amd64/build"
    assert path_aliases(merged, build) == (build, "/usr" + build)
    assert path_aliases(merged, "/usr" + build) == ("/usr" + build, build)
    assert path_aliases(split, build) == (build,)
    assert path_aliases(merged, "/usr/src/x") == ("/usr/src/x",)
