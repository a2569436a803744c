"""Read-only /usr: the tree under /var, published as a systemd-sysext extension (sysext.py).

The root's /usr is made read-only the way image-based systems have it, by a read-only bind mount
in a private mount namespace (`unshare --mount`), and the installed `kheaders-pkg` runs inside
it. The live-root trial (tests/sysext/live_merge.sh) runs the real systemd-sysext against this
host's own root in such a namespace, then compiles against the merged tree in a container made
the way the README's recipe makes one.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from kheaders_pkg.hooks import HookSystem, find_data_dir, stage_hooks
from kheaders_pkg.layout import Layout, PublishMode
from kheaders_pkg.sysext import (
    OsRelease,
    extension_state,
    label_problem,
    parse_os_release,
    publish_extension,
    publish_mode,
    render_extension_release,
    systemd_architecture,
)
from tests.conftest import REPO, TOOL, cli_argv, copy_sysroot, corpus_kernel, run_cli
from tests.reliability_util import snapshot, tree_problems

SYSEXT = shutil.which("systemd-sysext") or "/usr/bin/systemd-sysext"
KH_A, KH_B = corpus_kernel("kh-6.1.192-kh-a"), corpus_kernel("kh-6.1.192-kh-b")
DEB = corpus_kernel("debian-6.1.0-56-amd64")
RELEASE = KH_A.release
TREES = "var/lib/kheaders-pkg/trees"
ARCH = systemd_architecture(os.uname().machine)


# --- the label, pure ----------------------------------------------------------------------------


def test_os_release_values_are_unquoted_as_the_shell_would() -> None:
    text = 'ID=fedora\nVERSION_ID="39"\nNAME=\'Fedora Linux\'\n# c\nPRETTY="a \\"b\\""\nbad\n'
    assert parse_os_release(text) == {
        "ID": "fedora",
        "VERSION_ID": "39",
        "NAME": "Fedora Linux",
        "PRETTY": 'a "b"',
    }


@pytest.mark.parametrize(
    ("host", "text"),
    [
        (OsRelease("debian", "12"), "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\n"),
        (OsRelease("flatcar", "3975.2.0", "1.0"), "ID=flatcar\nSYSEXT_LEVEL=1.0\n"),
        (OsRelease("arch"), "ID=arch\n"),
    ],
)
def test_extension_release_carries_the_roots_id_and_level(host: OsRelease, text: str) -> None:
    arch = "x86-64" if "ARCHITECTURE" in text else None
    assert render_extension_release(host, arch) == text
    assert label_problem(parse_os_release(text), host, arch) is None or host.version_id is None


@pytest.mark.parametrize(
    ("label", "host", "problem"),
    [
        ({"ID": "debian", "VERSION_ID": "12"}, OsRelease("debian", "12"), None),
        ({"ID": "_any"}, OsRelease("debian", "13"), None),
        ({"ID": "debian", "VERSION_ID": "12"}, OsRelease("debian", "13"), "VERSION_ID=12"),
        ({"ID": "fedora", "VERSION_ID": "12"}, OsRelease("debian", "12"), "ID=fedora"),
        ({"ID": "flatcar", "SYSEXT_LEVEL": "1"}, OsRelease("flatcar", "1", "2"), "LEVEL=1"),
        ({"ID": "debian"}, OsRelease("debian", "12"), "neither"),
        ({"VERSION_ID": "12"}, OsRelease("debian", "12"), "no ID"),
        (
            {"ID": "debian", "VERSION_ID": "12", "ARCHITECTURE": "arm64"},
            OsRelease("debian", "12"),
            "ARCHITECTURE=arm64",
        ),
    ],
)
def test_label_problem_says_why_systemd_sysext_would_refuse(
    label: dict[str, str], host: OsRelease, problem: str | None
) -> None:
    found = label_problem(label, host, "x86-64")
    assert (found is None) if problem is None else (found is not None and problem in found)


# --- roots ----------------------------------------------------------------------------------


def image_root(path: Path, *, sysext: bool = True, merged_usr: bool = True) -> Path:
    """A scratch root like an image-based OS: os-release in /usr, the systemd-sysext binary
    (auto mode looks for it under --root; it is never run for --root), a writable /var."""
    (path / "usr/lib").mkdir(parents=True)
    (path / "etc").mkdir()
    (path / "var").mkdir()
    if merged_usr:
        os.symlink("usr/lib", path / "lib")
    else:
        (path / "lib/modules").mkdir(parents=True)
    (path / "usr/lib/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    os.symlink("../usr/lib/os-release", path / "etc/os-release")
    if sysext:
        (path / "usr/bin").mkdir()
        shutil.copy2(SYSEXT, path / "usr/bin/systemd-sysext")
    return path


def ro_usr(
    root: Path, kfs: Path | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed kheaders-pkg on `root` with its /usr a read-only mount (own namespace)."""
    argv = cli_argv(root, kfs)
    script = 'mount --bind "$1/usr" "$1/usr" && mount -o remount,bind,ro "$1/usr" && shift && '
    script += 'exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(root), *argv, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        check=False,
        timeout=300,
    )


