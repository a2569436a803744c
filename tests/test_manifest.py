"""archive/manifest.py: the line format, the strict parser, and a tree checked against it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kheaders_pkg.archive.extract import extract_archive
from kheaders_pkg.archive.manifest import Entry, parse_manifest, render_manifest, verify_tree
from kheaders_pkg.errors import ExitCode, ManifestError
from tests.conftest import corpus_kernel


def test_manifest_lines_have_the_documented_format() -> None:
    entries = [
        Entry("include/b.h", "l", 0, None, "a.h"),
        Entry("include/a.h", "f", 3, "ab" * 32, None),
    ]
    assert render_manifest(entries) == (f"f\t{'ab' * 32}\t3\tinclude/a.h\nl\ta.h\t-\tinclude/b.h\n")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"f\t{'a' * 64}\t1\tb\nf\t{'a' * 64}\t1\ta\n", id="unsorted"),
        pytest.param(f"f\t{'a' * 64}\t1\ta\nf\t{'a' * 64}\t1\ta\n", id="repeated"),
        pytest.param(f"f\t{'A' * 64}\t1\ta\n", id="uppercase-hash"),
        pytest.param(f"f\t{'a' * 63}\t1\ta\n", id="short-hash"),
        pytest.param(f"f\t{'a' * 64}\t01\ta\n", id="size-with-leading-zero"),
        pytest.param(f"f\t{'a' * 64}\t-\ta\n", id="file-without-size"),
        pytest.param("l\tx\t0\ta\n", id="link-with-size"),
        pytest.param(f"f\t{'a' * 64}\t1\ta", id="unterminated"),
        pytest.param(f"f\t{'a' * 64}\t1\n", id="three-fields"),
        pytest.param(f"d\t{'a' * 64}\t1\ta\n", id="unknown-kind"),
        pytest.param(f"f\t{'a' * 64}\t1\t../a\n", id="dotdot"),
        pytest.param(f"f\t{'a' * 64}\t1\t/a\n", id="absolute"),
        pytest.param(f"f\t{'a' * 64}\t1\ta\nf\t{'a' * 64}\t1\ta/b\n", id="under-a-file"),
        pytest.param(
            f"l\tx\t-\ta\nf\t{'a' * 64}\t1\ta-b\nf\t{'a' * 64}\t1\ta/c\n", id="under-link"
        ),
        pytest.param("l\t\t-\ta\n", id="link-without-target"),
    ],
)
def test_parse_manifest_refuses_malformed_text(text: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(text)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == ExitCode.FILESYSTEM


def test_parse_manifest_of_nothing_is_empty() -> None:
    assert parse_manifest("") == ()


# -- verify_tree ---------------------------------------------------------------------------


@pytest.fixture
def small_tree(tmp_path: Path) -> tuple[Path, tuple[Entry, ...]]:
    dest = tmp_path / "tree"
    dest.mkdir(mode=0o700)
    result = extract_archive(corpus_kernel("kh-6.1.192-kh-a").archive, dest)
    return dest, result.entries


def test_verify_tree_of_an_intact_tree_finds_nothing(
    small_tree: tuple[Path, tuple[Entry, ...]],
) -> None:
    tree, entries = small_tree
    assert verify_tree(tree, entries) == []


def test_verify_tree_finds_a_removed_file(small_tree: tuple[Path, tuple[Entry, ...]]) -> None:
    tree, entries = small_tree
    (tree / "include/linux/kernel.h").unlink()
    assert verify_tree(tree, entries) == ["missing: include/linux/kernel.h"]


def test_verify_tree_finds_a_truncated_file(small_tree: tuple[Path, tuple[Entry, ...]]) -> None:
    tree, entries = small_tree
    path = tree / "include/linux/kernel.h"
    os.truncate(path, path.stat().st_size // 2)
    [problem] = verify_tree(tree, entries)
    assert problem.startswith("size: include/linux/kernel.h")


def test_verify_tree_finds_a_changed_byte(small_tree: tuple[Path, tuple[Entry, ...]]) -> None:
    tree, entries = small_tree
    path = tree / "include/linux/kernel.h"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    assert verify_tree(tree, entries) == ["hash: include/linux/kernel.h: content differs"]


def test_verify_tree_finds_a_symlink_replaced_by_a_file(
    small_tree: tuple[Path, tuple[Entry, ...]],
) -> None:
    tree, entries = small_tree
    link = tree / "include/dt-bindings/input/linux-event-codes.h"
    link.unlink()
    link.write_text("x")
    assert verify_tree(tree, entries) == [
        "kind: include/dt-bindings/input/linux-event-codes.h: expected a symlink"
    ]


def test_verify_tree_finds_a_file_replaced_by_a_symlink(
    small_tree: tuple[Path, tuple[Entry, ...]],
) -> None:
    tree, entries = small_tree
    path = tree / "include/linux/kernel.h"
    path.unlink()
    path.symlink_to("types.h")
    assert verify_tree(tree, entries) == ["kind: include/linux/kernel.h: expected a regular file"]


def test_a_manifest_with_non_ascii_and_odd_but_valid_names_round_trips() -> None:
    entries = (
        Entry("include/caf\u00e9.h", "f", 3, "0" * 64, None),
        Entry("include/...", "f", 0, "1" * 64, None),
        Entry("include/.h", "l", 0, None, "../x"),
    )
    assert parse_manifest(render_manifest(entries)) == tuple(sorted(entries, key=lambda e: e.path))


@pytest.mark.parametrize(
    "path", ["include/./a.h", "include/../a.h", "include//a.h", "/include/a.h", "a\x7fb", ""]
)
def test_a_manifest_entry_with_a_bad_path_is_refused(path: str) -> None:
    with pytest.raises(ManifestError):
        render_manifest([Entry(path, "f", 0, "0" * 64, None)])
