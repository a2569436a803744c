"""The tree on disk: missing, ours, or a distro's (Debian's real linux-headers packages)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kheaders_pkg.kernel.identity import live_facts
from kheaders_pkg.layout import Layout
from kheaders_pkg.tree import TreeKind, tree_state
from kheaders_pkg.verdict import VerdictKind, decide
from tests.conftest import copy_sysroot, corpus_kernel, unpack_debian_headers

DEBIAN = ["debian-6.1.0-56-amd64", "debian-6.12.107+deb13-amd64"]


def _judge(root: Path, kfs: Path) -> tuple[TreeKind, VerdictKind, tuple[str, ...], str]:
    layout = Layout(root=root, kernel_fs=kfs)
    facts = live_facts(layout)
    tree = tree_state(layout, facts.identity.release)
    if tree.needs_btf:
        facts = live_facts(layout, want_btf=True)
    v = decide(facts.identity, tree)
    return tree.kind, v.kind, v.evidence, v.reason


@pytest.mark.integration
@pytest.mark.parametrize("name", DEBIAN)
def test_debian_headers_package_is_foreign_fresh_for_its_own_kernel(
    tmp_path: Path, name: str
) -> None:
    k = corpus_kernel(name)
    root = tmp_path / "root"
    unpack_debian_headers(k, root)
    kind, verdict, evidence, reason = _judge(root, k.sysroot)
    assert kind is TreeKind.FOREIGN
    assert verdict is VerdictKind.FOREIGN_FRESH, reason
    assert ".config" in evidence and "utsversion.h" in evidence
    if "6.12" in name:
        # Debian >= 6.12 ships a BTF-only vmlinux whose .BTF equals /sys/kernel/btf/vmlinux.
        assert "BTF of vmlinux" in evidence


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "doctor", "field"),
    [
        ("debian-6.1.0-56-amd64", "uts", "utsversion.h"),
        ("debian-6.1.0-56-amd64", "config", ".config"),
        ("debian-6.12.107+deb13-amd64", "uts", "utsversion.h"),
        ("debian-6.12.107+deb13-amd64", "config", ".config"),
    ],
)
def test_doctored_debian_tree_is_foreign_stale(
    tmp_path: Path, name: str, doctor: str, field: str
) -> None:
    k = corpus_kernel(name)
    root = tmp_path / "root"
    unpack_debian_headers(k, root)
    tree = root / f"usr/src/linux-headers-{k.release}"
    if doctor == "uts":
        (tree / "include/generated/utsversion.h").write_text(
            '#define UTS_VERSION "#1 SMP PREEMPT_DYNAMIC Debian 0.0.0-0 (2000-01-01)"\n'
        )
    else:
        with open(tree / ".config", "a") as f:
            f.write("CONFIG_KHEADERS_PKG_DOCTORED=y\n")
    kind, verdict, evidence, reason = _judge(root, k.sysroot)
    assert verdict is VerdictKind.FOREIGN_STALE
    assert field in reason and "left alone" in reason


@pytest.mark.integration
def test_other_debian_kernels_headers_are_stale_for_this_kernel(tmp_path: Path) -> None:
    """The 6.1 package's tree published under the 6.12 release: every check notices."""
    k61, k612 = corpus_kernel(DEBIAN[0]), corpus_kernel(DEBIAN[1])
    root = tmp_path / "root"
    unpack_debian_headers(k61, root)
    mdir = root / "lib/modules" / k612.release
    mdir.mkdir(parents=True)
    os.symlink(f"/usr/src/linux-headers-{k61.release}", mdir / "build")
    kind, verdict, _, reason = _judge(root, k612.sysroot)
    assert verdict is VerdictKind.FOREIGN_STALE
    assert ".config" in reason and "utsversion.h" in reason


def test_dangling_build_link_is_missing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    mdir = root / "lib/modules/6.1.192-kh"
    mdir.mkdir(parents=True)
    os.symlink("/usr/src/linux-headers-6.1.192-kh", mdir / "build")
    os.symlink("/usr/src/linux-headers-6.1.192-kh-common", mdir / "source")
    kind, verdict, _, reason = _judge(root, corpus_kernel("kh-6.1.192-kh-a").sysroot)
    assert kind is TreeKind.MISSING and verdict is VerdictKind.MISSING
    assert "dangling" in reason


def test_build_link_loop_is_missing_with_reason(tmp_path: Path) -> None:
    root = tmp_path / "root"
    mdir = root / "lib/modules/6.1.192-kh"
    mdir.mkdir(parents=True)
    os.symlink("build", mdir / "build")
    kind, verdict, _, reason = _judge(root, corpus_kernel("kh-6.1.192-kh-a").sysroot)
    assert verdict is VerdictKind.MISSING and "loop" in reason


def test_real_directory_build_is_foreign(tmp_path: Path) -> None:
    """Arch ships build as a real directory; without evidence it is left alone."""
    root = tmp_path / "root"
    b = root / "lib/modules/6.1.192-kh/build"
    (b / "include").mkdir(parents=True)
    kind, verdict, _, reason = _judge(root, corpus_kernel("kh-6.1.192-kh-a").sysroot)
    assert kind is TreeKind.FOREIGN and verdict is VerdictKind.FOREIGN_STALE
    assert "nothing that identifies" in reason


def test_fedora_style_vmlinux_id_decides(tmp_path: Path) -> None:
    k = corpus_kernel("kh-6.1.192-kh-a")
    root = tmp_path / "root"
    tree = root / "usr/src/kernels" / k.release
    tree.mkdir(parents=True)
    (tree / "vmlinux.id").write_text(k.expected["build_id"] + "\n")
    mdir = root / "lib/modules" / k.release
    mdir.mkdir(parents=True)
    os.symlink(f"/usr/src/kernels/{k.release}", mdir / "build")
    assert _judge(root, k.sysroot)[1] is VerdictKind.FOREIGN_FRESH
    kfs = copy_sysroot(corpus_kernel("kh-6.1.192-kh-b"), tmp_path / "kfs")
    assert _judge(root, kfs)[1] is VerdictKind.FOREIGN_STALE
    shutil.rmtree(kfs)


@pytest.mark.integration
def test_check_on_a_distro_tree_imports_neither_rpm_nor_jinja2(tmp_path: Path) -> None:
    """The boot-time check stays cheap even on the slow path: no package databases asked."""
    import subprocess
    import sys

    k = corpus_kernel(DEBIAN[0])
    root = tmp_path / "root"
    unpack_debian_headers(k, root)
    code = (
        "import sys; from kheaders_pkg.cli import main; "
        f"rc = main(['--root', {str(root)!r}, '--kernel-fs', {str(k.sysroot)!r}, '-q', 'check']); "
        "print(rc, sorted(m for m in ('rpm', 'jinja2', 'kheaders_pkg.distro') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split(None, 1) == ["0", "[]\n"], out.stdout + out.stderr


@pytest.mark.integration
def test_status_names_the_package_that_owns_a_distro_tree(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    k = corpus_kernel(DEBIAN[0])
    root = tmp_path / "root"
    unpack_debian_headers(k, root)
    argv = [
        sys.executable,
        "-m",
        "kheaders_pkg",
        "--root",
        str(root),
        "--kernel-fs",
        str(k.sysroot),
    ]
    out = subprocess.run([*argv, "status", "--json"], capture_output=True, text=True, check=True)
    status = json.loads(out.stdout)
    assert status["verdict"] == "foreign-fresh"
    assert status["tree"]["owner"].startswith(f"linux-headers-{k.release} ")
    assert f"owned by linux-headers-{k.release}" in status["reason"]