def extension(root: Path, release: str = RELEASE) -> Path:
    return root / "var/lib/extensions" / f"kheaders-pkg-{release}"


def ext_link(root: Path, name: str = "build", release: str = RELEASE) -> str:
    return os.readlink(extension(root, release) / "usr/lib/modules" / release / name)


def label(root: Path, release: str = RELEASE) -> dict[str, str]:
    name = f"kheaders-pkg-{release}"
    path = extension(root, release) / "usr/lib/extension-release.d" / f"extension-release.{name}"
    return parse_os_release(path.read_text())


def published(root: Path, release: str = RELEASE) -> Path:
    """The tree the extension's build link leads to, on this machine."""
    target = ext_link(root, "build", release)
    assert target.startswith(f"/{TREES}/{release}/gen-"), target
    return root / target.lstrip("/")


def hidden_leftovers(root: Path) -> list[str]:
    found = [n for n in os.listdir(root / "var/lib/extensions") if n.startswith(".#")]
    trees = root / TREES
    found += [n for n in os.listdir(trees) if n.startswith((".staging-", ".trash-"))]
    return found


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p


def archive_files(archive: Path) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(archive.read_bytes()))) as tar:
        out = {}
        for m in tar.getmembers():
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                out[os.path.normpath(m.name)] = f.read()
        return out


