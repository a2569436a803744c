"""archive/extract.py, the writer, against the real archives: the same tree as GNU tar, reuse."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kheaders_pkg.archive.extract import ExtractResult, extract_archive
from kheaders_pkg.archive.manifest import parse_manifest, render_manifest, verify_tree
from kheaders_pkg.archive.reuse import Reuse
from kheaders_pkg.errors import ArchiveError, FilesystemError
from kheaders_pkg.layout import DIR_MODE, FILE_MODE, MANIFEST_NAME
from tests.archive_util import archive, directory, extract_bytes, hardlink, regular, symlink
from tests.conftest import KERNELS_WITH_ARCHIVE, CorpusKernel, corpus_kernel

# The one header that differs between the two builds of 6.1.192-kh (corpus README).
CHANGED_HEADER = "include/linux/kernel.h"


@dataclass(frozen=True)
class Extracted:
    kernel: CorpusKernel
    ours: Path
    tar: Path
    result: ExtractResult


def _fresh_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


@pytest.fixture(scope="module", params=KERNELS_WITH_ARCHIVE)
def extracted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Extracted:
    """Each corpus archive extracted once by us and once by GNU tar."""
    kernel = corpus_kernel(str(request.param))
    base = tmp_path_factory.mktemp(kernel.name)
    ours = _fresh_dir(base / "ours")
    result = extract_archive(kernel.archive, ours)
    tar = _fresh_dir(base / "tar")
    subprocess.run(["tar", "-xJf", str(kernel.archive), "-C", str(tar)], check=True)
    return Extracted(kernel, ours, tar, result)


def _walk(root: Path) -> dict[str, os.stat_result]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            found[str(p.relative_to(root))] = p.lstat()
    return found


def _normalised_mode(st: os.stat_result) -> int:
    return DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE


def test_extraction_gives_the_same_members_as_gnu_tar(extracted: Extracted) -> None:
    ours, theirs = _walk(extracted.ours), _walk(extracted.tar)
    assert sorted(ours) == sorted(theirs)
    for rel, st in theirs.items():
        mine = ours[rel]
        assert stat.S_IFMT(mine.st_mode) == stat.S_IFMT(st.st_mode), rel
        if stat.S_ISLNK(st.st_mode):
            assert os.readlink(extracted.ours / rel) == os.readlink(extracted.tar / rel)
            continue
        assert stat.S_IMODE(mine.st_mode) == _normalised_mode(st), rel
        assert mine.st_mtime_ns == st.st_mtime_ns, rel
        if stat.S_ISREG(st.st_mode):
            assert mine.st_size == st.st_size, rel
            assert (extracted.ours / rel).read_bytes() == (extracted.tar / rel).read_bytes(), rel


def test_real_archives_hold_a_few_in_tree_symlinks(extracted: Extracted) -> None:
    links = {e.path: e.target for e in extracted.result.entries if e.kind == "l"}
    assert 3 <= len(links) <= 4
    assert links["include/dt-bindings/input/linux-event-codes.h"] == (
        "../../uapi/linux/input-event-codes.h"
    )


def test_result_entries_describe_the_extracted_tree(extracted: Extracted) -> None:
    result = extracted.result
    paths = [e.path for e in result.entries]
    assert paths == sorted(paths)
    tree = _walk(extracted.tar)
    files = {p for p, st in tree.items() if stat.S_ISREG(st.st_mode)}
    assert {e.path for e in result.entries if e.kind == "f"} == files
    assert result.directories == sum(stat.S_ISDIR(st.st_mode) for st in tree.values())
    assert result.total_bytes == sum(tree[p].st_size for p in files)
    for e in result.entries[:50]:
        if e.kind == "f":
            assert e.sha256 == hashlib.sha256((extracted.tar / e.path).read_bytes()).hexdigest()
    assert verify_tree(extracted.ours, result.entries) == []


def test_reading_from_a_stream_gives_the_same_result_as_from_a_path(
    extracted: Extracted, tmp_path: Path
) -> None:
    """A pipe-like source cannot be seeked: the 6.12 archive's blocks are then decoded in turn."""

    class Unseekable(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            return self._inner.readinto(b)

    data = extracted.kernel.archive.read_bytes()
    result = extract_archive(
        io.BufferedReader(Unseekable(data)),
        _fresh_dir(tmp_path / "dest"),
    )
    assert result == extracted.result


def test_manifest_round_trips_through_render_and_parse(extracted: Extracted) -> None:
    text = render_manifest(extracted.result.entries)
    assert text.count("\n") == len(extracted.result.entries)
    assert parse_manifest(text) == extracted.result.entries


# -- reuse of the previous tree ------------------------------------------------------------


def _publish_like(tree: Path, result: ExtractResult) -> Path:
    (tree / MANIFEST_NAME).write_text(render_manifest(result.entries))
    return tree


def test_reuse_hard_links_every_unchanged_file_from_the_previous_tree(tmp_path: Path) -> None:
    a = corpus_kernel("kh-6.1.192-kh-a")
    b = corpus_kernel("kh-6.1.192-kh-b")
    prev = _fresh_dir(tmp_path / "a")
    prev_result = extract_archive(a.archive, prev)
    _publish_like(prev, prev_result)
    new = _fresh_dir(tmp_path / "b")

    result = extract_archive(b.archive, new, previous=prev)

    files = [e for e in result.entries if e.kind == "f"]
    assert result.reused == len(files) - 1
    prev_inodes = {(prev / e.path).stat().st_ino for e in prev_result.entries if e.kind == "f"}
    for e in files:
        mine, theirs = (new / e.path).stat(), (prev / e.path).stat()
        if e.path == CHANGED_HEADER:
            assert mine.st_ino != theirs.st_ino
            assert mine.st_nlink == 1
        else:
            # The inode of a file of a's with this content (equal files share one: one digest,
            # one published inode).
            assert mine.st_ino in prev_inodes, e.path
            assert mine.st_nlink >= 2, e.path
    # The new tree is b's tree, byte for byte, and a's tree is untouched.
    assert verify_tree(new, result.entries) == []
    assert verify_tree(prev, prev_result.entries) == []
    assert result.archive_sha256 == b.expected["kheaders_tar_xz_sha256"]
    changed = {e.path for e in set(result.entries) - set(prev_result.entries)}
    assert changed == {CHANGED_HEADER}


@pytest.mark.parametrize("change", ["appended", "same-size", "truncated"])
def test_reuse_writes_fresh_a_published_file_that_no_longer_matches(
    tmp_path: Path, change: str
) -> None:
    """The manifest still names the old digest; the mtime is put back: only the bytes differ."""
    a = corpus_kernel("kh-6.1.192-kh-a")
    prev = _fresh_dir(tmp_path / "a")
    _publish_like(prev, extract_archive(a.archive, prev))
    victim = prev / "include/linux/types.h"
    before = victim.stat()
    data = victim.read_bytes()
    changed = {
        "appended": data + b"#define X 1\n",
        "same-size": data.replace(b"typedef", b"tYpedef", 1),
        "truncated": data[: len(data) // 2],
    }[change]
    victim.write_bytes(changed)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    new = _fresh_dir(tmp_path / "b")

    result = extract_archive(a.archive, new, previous=prev)

    assert (new / "include/linux/types.h").stat().st_nlink == 1
    assert (new / "include/linux/types.h").read_bytes() == data
    assert victim.read_bytes() == changed
    assert (new / "include/linux/kernel.h").stat().st_ino == (
        prev / "include/linux/kernel.h"
    ).stat().st_ino
    assert verify_tree(new, result.entries) == []


def test_reuse_links_an_equal_file_from_another_kernels_tree(tmp_path: Path) -> None:
    """Cross-kernel: the 6.1 Debian tree and the 6.1.192-kh tree share most headers; their
    mtimes differ (KBUILD_BUILD_TIMESTAMP), so a shared file keeps the first tree's."""
    deb = corpus_kernel("debian-6.1.0-56-amd64")
    kh = corpus_kernel("kh-6.1.192-kh-a")
    old = _fresh_dir(tmp_path / "deb")
    old_result = extract_archive(deb.archive, old)
    _publish_like(old, old_result)
    new = _fresh_dir(tmp_path / "kh")

    result = extract_archive(kh.archive, new, reuse_from=[tmp_path / "missing", old])

    published = {e.sha256 for e in old_result.entries if e.kind == "f"}
    equal = [e for e in result.entries if e.kind == "f" and e.sha256 in published]
    assert len(equal) > 1000
    assert result.reused == len(equal)
    for e in equal[:50]:
        assert (new / e.path).stat().st_nlink >= 2, e.path
    assert verify_tree(new, result.entries) == []
    assert verify_tree(old, old_result.entries) == []


def test_reuse_index_holds_one_entry_per_digest_and_stops_at_its_bound(tmp_path: Path) -> None:
    """Memory grows with the distinct files published, not with the number of trees."""
    a = corpus_kernel("kh-6.1.192-kh-a")
    trees = []
    for name in ("one", "two"):
        tree = _fresh_dir(tmp_path / name)
        trees.append(_publish_like(tree, extract_archive(a.archive, tree)))
    digests = {e.sha256 for e in parse_manifest((trees[0] / MANIFEST_NAME).read_text()) if e.sha256}
    dest = os.open(_fresh_dir(tmp_path / "new"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        both = Reuse.open(trees, dest)
        bounded = Reuse.open(trees, dest, limit=100)
        assert both is not None and bounded is not None
        assert len(both.index) == len(digests)  # the second, equal tree adds nothing
        assert len(bounded.index) == 100
        both.close()
        bounded.close()
    finally:
        os.close(dest)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_reuse_is_skipped_when_the_previous_manifest_is_unusable(
    tmp_path: Path, damage: str
) -> None:
    a = corpus_kernel("kh-6.1.192-kh-a")
    prev = _fresh_dir(tmp_path / "a")
    _publish_like(prev, extract_archive(a.archive, prev))
    if damage == "missing":
        (prev / MANIFEST_NAME).unlink()
    else:
        (prev / MANIFEST_NAME).write_text("garbage\n")
    new = _fresh_dir(tmp_path / "b")

    result = extract_archive(a.archive, new, previous=prev)

    assert result.reused == 0
    assert (new / "include/linux/kernel.h").stat().st_nlink == 1
    assert verify_tree(new, result.entries) == []


# -- small archives: normalisation and the legal corners of tar ----------------------------


def test_files_are_0644_and_directories_0755_whatever_the_archive_or_umask(tmp_path: Path) -> None:
    data = archive(
        [
            directory("./"),
            directory("./include/", 0o700),
            regular("./include/exec.sh", mode=0o700),
            regular("./include/group-x.h", mode=0o610),
            regular("./include/private.h", mode=0o600),
        ]
    )
    old = os.umask(0o077)
    try:
        dest, _ = extract_bytes(data, tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((dest / "include").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "include/exec.sh").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "include/group-x.h").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "include/private.h").stat().st_mode) == 0o644


def test_archive_mtimes_are_kept_on_files_directories_and_links(tmp_path: Path) -> None:
    members = [
        directory("include/", mtime=1_600_000_000),
        regular("include/a.h"),
        symlink("include/l.h", "a.h", mtime=1_500_000_000),
    ]
    dest, _ = extract_bytes(archive(members), tmp_path)
    assert (dest / "include/a.h").stat().st_mtime == 1_700_000_000
    assert (dest / "include").stat().st_mtime == 1_600_000_000
    assert (dest / "include/l.h").lstat().st_mtime == 1_500_000_000


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    dest, result = extract_bytes(archive([regular("include/linux/deep/a.h", b"abc")]), tmp_path)
    assert (dest / "include/linux/deep/a.h").read_bytes() == b"abc"
    assert result.directories == 3
    assert stat.S_IMODE((dest / "include/linux").stat().st_mode) == 0o755


def test_hard_link_to_an_earlier_file_shares_its_inode(tmp_path: Path) -> None:
    members = [regular("include/a.h", b"same"), hardlink("include/b.h", "include/a.h")]
    dest, result = extract_bytes(archive(members), tmp_path)
    assert (dest / "include/a.h").stat().st_ino == (dest / "include/b.h").stat().st_ino
    assert [e.path for e in result.entries] == ["include/a.h", "include/b.h"]
    assert result.entries[0].sha256 == result.entries[1].sha256


def test_a_member_larger_than_the_read_chunks_is_written_whole(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    dest, result = extract_bytes(archive([regular("include/big.h", data)]), tmp_path)
    assert (dest / "include/big.h").read_bytes() == data
    assert result.entries[0].sha256 == hashlib.sha256(data).hexdigest()


def test_a_non_empty_staging_directory_is_refused(tmp_path: Path) -> None:
    dest = _fresh_dir(tmp_path / "dest")
    (dest / "leftover").write_text("x")
    with pytest.raises(FilesystemError, match="not empty"):
        extract_archive(corpus_kernel("kh-6.1.192-kh-a").archive, dest)


def test_a_missing_archive_file_is_an_archive_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="cannot read archive"):
        extract_archive(tmp_path / "nope.tar.xz", _fresh_dir(tmp_path / "dest"))


def test_kernel_archive_of_a_copy_extracts_the_same(tmp_path: Path) -> None:
    """A copy outside sysfs (e.g. `--archive FILE`) reads the same as the original."""
    kernel = corpus_kernel("debian-6.12.107+deb13-amd64")
    copy = tmp_path / "kheaders.tar.xz"
    shutil.copyfile(kernel.archive, copy)
    result = extract_archive(copy, _fresh_dir(tmp_path / "dest"))
    assert result.archive_sha256 == kernel.expected["kheaders_tar_xz_sha256"]


def test_progress_reports_every_tar_byte_in_order(tmp_path: Path) -> None:
    from tests.conftest import corpus_kernel

    k = corpus_kernel("kh-6.1.192-kh-a")
    seen: list[int] = []
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    result = extract_archive(k.archive, dest, progress=seen.append)
    assert seen == sorted(seen) and len(seen) > 10
    # The tar stream holds every file's bytes plus headers and padding.
    assert seen[-1] > result.total_bytes
    assert seen[-1] % 512 == 0
