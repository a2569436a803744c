"""sync end to end against scratch roots and the corpus kernels' real files."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kheaders_pkg.errors import ExitCode
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME
from tests.conftest import CorpusKernel, copy_sysroot, corpus_kernel

KH_A, KH_B, KH_MOD = "kh-6.1.192-kh-a", "kh-6.1.192-kh-b", "kh-6.1.192-kh-a-mod"
# What the tree adds to the archive; every corpus kernel has BTF, hence vmlinux.h.
ADDED = {
    ".config",
    "include/config/auto.conf",
    "include/config/kernel.release",
    "vmlinux.id",
    "vmlinux.h",
}


def cli(
    root: Path, kfs: Path, *args: str, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kheaders_pkg", "--root", str(root), "--kernel-fs", str(kfs)]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, check=False)


def build_dir(root: Path, release: str) -> Path:
    link = root / "lib/modules" / release / "build"
    return root / os.readlink(link).lstrip("/")


def archive_members(archive: Path) -> dict[str, bytes | str]:
    """name -> bytes for files, "-> target" for symlinks (GNU tar's view, via tarfile)."""
    out: dict[str, bytes | str] = {}
    with lzma.open(archive) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
        for m in tar:
            name = m.name.removeprefix("./")
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                out[name] = f.read()
            elif m.issym():
                out[name] = "-> " + m.linkname
    return out


def tree_files(tree: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in tree.rglob("*"):
        rel = str(p.relative_to(tree))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def test_sync_on_empty_root_gives_the_archive_byte_for_byte_plus_added_files(
    tmp_path: Path, kernel_with_archive: CorpusKernel
) -> None:
    k = kernel_with_archive
    root = tmp_path / "root"
    r = cli(root, k.sysroot, "check")
    assert r.returncode == ExitCode.NEEDS_SYNC, r.stderr
    r = cli(root, k.sysroot, "sync")
    assert r.returncode == 0, r.stderr
    tree = build_dir(root, k.release)
    assert build_dir(root, k.release) == tree
    assert os.readlink(root / "lib/modules" / k.release / "source") == os.readlink(
        root / "lib/modules" / k.release / "build"
    )
    files = tree_files(tree)
    members = archive_members(k.archive)
    ours = {STAMP_NAME, MANIFEST_NAME}
    assert set(files) == set(members) | ADDED | ours
    for name, content in members.items():
        assert files[name] == content, name
    exp = k.expected
    assert files["vmlinux.id"] == exp["build_id"].encode() + b"\n"
    assert files["include/config/kernel.release"] == k.release.encode() + b"\n"
    config = files[".config"]
    assert isinstance(config, bytes)
    assert hashlib.sha256(config).hexdigest() == exp["config_sha256"]
    stamp = json.loads(files[STAMP_NAME])
    assert stamp["build_id"] == exp["build_id"]
    assert stamp["archive_sha256"] == exp["kheaders_tar_xz_sha256"]
    assert stamp["config_sha256"] == exp["config_sha256"]
    assert stamp["release"] == k.release
    assert stamp["file_count"] == len(set(files) - ours)
    r = cli(root, k.sysroot, "check")
    assert r.returncode == 0 and r.stdout.startswith("fresh"), r.stdout + r.stderr


def test_stale_tree_with_same_release_is_regenerated_changing_exactly_one_header(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    a, b = corpus_kernel(KH_A), corpus_kernel(KH_B)
    assert cli(root, a.sysroot, "sync").returncode == 0
    old = build_dir(root, a.release)
    old_files = tree_files(old)
    r = cli(root, b.sysroot, "check")
    assert r.returncode == ExitCode.NEEDS_SYNC
    assert r.stdout.startswith("stale") and "build id" in r.stdout
    status = json.loads(cli(root, b.sysroot, "status", "--json").stdout)
    assert status["verdict"] == "stale" and "build_id" in status["differs"]
    assert status["build_id"] == b.expected["build_id"]
    assert status["tree"]["identity"]["build_id"] == a.expected["build_id"]
    assert cli(root, b.sysroot, "sync").returncode == 0
    new = build_dir(root, b.release)
    assert new != old and new.name.startswith("gen-0002-")
    new_files = tree_files(new)
    changed = {n for n in set(old_files) | set(new_files) if old_files.get(n) != new_files.get(n)}
    # vmlinux.h too: the two builds' BTF differ (BTF generation is not reproducible).
    assert changed == {
        "include/linux/kernel.h",
        "vmlinux.id",
        "vmlinux.h",
        STAMP_NAME,
        MANIFEST_NAME,
    }
    kernel_h = new_files["include/linux/kernel.h"]
    assert isinstance(kernel_h, bytes) and b"KH_CORPUS_VARIANT 2" in kernel_h
    # Unchanged headers are shared with the previous generation, not copied.
    assert (new / "include/linux/sched.h").stat().st_ino == (
        old / "include/linux/sched.h"
    ).stat().st_ino
    assert cli(root, b.sysroot, "check").returncode == 0


def test_config_only_change_is_stale_naming_the_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = corpus_kernel(KH_A)
    assert cli(root, a.sysroot, "sync").returncode == 0
    kfs = copy_sysroot(a, tmp_path / "kfs")
    cfg = gzip.decompress((kfs / "proc/config.gz").read_bytes()) + b"CONFIG_KHEADERS_TEST=y\n"
    (kfs / "proc/config.gz").write_bytes(gzip.compress(cfg))
    r = cli(root, kfs, "status", "--json")
    status = json.loads(r.stdout)
    assert status["verdict"] == "stale" and status["differs"] == ["config"]


def test_another_kernels_archive_and_notes_under_this_release_is_stale(tmp_path: Path) -> None:
    """A tree made from one Debian kernel's files, published under the other's release."""
    root = tmp_path / "root"
    k61, k612 = corpus_kernel("debian-6.1.0-56-amd64"), corpus_kernel("debian-6.12.107+deb13-amd64")
    kfs = copy_sysroot(k61, tmp_path / "kfs")
    (kfs / "proc/sys/kernel/osrelease").write_text(k612.release + "\n")
    assert cli(root, kfs, "sync").returncode == 0
    r = cli(root, k612.sysroot, "status", "--json")
    status = json.loads(r.stdout)
    assert status["verdict"] == "stale"
    assert set(status["differs"]) >= {"build_id", "config", "archive", "uts_version"}
    assert cli(root, k612.sysroot, "sync").returncode == 0
    assert cli(root, k612.sysroot, "check").returncode == 0


def test_second_sync_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = corpus_kernel(KH_A)
    assert cli(root, a.sysroot, "sync").returncode == 0
    link = root / "lib/modules" / a.release / "build"
    tree = build_dir(root, a.release)
    before = (os.lstat(link), tree.stat(), (tree / STAMP_NAME).stat())
    r = cli(root, a.sysroot, "sync")
    assert r.returncode == 0 and r.stdout.startswith("fresh")
    after = (os.lstat(link), tree.stat(), (tree / STAMP_NAME).stat())
    for x, y in zip(before, after, strict=True):
        assert (x.st_ino, x.st_mtime_ns) == (y.st_ino, y.st_mtime_ns)
    assert sorted(p.name for p in tree.parent.iterdir()) == [tree.name]


def test_force_regenerates_a_fresh_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = corpus_kernel(KH_A)
    assert cli(root, a.sysroot, "sync").returncode == 0
    assert cli(root, a.sysroot, "sync", "--force").returncode == 0
    assert build_dir(root, a.release).name.startswith("gen-0002-")


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = corpus_kernel(KH_A)
    r = cli(root, a.sysroot, "sync", "--dry-run")
    assert r.returncode == 0 and "would regenerate" in r.stdout
    assert not root.exists()


def test_archive_option_overrides_the_source(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a, b = corpus_kernel(KH_A), corpus_kernel(KH_B)
    assert cli(root, a.sysroot, "sync", "--archive", str(b.archive)).returncode == 0
    stamp = json.loads((build_dir(root, a.release) / STAMP_NAME).read_text())
    assert stamp["archive_source"] == "file"
    assert stamp["archive_sha256"] == b.expected["kheaders_tar_xz_sha256"]


def test_module_kernel_takes_the_archive_from_kheaders_ko_on_disk(tmp_path: Path) -> None:
    """kh-a-mod (IKHEADERS=m) through a copied sysroot: nothing to modprobe, so the module
    installed for that release under --root provides the archive."""
    k = corpus_kernel(KH_MOD)
    root = tmp_path / "root"
    kdir = root / "lib/modules" / k.release / "kernel/kernel"
    kdir.mkdir(parents=True)
    (kdir / "kheaders.ko").write_bytes((k.modules / "kheaders.ko").read_bytes())
    assert cli(root, k.sysroot, "check").returncode == ExitCode.NEEDS_SYNC
    r = cli(root, k.sysroot, "sync")
    assert r.returncode == 0, r.stderr
    stamp = json.loads((build_dir(root, k.release) / STAMP_NAME).read_text())
    assert stamp["archive_sha256"] == k.expected["kheaders_tar_xz_sha256"]
    assert stamp["archive_source"] == "module"


def test_module_kernel_without_a_module_on_disk_is_unsupported(tmp_path: Path) -> None:
    k = corpus_kernel(KH_MOD)
    r = cli(tmp_path / "root", k.sysroot, "sync")
    assert r.returncode == ExitCode.UNSUPPORTED
    assert "CONFIG_IKHEADERS=m" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_kernel_without_ikheaders_is_unsupported_with_a_plain_reason(tmp_path: Path) -> None:
    kfs = copy_sysroot(corpus_kernel(KH_A), tmp_path / "kfs")
    (kfs / "sys/kernel/kheaders.tar.xz").unlink()
    cfg = gzip.decompress((kfs / "proc/config.gz").read_bytes()).replace(
        b"CONFIG_IKHEADERS=y", b"# CONFIG_IKHEADERS is not set"
    )
    (kfs / "proc/config.gz").write_bytes(gzip.compress(cfg))
    for cmd in ("check", "sync"):
        r = cli(tmp_path / "root", kfs, cmd)
        assert r.returncode == ExitCode.UNSUPPORTED, (cmd, r.stdout, r.stderr)
        assert "without CONFIG_IKHEADERS" in r.stdout + r.stderr


@pytest.mark.integration
def test_sync_never_modifies_a_debian_tree(tmp_path: Path) -> None:
    from tests.conftest import unpack_debian_headers

    k = corpus_kernel("debian-6.1.0-56-amd64")
    root = tmp_path / "root"
    unpack_debian_headers(k, root)
    tree = root / f"usr/src/linux-headers-{k.release}"

    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(p): (p.lstat().st_ino, p.lstat().st_mtime_ns)
            for p in [*tree.rglob("*"), *(root / "lib/modules").rglob("*")]
        }

    before = snapshot()
    r = cli(root, k.sysroot, "sync")
    assert r.returncode == 0 and r.stdout.startswith("foreign-fresh"), r.stdout + r.stderr
    (tree / "include/generated/utsversion.h").write_text('#define UTS_VERSION "#9"\n')
    before = snapshot()
    r = cli(root, k.sysroot, "sync")
    assert r.returncode == ExitCode.FOREIGN_STALE and "left alone" in r.stdout
    assert snapshot() == before
    assert not (root / "usr/src/kheaders-pkg" / k.release).exists()


def test_divert_then_restore_puts_back_the_exact_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = corpus_kernel(KH_A)
    mdir = root / "lib/modules" / a.release
    foreign = root / "usr/src/linux-headers-6.1.192-kh/include"
    foreign.mkdir(parents=True)
    mdir.mkdir(parents=True)
    os.symlink("../../../usr/src/linux-headers-6.1.192-kh", mdir / "build")
    (root / "etc").mkdir()
    conf = root / "etc/kheaders-pkg.toml"
    conf.write_text('foreign = "divert"\n')
    r = cli(root, a.sysroot, "sync")
    assert r.returncode == 0, r.stderr
    assert "kheaders-pkg" in os.readlink(mdir / "build")
    assert cli(root, a.sysroot, "check").returncode == 0
    r = cli(root, a.sysroot, "restore")
    assert r.returncode == 0, r.stderr
    assert os.readlink(mdir / "build") == "../../../usr/src/linux-headers-6.1.192-kh"
    assert not os.path.lexists(mdir / "source")  # there was none before
    assert (foreign).is_dir()


def test_remove_takes_our_tree_and_links_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = corpus_kernel(KH_A)
    mdir = root / "lib/modules" / a.release
    mdir.mkdir(parents=True)
    (mdir / "modules.dep").write_text("")
    assert cli(root, a.sysroot, "sync").returncode == 0
    r = cli(root, a.sysroot, "remove", "--kernel", a.release)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in mdir.iterdir()) == ["modules.dep"]
    assert not (root / "usr/src/kheaders-pkg" / a.release).exists()


def test_gc_keeps_the_current_and_previous_generation(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a, b = corpus_kernel(KH_A), corpus_kernel(KH_B)
    for k in (a, b, a, b):
        assert cli(root, k.sysroot, "sync").returncode == 0
    gens = sorted(p.name for p in (root / "usr/src/kheaders-pkg" / a.release).iterdir())
    assert [g[:8] for g in gens] == ["gen-0003", "gen-0004"]
    assert cli(root, a.sysroot, "gc").returncode == 0
    assert len(list((root / "usr/src/kheaders-pkg" / a.release).iterdir())) == 2


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    r = cli(tmp_path / "root", tmp_path / "nothing", "sync")
    assert r.returncode == ExitCode.BAD_KERNEL
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_status_json_has_the_documented_fields(tmp_path: Path) -> None:
    a = corpus_kernel(KH_A)
    r = cli(tmp_path / "root", a.sysroot, "status", "--json")
    obj = json.loads(r.stdout)
    for key in (
        "release",
        "build_id",
        "config_sha256",
        "archive_sha256",
        "tree",
        "verdict",
        "reason",
    ):
        assert key in obj
    assert set(obj["tree"]) >= {"path", "kind", "identity"}
    assert obj["verdict"] == "missing" and obj["tree"]["kind"] == "missing"
    assert obj["archive_sha256"] == a.expected["kheaders_tar_xz_sha256"]