def tree_files(tree: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(tree):
        for n in files:
            p = Path(dirpath, n)
            if not p.is_symlink():
                out[str(p.relative_to(tree))] = p.read_bytes()
    return out


# --- mode detection ---------------------------------------------------------------------------


@pytest.mark.integration
def test_auto_mode_follows_what_the_root_can_write(tmp_path: Path) -> None:
    root = image_root(tmp_path / "root")
    assert publish_mode(Layout(root=root), "auto") is PublishMode.TREE  # /usr writable here
    (root / "run").mkdir()
    (root / "run/ostree-booted").touch()
    assert publish_mode(Layout(root=root), "auto") is PublishMode.SYSEXT
    assert publish_mode(Layout(root=root), "tree") is PublishMode.TREE
    (root / "usr/bin/systemd-sysext").unlink()
    assert publish_mode(Layout(root=root), "auto") is PublishMode.VAR


def test_extension_is_labelled_with_the_kernels_architecture_not_the_hosts(
    tmp_path: Path,
) -> None:
    # An image builder on this x86 host prepares an arm64 root: the machine that merges the
    # extension runs the arm64 kernel, and its systemd-sysext compares ARCHITECTURE= with arm64.
    root = image_root(tmp_path / "root")
    layout = Layout(root=root, publish=PublishMode.SYSEXT)
    tree_inside = f"/{TREES}/{RELEASE}/gen-1"
    (root / tree_inside.lstrip("/")).mkdir(parents=True)
    (root / tree_inside.lstrip("/") / ".config").write_bytes(b"CONFIG_ARM64=y\nCONFIG_64BIT=y\n")
    publish_extension(layout, RELEASE, tree_inside)
    assert label(root)["ARCHITECTURE"] == "arm64"
    assert extension_state(layout, RELEASE).problem is None  # judged against the kernel's too


# --- sync on a read-only /usr -------------------------------------------------------------------


@pytest.mark.integration
def test_read_only_usr_sync_publishes_an_extension_and_changes_nothing_under_usr(
    tmp_path: Path,
) -> None:
    root = image_root(tmp_path / "root")
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    before = snapshot(root / "usr")

    assert ro_usr(root, kfs, "check").returncode == 3
    ok(ro_usr(root, kfs, "sync"))
    check = ok(ro_usr(root, kfs, "check"))
    assert "systemd-sysext extension" in check.stdout and "not merged" in check.stdout

    assert snapshot(root / "usr") == before  # nothing written under /usr
    tree = published(root)
    assert ext_link(root, "source") == ext_link(root, "build")
    assert tree_problems(tree) == []
    assert label(root) == {
        "ID": "debian",
        "VERSION_ID": "12",
        **({"ARCHITECTURE": ARCH} if ARCH else {}),
    }
    # The archive's files, byte for byte, plus only what every tree gets (same set as a tree
    # made on a writable root).
    files, archive = tree_files(tree), archive_files(KH_A.archive)
    assert {p: files.get(p) for p in archive} == archive
    writable = image_root(tmp_path / "writable", sysext=False)
    ok(run_cli(writable, kfs, "sync"))
    plain = writable / os.readlink(writable / "lib/modules" / RELEASE / "build").lstrip("/")
    assert set(files) - set(archive) == set(tree_files(plain)) - set(archive)

    status = json.loads(ok(ro_usr(root, kfs, "status", "--json")).stdout)
    assert status["verdict"] == "fresh"
    assert status["tree"]["publish"] == "sysext"
    assert status["tree"]["extension"]["merged"] is None  # --root: not the running system
    assert status["tree"]["extension"]["problem"] is None

    # A second sync changes nothing: the same extension directory, the same tree.
    ext_inode = os.stat(extension(root)).st_ino
    ok(ro_usr(root, kfs, "sync"))
    assert os.stat(extension(root)).st_ino == ext_inode
    assert published(root) == tree


@pytest.mark.integration
def test_rebuild_under_the_same_release_replaces_the_extension_and_gc_remove_clean_up(
    tmp_path: Path,
) -> None:
    root = image_root(tmp_path / "root")
    (root / "etc/kheaders-pkg.toml").write_text("keep_generations = 0\n")
    kfs_a, kfs_b = copy_sysroot(KH_A, tmp_path / "a"), copy_sysroot(KH_B, tmp_path / "b")
    ok(ro_usr(root, kfs_a, "sync"))
    first, ext_inode = published(root), os.stat(extension(root)).st_ino

    assert ro_usr(root, kfs_b, "check").returncode == 3
    ok(ro_usr(root, kfs_b, "sync"))
    second = published(root)
    assert second != first and second.name.startswith("gen-0002-")
    assert os.stat(extension(root)).st_ino != ext_inode  # a new extension, swapped in
    assert "KH_CORPUS_VARIANT 2" in (second / "include/linux/kernel.h").read_text()
    assert not first.exists()  # keep_generations = 0: gc took the unused one
    assert hidden_leftovers(root) == []
    assert ok(ro_usr(root, kfs_b, "check")).returncode == 0

    ok(ro_usr(root, kfs_b, "gc"))
    assert second.is_dir()  # in use by the extension
    ok(ro_usr(root, kfs_b, "remove", "--kernel", RELEASE))
    assert not extension(root).exists()
    assert not (root / TREES / RELEASE).exists()


@pytest.mark.integration
def test_divert_shadows_a_distro_tree_with_the_extension_and_restore_takes_it_away(
    tmp_path: Path,
) -> None:
    root = image_root(tmp_path / "root")
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    (root / "etc/kheaders-pkg.toml").write_text('foreign = "divert"\n')
    mdir = root / "usr/lib/modules" / RELEASE
    (root / "usr/src/linux-headers-x/include").mkdir(parents=True)
    mdir.mkdir(parents=True)
    (mdir / "modules.dep").write_text("")
    os.symlink("/usr/src/linux-headers-x", mdir / "build")
    under_usr = snapshot(root / "usr")
    assert ro_usr(root, kfs, "check").returncode == 4  # foreign, stale

    ok(ro_usr(root, kfs, "sync"))
    assert published(root).name.startswith("gen-0001-")
    assert snapshot(root / "usr") == under_usr  # the distro's links stay; the extension shadows
    record = root / "var/lib/kheaders-pkg/links" / f"{RELEASE}.json"
    assert json.loads(record.read_text()) == {"build": "/usr/src/linux-headers-x", "source": None}
    assert ok(ro_usr(root, kfs, "check")).stdout.startswith("fresh:")

    done = ok(ro_usr(root, kfs, "restore"))
    assert f"restored: {RELEASE}" in done.stdout
    assert "removed our systemd-sysext extension" in done.stdout
    assert not os.path.lexists(extension(root)) and not record.exists()
    assert snapshot(root / "usr") == under_usr
    assert ro_usr(root, kfs, "check").returncode == 4  # what tools see again: the distro's
    assert "nothing to restore" in ok(ro_usr(root, kfs, "restore")).stdout


@pytest.mark.integration
def test_changed_version_id_relabels_the_extension_without_regenerating(tmp_path: Path) -> None:
    root = image_root(tmp_path / "root")
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    ok(ro_usr(root, kfs, "sync"))
    tree = published(root)
    header = os.stat(tree / "include/linux/sched.h")

    # An A/B update: the new /usr says VERSION_ID=13; systemd-sysext would drop the extension.
    (root / "usr/lib/os-release").write_text('ID=debian\nVERSION_ID="13"\n')
    check = ro_usr(root, kfs, "check")
    assert check.returncode == 3 and "VERSION_ID=12" in check.stdout, check.stdout
    sync = ok(ro_usr(root, kfs, "sync"))
    assert "relabelled" in sync.stdout
    assert label(root)["VERSION_ID"] == "13"
    assert published(root) == tree  # the same generation
    assert os.stat(tree / "include/linux/sched.h").st_ino == header.st_ino
    assert ok(ro_usr(root, kfs, "check")).returncode == 0


@pytest.mark.integration
def test_extension_of_a_kernel_that_is_gone_is_removed(tmp_path: Path) -> None:
    root = image_root(tmp_path / "root")
    kfs_a, kfs_deb = copy_sysroot(KH_A, tmp_path / "a"), copy_sysroot(DEB, tmp_path / "deb")
    ok(ro_usr(root, kfs_a, "sync"))
    # Another kernel boots; 6.1.192-kh is gone from /usr (nothing but our links would show in
    # its modules directory): its extension and trees go.
    ok(ro_usr(root, kfs_deb, "sync"))
    assert not extension(root, RELEASE).exists()
    assert not (root / TREES / RELEASE).exists()
    assert extension(root, DEB.release).is_dir()
    # A kernel still installed (its modules directory holds more) keeps its extension.
    ok(ro_usr(root, kfs_a, "sync"))
    (root / "usr/lib/modules" / RELEASE).mkdir(parents=True)
    (root / "usr/lib/modules" / RELEASE / "modules.dep").touch()
    ok(ro_usr(root, kfs_deb, "sync"))
    assert extension(root, RELEASE).is_dir()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(
    "point", ["after-rename-generation", "before-extension-exchange", "after-extension-exchange"]
)
def test_a_crash_while_replacing_the_extension_leaves_the_old_or_the_new(
    tmp_path: Path, point: str
) -> None:
    root = image_root(tmp_path / "root")
    kfs_a, kfs_b = copy_sysroot(KH_A, tmp_path / "a"), copy_sysroot(KH_B, tmp_path / "b")
    ok(ro_usr(root, kfs_a, "sync"))
    old = published(root)
    killed = ro_usr(root, kfs_b, "sync", env={"KHEADERS_PKG_CRASH_AT": point})
    assert killed.returncode == -9 or killed.returncode == 137, killed
    now = published(root)  # old or new, complete, and the label intact
    assert now in (old, root / TREES / RELEASE / now.name)
    assert tree_problems(now) == []
    assert label(root)["ID"] == "debian"
    expect_new = point == "after-extension-exchange"
    assert (now != old) == expect_new
    ok(ro_usr(root, kfs_b, "sync"))
    assert hidden_leftovers(root) == []
    assert ok(ro_usr(root, kfs_b, "check")).returncode == 0


# --- read-only root without systemd-sysext ----------------------------------------------------


@pytest.mark.integration
def test_read_only_root_without_sysext_names_the_tree_and_the_settings(tmp_path: Path) -> None:
    root = image_root(tmp_path / "root", sysext=False)
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    p = ro_usr(root, kfs, "sync")
    assert p.returncode == 14, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    gens = sorted(os.listdir(root / TREES / RELEASE))
    path = f"/{TREES}/{RELEASE}/{gens[-1]}"
    assert f"BCC_KERNEL_SOURCE={path}" in lines[0] and f"BPFTRACE_KERNEL_SOURCE={path}" in lines[0]
    assert tree_problems(root / path.lstrip("/")) == []
    # Asked again: the same tree, named again, not made again.
    p = ro_usr(root, kfs, "sync")
    assert p.returncode == 14 and path in p.stderr
    assert sorted(os.listdir(root / TREES / RELEASE)) == gens


@pytest.mark.integration
def test_read_only_usr_with_writable_lib_modules_points_build_at_var(tmp_path: Path) -> None:
    root = image_root(tmp_path / "root", sysext=False, merged_usr=False)
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    ok(ro_usr(root, kfs, "sync"))
    target = os.readlink(root / "lib/modules" / RELEASE / "build")
    assert target.startswith(f"/{TREES}/{RELEASE}/gen-")
    assert ok(ro_usr(root, kfs, "check")).returncode == 0


# --- the live root: a real systemd-sysext merge, then a container ----------------------------


def boot_unit_refresh(tmp_path: Path, kernel_fs: Path) -> dict[str, str]:
    """The shipped kheaders-pkg.service's refresh flag and privileged ExecStartPost= command,
    rendered for a stand-in executable that runs the installed tool on `kernel_fs`."""
    exe = tmp_path / "kheaders-pkg"
    exe.write_text(f'#!/bin/sh\nexec {TOOL} --kernel-fs {kernel_fs} "$@"\n')
    exe.chmod(0o755)
    unit_root = tmp_path / "unit-root"
    stage_hooks(unit_root, HookSystem.FEDORA, str(exe), find_data_dir())
    unit = (unit_root / "usr/lib/systemd/system/kheaders-pkg.service").read_text()
    lines = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    flag = lines["Environment"].split("=", 1)[1]
    post = shlex.split(lines["ExecStartPost"].removeprefix("+"))
    assert post[:2] == ["/bin/sh", "-c"], post
    return {"UNIT_FLAG": flag, "UNIT_POST": post[2]}


def run_live_merge(tmp_path: Path, kernel_fs: Path) -> dict[str, str]:
    script = REPO / "tests/sysext/live_merge.sh"
    consumer = REPO / "tests/e2e/guest/consumer.c"
    argv: Sequence[str] = [str(TOOL), str(kernel_fs), str(consumer), str(tmp_path)]
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", str(script), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, **boot_unit_refresh(tmp_path, kernel_fs)},
    )
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return values


