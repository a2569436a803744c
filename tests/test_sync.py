"""sync end to end against scratch roots and the corpus kernels' real files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kheaders_pkg.errors import ExitCode
from kheaders_pkg.layout import STAMP_NAME
from tests.conftest import build_dir, copy_sysroot, corpus_kernel, run_cli

KH_A, KH_B, KH_MOD = "kh-6.1.192-kh-a", "kh-6.1.192-kh-b", "kh-6.1.192-kh-a-mod"


def test_config_only_change_is_stale_naming_the_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = corpus_kernel(KH_A)
    assert run_cli(root, a.sysroot, "sync").returncode == 0
    kfs = copy_sysroot(a, tmp_path / "kfs")
    cfg = gzip.decompress((kfs / "proc/config.gz").read_bytes()) + b"CONFIG_KHEADERS_TEST=y\n"
    (kfs / "proc/config.gz").write_bytes(gzip.compress(cfg))
    r = run_cli(root, kfs, "status", "--json")
    status = json.loads(r.stdout)
    assert status["verdict"] == "stale" and status["differs"] == ["config"]


def test_another_kernels_archive_and_notes_under_this_release_is_stale(tmp_path: Path) -> None:
    """A tree made from one Debian kernel's files, published under the other's release."""
    root = tmp_path / "root"
    k61, k612 = corpus_kernel("debian-6.1.0-56-amd64"), corpus_kernel("debian-6.12.107+deb13-amd64")
    kfs = copy_sysroot(k61, tmp_path / "kfs")
    (kfs / "proc/sys/kernel/osrelease").write_text(k612.release + "\n")
    assert run_cli(root, kfs, "sync").returncode == 0
    r = run_cli(root, k612.sysroot, "status", "--json")
    status = json.loads(r.stdout)
    assert status["verdict"] == "stale"
    assert set(status["differs"]) >= {"build_id", "config", "archive", "uts_version"}
    assert run_cli(root, k612.sysroot, "sync").returncode == 0
    assert run_cli(root, k612.sysroot, "check").returncode == 0


def test_force_regenerates_a_fresh_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = corpus_kernel(KH_A)
    assert run_cli(root, a.sysroot, "sync").returncode == 0
    assert run_cli(root, a.sysroot, "sync", "--force").returncode == 0
    assert build_dir(root, a.release).name.startswith("gen-0002-")


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = corpus_kernel(KH_A)
    r = run_cli(root, a.sysroot, "sync", "--dry-run")
    assert r.returncode == 0 and "would regenerate" in r.stdout
    assert not root.exists()


def test_archive_option_overrides_the_source(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a, b = corpus_kernel(KH_A), corpus_kernel(KH_B)
    assert run_cli(root, a.sysroot, "sync", "--archive", str(b.archive)).returncode == 0
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
    assert run_cli(root, k.sysroot, "check").returncode == ExitCode.NEEDS_SYNC
    r = run_cli(root, k.sysroot, "sync")
    assert r.returncode == 0, r.stderr
    stamp = json.loads((build_dir(root, k.release) / STAMP_NAME).read_text())
    assert stamp["archive_sha256"] == k.expected["kheaders_tar_xz_sha256"]
    assert stamp["archive_source"] == "module"


def test_module_kernel_without_a_module_on_disk_is_unsupported(tmp_path: Path) -> None:
    k = corpus_kernel(KH_MOD)
    r = run_cli(tmp_path / "root", k.sysroot, "sync")
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
        r = run_cli(tmp_path / "root", kfs, cmd)
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
    r = run_cli(root, k.sysroot, "sync")
    assert r.returncode == 0 and r.stdout.startswith("foreign-fresh"), r.stdout + r.stderr
    (tree / "include/generated/utsversion.h").write_text('#define UTS_VERSION "#9"\n')
    before = snapshot()
    r = run_cli(root, k.sysroot, "sync")
    assert r.returncode == ExitCode.FOREIGN_STALE and "left alone" in r.stdout
    assert snapshot() == before
    assert not (root / "usr/src/kheaders-pkg" / k.release).exists()


def test_remove_takes_our_tree_and_links_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = corpus_kernel(KH_A)
    mdir = root / "lib/modules" / a.release
    mdir.mkdir(parents=True)
    (mdir / "modules.dep").write_text("")
    assert run_cli(root, a.sysroot, "sync").returncode == 0
    r = run_cli(root, a.sysroot, "remove", "--kernel", a.release)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in mdir.iterdir()) == ["modules.dep"]
    assert not (root / "usr/src/kheaders-pkg" / a.release).exists()


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    r = run_cli(tmp_path / "root", tmp_path / "nothing", "sync")
    assert r.returncode == ExitCode.BAD_KERNEL
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_status_json_has_the_documented_fields(tmp_path: Path) -> None:
    a = corpus_kernel(KH_A)
    r = run_cli(tmp_path / "root", a.sysroot, "status", "--json")
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
