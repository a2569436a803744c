"""publish.py: generations, gc, the record of the links we replaced, and the crash points.

Driven through the installed `kheaders-pkg`, the way a tree is published. The hostile-root and
kill-anywhere cases of the same code stay in the reliability suites (tests/test_reliability_*.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import corpus_kernel, run_cli

KH_A, KH_B = "kh-6.1.192-kh-a", "kh-6.1.192-kh-b"


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
    r = run_cli(root, a.sysroot, "sync")
    assert r.returncode == 0, r.stderr
    assert "kheaders-pkg" in os.readlink(mdir / "build")
    assert run_cli(root, a.sysroot, "check").returncode == 0
    r = run_cli(root, a.sysroot, "restore")
    assert r.returncode == 0, r.stderr
    assert os.readlink(mdir / "build") == "../../../usr/src/linux-headers-6.1.192-kh"
    assert not os.path.lexists(mdir / "source")  # there was none before
    assert (foreign).is_dir()


def test_gc_keeps_the_current_and_previous_generation(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a, b = corpus_kernel(KH_A), corpus_kernel(KH_B)
    for k in (a, b, a, b):
        assert run_cli(root, k.sysroot, "sync").returncode == 0
    gens = sorted(p.name for p in (root / "usr/src/kheaders-pkg" / a.release).iterdir())
    assert [g[:8] for g in gens] == ["gen-0003", "gen-0004"]
    assert run_cli(root, a.sysroot, "gc").returncode == 0
    assert len(list((root / "usr/src/kheaders-pkg" / a.release).iterdir())) == 2


def test_crash_hook_is_inert_without_the_variable(tmp_path: Path) -> None:
    """The test-only hook must never fire in a normal run: a full sync passes every point."""
    kfs = corpus_kernel(KH_A).sysroot
    env = {k: v for k, v in os.environ.items() if k != "KHEADERS_PKG_CRASH_AT"}
    p = subprocess.run(
        [sys.executable, "-c", "import kheaders_pkg.publish as p; p.crash_point('before-syncfs')"],
        env=env,
        check=False,
    )
    assert p.returncode == 0
    root = tmp_path / "root"
    r = run_cli(root, kfs, "sync", crash_at="no-such-point")
    assert r.returncode == 0, r.stderr