@pytest.mark.integration
def test_live_read_only_usr_is_merged_by_systemd_sysext_and_a_container_compiles_against_it(
    tmp_path: Path,
) -> None:
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    v = run_live_merge(tmp_path, kfs)
    notes = (tmp_path / "sync.err").read_text()
    assert v["check_before.rc"] == "3"
    # As the boot unit runs it: sync (no mount rights) leaves the merge to the unit's
    # privileged ExecStartPost=, which refreshes and checks (exit 0: fresh and merged).
    assert v["sync.rc"] == "0", notes
    assert v.get("flag_left") == "1" and v["build_before_post"] == "absent"
    assert v["post.rc"] == "0", (tmp_path / "post.out").read_text()
    assert "merged" in (tmp_path / "post.out").read_text()
    assert v["usr_options"] == "ro" and v["usr_fstype"] == "overlay"
    assert f"kheaders-pkg-{RELEASE}" in v["sysext_status"]
    assert v["build_target"].startswith(f"/{TREES}/{RELEASE}/gen-0001-")
    assert v["kconfig_h_readable"] == "1"
    assert v["check_after.rc"] == "0" and v["sync_again.rc"] == "0"
    # The boot-time fast path answers the merged extension, with the full path's line.
    assert v["fast_path_answered"] == "True" and v["check_full.rc"] == "0"
    fast_line = (tmp_path / "check_after.out").read_text()
    assert fast_line == (tmp_path / "check_full.out").read_text()
    assert fast_line.startswith("fresh:") and fast_line.rstrip().endswith(", merged")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["tree"]["extension"]["merged"] is True
    assert "merged" in status["reason"]
    # The container: every link resolves, no archive, clang compiles with bcc's flags.
    assert v["container_no_archive"] == "1"
    assert v["container_dangling"] == ""
    assert int(v["container_files"]) > 1000
    assert v["clang.rc"] == "0", (tmp_path / "clang.out").read_text()[-2000:]
    assert int(v["version_code"]) == (6 << 16) + (1 << 8) + 192  # KERNEL_VERSION(6, 1, 192)
    assert "CapBnd" in (tmp_path / "clang.out").read_text()
    cap_bnd = int((tmp_path / "clang.out").read_text().split("CapBnd:")[1].split()[0], 16)
    assert not cap_bnd & (1 << 16)  # CAP_SYS_MODULE


