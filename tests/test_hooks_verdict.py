"""The initramfs verdict (hooks/lib/kheaders-pkg-verdict.sh), run as the dracut pre-pivot hook and
the initramfs-tools init-bottom script under `busybox sh`, against a fake real root and a copied
corpus sysroot: it tells fresh, missing, stale and foreign trees apart and never fails."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kheaders_pkg.layout import STAMP_NAME
from tests.conftest import CorpusKernel, copy_sysroot, corpus_kernel

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "hooks/lib/kheaders-pkg-verdict.sh"
DRACUT_HOOK = REPO / "hooks/dracut/90kheaders-pkg/kheaders-pkg-verdict.sh"
INIT_BOTTOM = REPO / "hooks/initramfs-tools/scripts/init-bottom/kheaders-pkg"
TREE = "/usr/src/kheaders-pkg/{rel}/gen-0001-{id12}"


def _stamp(release: str, build_id: str | None, config_sha256: str | None) -> str:
    """A stamp as stamp.py writes it (one key per line), trimmed to what the hook reads."""
    data = {
        "archive_sha256": "0" * 64,
        "archive_size": 1,
        "archive_source": "sysfs",
        "build_id": build_id,
        "config_sha256": config_sha256,
        "config_source": "proc",
        "format": 1,
        "release": release,
        "tool": "kheaders-pkg",
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def make_tree(
    newroot: Path, kernel: CorpusKernel, *, stamp: bool = True, build_id: str | None = None
) -> str:
    """Our tree for `kernel` (or a distro-like one without stamp) with an absolute build link."""
    exp = kernel.expected
    build_id = build_id or str(exp["build_id"])
    inside = TREE.format(rel=kernel.release, id12=build_id[:12])
    tree = newroot / inside.lstrip("/")
    tree.mkdir(parents=True)
    (tree / "vmlinux.id").write_text(build_id + "\n")
    if stamp:
        (tree / STAMP_NAME).write_text(_stamp(kernel.release, build_id, str(exp["config_sha256"])))
    # Write through usr/lib when lib is a link: an absolute /lib -> /usr/lib would lead the host
    # path out of the fake root.
    lib = "usr/lib" if (newroot / "lib").is_symlink() else "lib"
    modules = newroot / lib / "modules" / kernel.release
    modules.mkdir(parents=True)
    (modules / "build").symlink_to(inside)
    return inside


def run_hook(hook: Path, newroot: Path, kfs: Path, run: Path) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "KHEADERS_PKG_HOOKLIB": str(LIB),
        "KHEADERS_PKG_SYSFS": str(kfs / "sys"),
        "KHEADERS_PKG_PROCFS": str(kfs / "proc"),
        "KHEADERS_PKG_RUNDIR": str(run),
    }
    if hook == DRACUT_HOOK:
        # dracut sources pre-pivot hooks into its init shell with $NEWROOT set.
        cmd = ["busybox", "sh", "-c", f'. "{hook}"; echo survived', "hook"]
        env["NEWROOT"] = str(newroot)
    else:
        cmd = ["busybox", "sh", str(hook)]
        env["rootmnt"] = str(newroot)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    if hook == DRACUT_HOOK:
        assert result.stdout.strip() == "survived"
    lines = (run / "initramfs-verdict").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


HOOKS = pytest.mark.parametrize("hook", [DRACUT_HOOK, INIT_BOTTOM], ids=["dracut", "init-bottom"])


@pytest.fixture
def newroot(tmp_path: Path) -> Path:
    root = tmp_path / "newroot"
    root.mkdir()
    return root


@pytest.mark.integration
@HOOKS
@pytest.mark.parametrize(
    "name", ["kh-6.1.192-kh-a", "debian-6.1.0-56-amd64", "debian-6.12.107+deb13-amd64"]
)
def test_our_tree_built_for_the_running_kernel_is_fresh(
    hook: Path, name: str, newroot: Path, tmp_path: Path
) -> None:
    kernel = corpus_kernel(name)
    inside = make_tree(newroot, kernel)
    verdict = run_hook(hook, newroot, copy_sysroot(kernel, tmp_path / "kfs"), tmp_path / "run")
    assert verdict["verdict"] == "fresh", verdict
    assert verdict["release"] == kernel.release
    # The build id was parsed from sys/kernel/notes in shell, wherever the note sits.
    assert verdict["build_id"] == kernel.expected["build_id"]
    assert verdict["config_sha256"] == kernel.expected["config_sha256"]
    assert verdict["tree"] == inside


@pytest.mark.integration
@HOOKS
def test_missing_build_link_is_missing(hook: Path, newroot: Path, tmp_path: Path) -> None:
    kernel = corpus_kernel("kh-6.1.192-kh-a")
    verdict = run_hook(hook, newroot, copy_sysroot(kernel, tmp_path / "kfs"), tmp_path / "run")
    assert verdict["verdict"] == "missing"


@pytest.mark.integration
@HOOKS
def test_dangling_build_link_is_missing(hook: Path, newroot: Path, tmp_path: Path) -> None:
    kernel = corpus_kernel("kh-6.1.192-kh-a")
    modules = newroot / "lib/modules" / kernel.release
    modules.mkdir(parents=True)
    (modules / "build").symlink_to("/usr/src/kheaders-pkg/gone")
    verdict = run_hook(hook, newroot, copy_sysroot(kernel, tmp_path / "kfs"), tmp_path / "run")
    assert verdict["verdict"] == "missing"


@pytest.mark.integration
@HOOKS
def test_tree_of_the_same_release_but_another_build_is_stale(
    hook: Path, newroot: Path, tmp_path: Path
) -> None:
    # kh-a and kh-b: same release, same config, different build id (corpus README).
    make_tree(newroot, corpus_kernel("kh-6.1.192-kh-a"))
    running = corpus_kernel("kh-6.1.192-kh-b")
    verdict = run_hook(hook, newroot, copy_sysroot(running, tmp_path / "kfs"), tmp_path / "run")
    assert verdict["verdict"] == "stale", verdict
    assert running.expected["build_id"] in verdict["reason"]


@pytest.mark.integration
@HOOKS
def test_stamp_with_another_config_is_stale(hook: Path, newroot: Path, tmp_path: Path) -> None:
    kernel = corpus_kernel("kh-6.1.192-kh-a")
    inside = make_tree(newroot, kernel)
    stamp = newroot / inside.lstrip("/") / STAMP_NAME
    stamp.write_text(_stamp(kernel.release, str(kernel.expected["build_id"]), "f" * 64))
    verdict = run_hook(hook, newroot, copy_sysroot(kernel, tmp_path / "kfs"), tmp_path / "run")
    assert verdict["verdict"] == "stale"
    assert "config" in verdict["reason"]


@pytest.mark.integration
@HOOKS
def test_distro_tree_is_foreign_unless_its_build_id_matches(
    hook: Path, newroot: Path, tmp_path: Path
) -> None:
    kernel = corpus_kernel("kh-6.1.192-kh-b")
    kfs = copy_sysroot(kernel, tmp_path / "kfs")
    make_tree(newroot, kernel, stamp=False, build_id="ab" * 20)
    assert run_hook(hook, newroot, kfs, tmp_path / "run")["verdict"] == "foreign"
    tree = newroot / TREE.format(rel=kernel.release, id12="ab" * 6).lstrip("/")
    (tree / "vmlinux.id").write_text(str(kernel.expected["build_id"]) + "\n")
    assert run_hook(hook, newroot, kfs, tmp_path / "run")["verdict"] == "fresh"


@pytest.mark.integration
@HOOKS
def test_absolute_links_resolve_inside_the_new_root(
    hook: Path, newroot: Path, tmp_path: Path
) -> None:
    # Merged /usr: /lib -> /usr/lib (absolute) must not lead to the initramfs's own /usr/lib.
    kernel = corpus_kernel("kh-6.1.192-kh-a")
    (newroot / "usr/lib").mkdir(parents=True)
    (newroot / "lib").symlink_to("/usr/lib")
    inside = make_tree(newroot, kernel)
    verdict = run_hook(hook, newroot, copy_sysroot(kernel, tmp_path / "kfs"), tmp_path / "run")
    assert verdict["verdict"] == "fresh"
    assert verdict["tree"] == inside


@pytest.mark.integration
@HOOKS
def test_unreadable_kernel_data_gives_unknown_and_exit_0(
    hook: Path, newroot: Path, tmp_path: Path
) -> None:
    kfs = tmp_path / "empty"
    kfs.mkdir()
    verdict = run_hook(hook, newroot, kfs, tmp_path / "run")
    assert verdict["verdict"] == "unknown"


@pytest.mark.integration
def test_truncated_notes_give_no_build_id(tmp_path: Path) -> None:
    notes = corpus_kernel("kh-6.1.192-kh-a").sysroot / "sys/kernel/notes"
    short = tmp_path / "notes"
    short.write_bytes(notes.read_bytes()[:30])  # the GNU note's descriptor is cut
    script = f'. "{LIB}"; kh_build_id "{short}"; echo "rc=$?"'
    result = subprocess.run(["busybox", "sh", "-c", script], capture_output=True, text=True)
    assert result.stdout == "rc=0\n"


@pytest.mark.integration
def test_missing_library_does_not_break_the_dracut_shell(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "KHEADERS_PKG_HOOKLIB": str(tmp_path / "nope")}
    script = f'. "{DRACUT_HOOK}"; echo survived'
    result = subprocess.run(
        ["busybox", "sh", "-c", script], env=env, capture_output=True, text=True
    )
    assert result.stdout == "survived\n"