@pytest.mark.integration
def test_publish_key_chooses_the_mode_and_bad_values_are_config_errors(tmp_path: Path) -> None:
    root = image_root(tmp_path / "root")
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    config = root / "etc/kheaders-pkg.toml"
    config.write_text('publish = "image"\n')
    p = ro_usr(root, kfs, "check")
    assert p.returncode == 10 and "'publish'" in p.stderr, p.stderr
    # Forced to a tree on a read-only /usr: the usual one-line filesystem error, nothing made.
    config.write_text('publish = "tree"\n')
    p = ro_usr(root, kfs, "sync")
    assert p.returncode == 8 and "read-only" in p.stderr, p.stderr
    assert not (root / "var/lib/extensions").exists()


@pytest.mark.integration
def test_emit_packages_the_extensions_tree(tmp_path: Path) -> None:
    root = image_root(tmp_path / "root")
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    ok(ro_usr(root, kfs, "sync"))
    out = tmp_path / "out"
    out.mkdir()
    deb = Path(ok(ro_usr(root, kfs, "emit", "--format", "deb", "--out", str(out))).stdout.strip())
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True).stdout
    tree = ext_link(root)
    assert f".{tree}/include/linux/kconfig.h" in listing


@pytest.mark.slow
@pytest.mark.integration
def test_concurrent_syncs_make_one_generation_and_one_extension(tmp_path: Path) -> None:
    root = image_root(tmp_path / "root")
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    script = 'mount --bind "$1/usr" "$1/usr" && mount -o remount,bind,ro "$1/usr" && shift && '
    # Each child waited for by its pid: `wait -n` can miss a child that ended while another was
    # being reaped and then report 127 (no child), a failure that no sync had.
    script += 'pids=""; for i in 1 2 3 4 5 6; do "$@" & pids="$pids $!"; done; fail=0; '
    script += 'for p in $pids; do wait "$p" || { echo "exit=$?"; fail=$((fail + 1)); }; done; '
    script += "echo failed=$fail"
    argv = cli_argv(root, kfs, "sync")
    done = subprocess.run(
        ["unshare", "--mount", "bash", "-c", script, "sh", str(root), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert "failed=0" in done.stdout, (done.stdout, done.stderr)
    assert done.stdout.count("regenerated ") == 1, done.stdout
    assert sorted(os.listdir(root / TREES / RELEASE))[0].startswith("gen-0001-")
    assert len(os.listdir(root / TREES / RELEASE)) == 1
    assert tree_problems(published(root)) == []
    assert hidden_leftovers(root) == []


@pytest.mark.integration
def test_read_only_usr_with_writable_mounts_for_the_trees_and_links_stays_a_tree(
    tmp_path: Path,
) -> None:
    # As the e2e harness boots kernels without overlayfs: /usr read-only, with writable
    # filesystems mounted at /usr/src and /usr/lib/modules. Nothing calls for an extension.
    root = image_root(tmp_path / "root")
    (root / "usr/src").mkdir()
    (root / "usr/lib/modules").mkdir()
    kfs = copy_sysroot(KH_A, tmp_path / "kfs")
    script = 'mount --bind "$1/usr" "$1/usr" && mount -o remount,bind,ro "$1/usr" && '
    script += 'mount -t tmpfs tmpfs "$1/usr/src" && mount -t tmpfs tmpfs "$1/usr/lib/modules" && '
    script += 'shift && "$@" sync && "$@" check && readlink "$R/lib/modules/$V/build"'
    argv = cli_argv(root, kfs)
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(root), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "R": str(root), "V": RELEASE},
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout.strip().splitlines()[-1].startswith(f"/usr/src/kheaders-pkg/{RELEASE}/gen-")
    assert not (root / "var/lib/extensions").exists()
