"""Our generated trees as pacman packages, and the alpm hooks, against Debian's real pacman 6.

What pacman does in a scratch root (`--root R --dbpath R/var/lib/pacman`), found with these tests:
- it creates the local database (`local/ALPM_DB_VERSION`, one directory per package) on the first
  transaction; the database directory itself must exist.
- `-Qo` wants the path as this machine sees it (`R/usr/...`); it strips the root itself.
- its built-in hook directory is `R/usr/share/libalpm/hooks` (root-prefixed), but `HookDir` from a
  config and `--hookdir` are taken as given, on the host.
- it runs a hook's `Exec` chrooted into R (`execv`, no shell), with targets on stdin: whatever the
  hook runs must exist inside R. The hook test therefore does what pacstrap/arch-chroot do for an
  Arch root being built from outside: it mounts /proc, /sys and /dev into R, and stands in for the
  Arch userland with this machine's, bind-mounted read-only (the interpreter, its libraries, the
  checkout with the installed console script), all in a private mount namespace (`unshare -m`).
- it holds `R/var/lib/pacman/db.lck` for the whole transaction, hooks included, so a hook can
  never register a package: the registration is queued and the next run completes it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from kheaders_pkg.distro import (
    Owner,
    drain_queue,
    emit_package,
    families,
    owner_of,
    register_tree,
    unregister_release,
)
from kheaders_pkg.distro.arch import LOCK, Pacman
from kheaders_pkg.distro.identity import package_version
from kheaders_pkg.distro.pacman_package import pacman_package_name
from kheaders_pkg.distro.queue import pending, queue_file
from kheaders_pkg.errors import ExitCode, QueuedError
from kheaders_pkg.kernel.machine import kernel_arch
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME, Layout
from kheaders_pkg.stamp import read_stamp
from tests.conftest import KERNELS_WITH_ARCHIVE, REPO, TOOL, CorpusKernel, corpus_kernel, run_cli
from tests.distro_util import (
    HEADER,
    ONE_KERNEL,
    GeneratedTree,
    expected_version,
    generated_tree,
    link_build,
    link_tree_into,
    make_tree,
    register_two_generations,
    tool,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=KERNELS_WITH_ARCHIVE)
def generated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> GeneratedTree:
    return generated_tree(request, tmp_path_factory, "pacman-tree")


@pytest.fixture(scope="module")
def package(generated: GeneratedTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pacman-out")
    return emit_package(Layout(root=generated.root), generated.tree, out, "pacman")


def pacman(root: Path, *args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    argv: list[str | Path] = ["pacman", "--root", root, "--dbpath", root / "var/lib/pacman"]
    return tool([*argv, "--config", os.devnull, "--noconfirm", *args], ok=ok)


def pacman_owner(root: Path, inside: str) -> str | None:
    """`pacman -Qo`'s answer, "name version", or None when it finds no owner."""
    proc = pacman(root, "-Qo", root / inside.lstrip("/"), ok=False)
    if proc.returncode != 0:
        assert "No package owns" in proc.stderr, proc.stderr
        return None
    return proc.stdout.strip().split(" is owned by ", 1)[1]


def assert_same_owner(root: Path, inside: str) -> Owner | None:
    """Our answer for `inside` equals pacman's own."""
    ours = owner_of(Layout(root=root), inside)
    theirs = pacman_owner(root, inside)
    assert (f"{ours.package} {ours.version}" if ours else None) == theirs, inside
    return ours


def arch_root(path: Path, generated: GeneratedTree | None = None) -> Path:
    """A merged-/usr root as Arch lays it out, with an empty pacman database, and
    `generated`'s tree hard-linked in."""
    (path / "usr/lib").mkdir(parents=True)
    (path / "usr/bin").mkdir()
    for top, target in (("lib", "usr/lib"), ("bin", "usr/bin"), ("sbin", "usr/bin")):
        (path / top).symlink_to(target)
    (path / "var/lib/pacman/local").mkdir(parents=True)
    (path / "var/log").mkdir(parents=True)
    if generated is not None:
        link_tree_into(path, generated)
    return path


def arch_package(
    work: Path,
    name: str,
    version: str,
    files: dict[str, bytes],
    links: dict[str, str] | None = None,
) -> Path:
    """A plain Arch package (what makepkg would build from a PKGBUILD's package()): a tar of
    .PKGINFO and the files, zstd-compressed by bsdtar."""
    top = work / f"{name}-{version}-pkg"
    work.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        (top / path).parent.mkdir(parents=True, exist_ok=True)
        (top / path).write_bytes(data)
    for path, target in (links or {}).items():
        (top / path).parent.mkdir(parents=True, exist_ok=True)
        (top / path).symlink_to(target)
    info = [f"pkgname = {name}", f"pkgbase = {name}", f"pkgver = {version}", "arch = x86_64"]
    info += ["pkgdesc = test package", "builddate = 1700000000", "packager = tests", "size = 1"]
    (top / ".PKGINFO").write_text("".join(line + "\n" for line in info))
    result = work / f"{name}-{version}-x86_64.pkg.tar.zst"
    tops = sorted(p.name for p in top.iterdir() if p.name != ".PKGINFO")
    tool(["bsdtar", "-c", "--zstd", "-f", result, "-C", top, ".PKGINFO", *tops])
    return result


def arch_linux_headers(work: Path, release: str) -> Path:
    """An Arch-style linux-headers: a real directory at usr/lib/modules/$KVER/build (Arch's
    PKGBUILD installs the kbuild tree there) and the usr/src/linux link to it."""
    build = f"usr/lib/modules/{release}/build"
    files = {
        f"{build}/Makefile": b"# kbuild\n",
        f"{build}/.config": b"CONFIG_X86_64=y\n",
        f"{build}/version": release.encode() + b"\n",
        f"{build}/{HEADER}": b"/* arch's own */\n",
    }
    links = {"usr/src/linux": f"../lib/modules/{release}/build"}
    return arch_package(work, "linux-headers", "6.1.192.arch1-1", files, links)


def installed_files(root: Path, name: str) -> set[str]:
    lines = pacman(root, "-Ql", name).stdout.splitlines()
    return {line.split(" ", 1)[1] for line in lines}


# --- the emitted package, as pacman reads it -------------------------------------------------


def test_pacman_package_metadata_names_the_release_and_build(
    generated: GeneratedTree, package: Path
) -> None:
    version = f"{expected_version(generated.tree)}-1"
    name = pacman_package_name(generated.release)
    assert package.name == f"{name}-{version}-x86_64.pkg.tar.zst"
    lines = tool(["pacman", "-Qip", package]).stdout.splitlines()
    info = {k.strip(): v.strip() for k, _, v in (line.partition(" : ") for line in lines) if v}
    assert info["Name"] == name
    assert info["Version"] == version
    assert info["Architecture"] == "x86_64"  # the corpus kernels are all x86_64
    assert info["Provides"] == f"kernel-ikheaders-{generated.release}={version}"
    members = tool(["bsdtar", "-tf", package]).stdout.splitlines()
    assert members[:3] == [".MTREE", ".PKGINFO", ".BUILDINFO"]
    pkginfo = tool(["bsdtar", "-xOf", package, ".PKGINFO"]).stdout
    assert not [line for line in pkginfo.splitlines() if "linux-headers" in line.split(" = ")[0]]
    assert "provides = linux-headers" not in pkginfo and "conflicts" not in pkginfo
    assert "so not linux-headers" in pkginfo  # the description says why
    buildinfo = tool(["bsdtar", "-xOf", package, ".BUILDINFO"]).stdout
    assert f"pkgver = {version}\n" in buildinfo and "format = 2\n" in buildinfo

    listed = {
        line.split(" ", 1)[1] for line in tool(["pacman", "-Qlp", package]).stdout.splitlines()
    }
    manifest = (generated.tree / MANIFEST_NAME).read_text().splitlines()
    files = {line.split("\t")[3] for line in manifest} | {STAMP_NAME, MANIFEST_NAME}
    assert {p for p in listed if not p.endswith("/")} == {f"{generated.inside}/{f}" for f in files}
    assert f"{Path(generated.inside).parent}/" in listed  # the release directory is listed
    assert not any("/lib/modules/" in p for p in listed)  # build/source links are the tool's


# Installing exercises pacman, not the kernel: the oldest and the newest tree layout are enough.
@pytest.mark.parametrize(
    "generated", ["kh-6.1.192-kh-a", "debian-6.12.107+deb13-amd64"], indirect=True
)
def test_pacman_installs_verifies_and_removes_the_emitted_package(
    generated: GeneratedTree, package: Path, tmp_path: Path
) -> None:
    root = arch_root(tmp_path / "root")
    pacman(root, "-U", package)
    name = pacman_package_name(generated.release)
    header = f"{generated.inside}/{HEADER}"
    assert (root / header.lstrip("/")).read_bytes() == (generated.tree / HEADER).read_bytes()
    # -Qkk checks every file against our .MTREE: type, mode, mtime, size, digests, owner.
    check = pacman(root, "-Qkk", name)
    assert check.stdout.strip().endswith(" 0 altered files"), check.stdout + check.stderr
    assert check.stderr == ""
    owner = assert_same_owner(root, header)
    assert owner == Owner("pacman", name, f"{expected_version(generated.tree)}-1")
    assert owner is not None and owner.is_ours
    provider = pacman(root, "-T", f"kernel-ikheaders-{generated.release}")
    assert provider.returncode == 0  # -T prints nothing when the dependency is satisfied
    assert pacman(root, "-T", f"linux-headers={generated.release}", ok=False).returncode == 127

    pacman(root, "-R", name)
    assert not (root / header.lstrip("/")).exists()
    assert not (root / "usr/src/kheaders-pkg").exists()  # its now-empty directories go too
    assert pacman_owner(root, "/usr") is None


def test_pacman_names_each_kernel_architecture() -> None:
    def name(config: bytes) -> str:
        arch = kernel_arch(config)
        assert arch is not None
        return arch.pacman

    assert name(b"CONFIG_X86=y\nCONFIG_X86_64=y\nCONFIG_64BIT=y\n") == "x86_64"
    assert name(b"CONFIG_ARM64=y\nCONFIG_64BIT=y\n") == "aarch64"
    assert name(b"CONFIG_X86=y\nCONFIG_X86_32=y\n") == "i686"
    assert name(b"CONFIG_ARM=y\n") == "armv7h"  # Arch Linux ARM's name, not rpm's armv7hl


def test_arm64_kernel_gives_an_aarch64_package_that_only_an_aarch64_root_takes(
    tmp_path: Path,
) -> None:
    kernel = corpus_kernel("debian-6.1.0-56-arm64")
    tree = make_tree(kernel, tmp_path / "tree")
    package = emit_package(Layout(root=tmp_path / "tree"), tree, tmp_path / "out", "pacman")
    assert package.name.endswith("-aarch64.pkg.tar.zst")  # built here, on x86_64
    lines = tool(["pacman", "-Qip", package]).stdout.splitlines()
    assert "Architecture    : aarch64" in lines
    for arch, accepted in (("x86_64", False), ("aarch64", True)):
        root = arch_root(tmp_path / f"root-{arch}")
        (root / "etc").mkdir()
        (root / "etc/pacman.conf").write_text(f"[options]\nArchitecture = {arch}\n")
        argv: list[str | Path] = ["pacman", "--root", root, "--dbpath", root / "var/lib/pacman"]
        argv += ["--config", root / "etc/pacman.conf", "--noconfirm", "-U", package]
        proc = tool(argv, ok=False)
        assert (proc.returncode == 0) is accepted, proc.stdout + proc.stderr
        if not accepted:
            assert "package architecture is not valid" in proc.stderr


def test_versions_sort_by_generation_under_vercmp() -> None:
    ids = ("6b6f59884788", "0123456789ab", "ffffffffffff", "8394bfb35129")
    versions = [f"{package_version(gen, ids[gen % len(ids)])}-1" for gen in (1, 2, 9, 10, 11, 100)]
    for older, newer in zip(versions, versions[1:], strict=False):
        assert tool(["vercmp", older, newer]).stdout.strip() == "-1", (older, newer)
        assert tool(["vercmp", newer, older]).stdout.strip() == "1", (older, newer)


# --- Arch's own linux-headers and ours in one root -----------------------------------------


@ONE_KERNEL
@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-first", "arch-first"])
def test_coexists_with_arch_linux_headers(
    generated: GeneratedTree, package: Path, tmp_path: Path, ours_first: bool
) -> None:
    root = arch_root(tmp_path / "root")
    theirs_pkg = arch_linux_headers(tmp_path, generated.release)
    # pacman -U, not --dbonly: the full file-conflict check runs on both installs.
    for pkg in (package, theirs_pkg) if ours_first else (theirs_pkg, package):
        proc = pacman(root, "-U", pkg)
        assert "exists in filesystem" not in proc.stderr
    release = generated.release
    for inside in (f"/lib/modules/{release}/build/{HEADER}", f"/usr/lib/modules/{release}/build"):
        theirs = assert_same_owner(root, inside)
        assert theirs is not None and theirs.package == "linux-headers" and not theirs.is_ours
    ours = assert_same_owner(root, f"{generated.inside}/{HEADER}")
    assert ours is not None and ours.is_ours
    before = installed_files(root, "linux-headers")

    assert unregister_release(Layout(root=root), release) == "pacman"
    assert installed_files(root, "linux-headers") == before
    assert pacman(root, "-Qk", "linux-headers").stdout.strip().endswith(" 0 missing files")
    assert (
        root / f"usr/lib/modules/{release}/build/{HEADER}"
    ).read_bytes() == b"/* arch's own */\n"
    assert (root / "usr/src/linux").is_symlink()
    assert assert_same_owner(root, f"{generated.inside}/{HEADER}") is None


# --- registration: pacman -U --dbonly, the lock, the queue ---------------------------------


@ONE_KERNEL
def test_registered_package_owns_the_tree_as_pacman_says(
    generated: GeneratedTree, tmp_path: Path
) -> None:
    root = arch_root(tmp_path / "root", generated)
    layout = Layout(root=root)
    assert [f.name for f in families(layout)] == ["pacman"]
    header = f"{generated.inside}/{HEADER}"
    inode = (root / header.lstrip("/")).stat().st_ino
    assert assert_same_owner(root, header) is None

    assert register_tree(layout, root / generated.inside.lstrip("/")) == "pacman"
    name = pacman_package_name(generated.release)
    owner = assert_same_owner(root, header)
    assert owner == Owner("pacman", name, f"{expected_version(generated.tree)}-1")
    assert (root / header.lstrip("/")).stat().st_ino == inode  # --dbonly: files untouched
    assert pacman(root, "-Qkk", name).stdout.strip().endswith(" 0 altered files")
    assert assert_same_owner(root, f"{generated.inside}/{STAMP_NAME}") == owner
    assert assert_same_owner(root, "/usr/src/unrelated.h") is None
    assert not list((root / "var/lib/kheaders-pkg/packages").glob("*.zst"))  # cleaned up

    unregister_release(layout, generated.release)
    assert pacman(root, "-Q", name, ok=False).returncode == 1
    assert not (root / header.lstrip("/")).exists()  # like dpkg -r and rpm -e


@ONE_KERNEL
def test_new_generation_upgrades_the_record_and_keeps_the_old_files(
    generated: GeneratedTree, tmp_path: Path
) -> None:
    root = arch_root(tmp_path / "root", generated)
    first, second = register_two_generations(root, generated)
    layout = Layout(root=root)
    name = pacman_package_name(generated.release)
    assert pacman(root, "-Q", name).stdout.split() == [name, f"{expected_version(second)}-1"]
    assert Pacman.installed_version(layout, name) == f"{expected_version(second)}-1"
    newer = assert_same_owner(root, "/" + (second / HEADER).relative_to(root).as_posix())
    assert newer is not None and newer.version == f"{expected_version(second)}-1"
    assert assert_same_owner(root, f"{generated.inside}/{HEADER}") is None
    assert (first / HEADER).exists()  # --dbonly: generation 1's files are left to the core's gc


@ONE_KERNEL
def test_registration_under_pacman_lock_is_queued_then_drained(
    generated: GeneratedTree, tmp_path: Path
) -> None:
    root = arch_root(tmp_path / "root", generated)
    layout = Layout(root=root)
    tree = root / generated.inside.lstrip("/")
    lock = root / LOCK
    lock.touch()  # what pacman does for the length of a transaction
    refused = pacman(root, "-U", "--dbonly", tree, ok=False)
    assert "unable to lock database" in refused.stderr  # pacman itself would fail here
    with pytest.raises(QueuedError) as caught:
        register_tree(layout, tree)
    assert caught.value.exit_code is ExitCode.QUEUED
    assert str(lock) in str(caught.value)
    assert queue_file(layout, generated.release).is_file()
    assert drain_queue(layout) == []  # still locked: nothing done, nothing lost
    assert len(pending(layout)) == 1
    lock.unlink()
    assert drain_queue(layout) == [generated.release]
    assert not queue_file(layout, generated.release).exists()
    owner = assert_same_owner(root, f"{generated.inside}/{HEADER}")
    assert owner is not None and owner.package == pacman_package_name(generated.release)

    lock.touch()
    with pytest.raises(QueuedError):
        unregister_release(layout, generated.release)
    lock.unlink()
    assert drain_queue(layout) == [generated.release]
    assert assert_same_owner(root, f"{generated.inside}/{HEADER}") is None


# --- through the installed command --------------------------------------------------------


@ONE_KERNEL
def test_cli_emits_and_registers_pacman_packages(generated: GeneratedTree, tmp_path: Path) -> None:
    root = arch_root(tmp_path / "root", generated)
    link_build(root, generated, "usr/lib/modules")
    out = tmp_path / "out"
    emitted = run_cli(
        root, None, "emit", "--kernel", generated.release, "--format", "pacman", "--out", out
    )
    assert emitted.returncode == 0, emitted.stderr
    built = Path(emitted.stdout.strip())
    assert built.parent == out and built.name.endswith("-x86_64.pkg.tar.zst")
    assert tool(["pacman", "-Qip", built]).returncode == 0

    (root / LOCK).touch()
    queued = run_cli(root, None, "register", "--kernel", generated.release, "--format", "pacman")
    assert queued.returncode == 12, queued.stderr
    assert "queued" in queued.stderr and len(queued.stderr.strip().splitlines()) == 1
    (root / LOCK).unlink()
    registered = run_cli(
        root, None, "register", "--kernel", generated.release
    )  # format from the root
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.strip().endswith("with pacman")
    assert pending(Layout(root=root)) == []
    assert pacman_owner(root, f"{generated.inside}/{HEADER}") == (
        f"{pacman_package_name(generated.release)} {expected_version(generated.tree)}-1"
    )


# --- the alpm hooks, fired by a real pacman transaction -----------------------------------

HOOK_KERNEL = "kh-6.1.192-kh-a-mod"  # IKHEADERS=m, as Arch's linux is


def _host_dirs() -> list[str]:
    """What the tool needs from this machine inside the root: the interpreter, its standard
    library and site packages, the shared libraries and loader, zstd, the checkout."""
    multiarch = str(sysconfig.get_config_var("MULTIARCH") or "")
    dirs = ["/usr/bin", f"/usr/lib/{multiarch}", "/usr/lib64", "/usr/lib/python3"]
    dirs += [sysconfig.get_paths()["stdlib"], str(REPO)]
    if not Path(sys.prefix).is_relative_to(REPO):  # a virtual environment outside the checkout
        dirs.append(sys.prefix)
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def _pacman_in_chroot_ready_root(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """pacman on `root` in a private mount namespace where, as pacstrap arranges, the root has
    /proc, /sys, /dev, and (standing in for the Arch userland) this machine's binaries."""
    script = ["set -e"]
    if not (root / "lib64").is_symlink():
        # This machine's binaries ask for /lib64/ld-linux-x86-64.so.2 (Arch's lib64 -> usr/lib).
        (root / "lib64").symlink_to("usr/lib64")
    for host in _host_dirs():  # read-only: the hook runs as root in there
        target = shlex.quote(str(root / host.lstrip("/")))
        (root / host.lstrip("/")).mkdir(parents=True, exist_ok=True)
        script.append(f"mount --bind {shlex.quote(host)} {target}")
        script.append(f"mount -o remount,bind,ro {target}")
    for kernel_fs in ("/proc", "/sys"):
        (root / kernel_fs.lstrip("/")).mkdir(exist_ok=True)
        script.append(f"mount --rbind {kernel_fs} {shlex.quote(str(root / kernel_fs.lstrip('/')))}")
    (root / "dev").mkdir(exist_ok=True)
    script.append(f"mount --rbind /dev {shlex.quote(str(root / 'dev'))}")
    argv = ["pacman", "--root", root, "--dbpath", root / "var/lib/pacman", "--config", os.devnull]
    script.append("exec " + shlex.join(str(a) for a in [*argv, "--noconfirm", *args]))
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        check=False,
    )


def arch_kernel_package(work: Path, kernel: CorpusKernel, version: str = "6.1.192.kh-1") -> Path:
    """An Arch-style kernel package: the image at usr/lib/modules/$KVER/vmlinuz (what Arch's
    hooks trigger on) and kheaders.ko (configs.ko too, where the kernel has one) compressed with
    zstd, as Arch ships its modules."""
    moddir = f"usr/lib/modules/{kernel.release}"
    files = {f"{moddir}/vmlinuz": kernel.vmlinuz.read_bytes(), f"{moddir}/pkgbase": b"linux\n"}
    for module in ("kheaders.ko", "configs.ko"):
        if (kernel.modules / module).is_file():
            zst = work / f"{kernel.name}-{module}.zst"
            tool(["zstd", "-q", "-f", "-o", zst, kernel.modules / module])
            files[f"{moddir}/kernel/kernel/{module}.zst"] = zst.read_bytes()
    return arch_package(work / kernel.name, "linux", version, files)


@pytest.fixture
def hooked_root(tmp_path: Path) -> Iterator[Path]:
    root = arch_root(tmp_path / "root")
    (root / "etc").mkdir()
    (root / "etc/kheaders-pkg.toml").write_text('emit = ["pacman"]\nregister = true\n')
    installed = run_cli(root, None, "hooks", "install", "--system", "arch", "--executable", TOOL)
    assert installed.returncode == 0, installed.stderr
    assert (root / "usr/share/libalpm/hooks/kheaders-pkg.hook").is_file()
    yield root


@pytest.mark.slow
def test_kernels_installed_upgraded_and_removed_through_pacman_get_and_lose_their_trees(
    hooked_root: Path, tmp_path: Path
) -> None:
    """A kernel's life under pacman, one transaction per step: install (our PostTransaction hook
    builds the tree before boot), upgrade to a new release (alpm counts the new vmlinuz as
    Install and the old one, absent from the new package, as Remove: both hooks run), removal."""
    root = hooked_root
    kernel = corpus_kernel(HOOK_KERNEL)
    release = kernel.release

    installed = _pacman_in_chroot_ready_root(root, "-U", arch_kernel_package(tmp_path, kernel))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # pacman names the hook by its Description, then relays what its Exec printed.
    assert "Generating kernel headers from kheaders.ko (kheaders-pkg)" in installed.stdout
    build = root / "usr/lib/modules" / release / "build"
    assert build.is_symlink(), installed.stdout + installed.stderr
    target = os.readlink(build)
    assert target.startswith(f"/usr/src/kheaders-pkg/{release}/gen-0001-")
    tree = root / target.lstrip("/")
    assert read_stamp(tree).build_id == kernel.expected["build_id"]
    assert read_stamp(tree).archive_sha256 == kernel.expected["kheaders_tar_xz_sha256"]
    # Inside the transaction pacman holds db.lck: the registration waited in the queue.
    assert f"register of {release} queued in /var/lib/kheaders-pkg/queue/" in installed.stdout
    assert "ended with exit" not in installed.stdout
    assert [r.release for r in pending(Layout(root=root))] == [release]
    assert pacman_owner(root, f"{target}/{HEADER}") is None
    assert not (root / LOCK).exists()

    synced = run_cli(root, None, "sync", "--kernel", release)  # the next run completes it
    assert synced.returncode == 0, synced.stderr
    assert pending(Layout(root=root)) == [], synced.stderr
    name, version = pacman_package_name(release), f"{expected_version(tree)}-1"
    assert pacman_owner(root, f"{target}/{HEADER}") == f"{name} {version}"
    assert pacman_owner(root, f"/usr/lib/modules/{release}/vmlinuz") == "linux 6.1.192.kh-1"
    assert os.readlink(build) == target  # the drain registered; it did not regenerate

    new = corpus_kernel("debian-6.1.0-56-amd64")
    upgrade = arch_kernel_package(tmp_path, new, "6.1.192.kh-2")
    upgraded = _pacman_in_chroot_ready_root(root, "-U", upgrade)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert "Generating kernel headers" in upgraded.stdout
    assert "Removing kernel headers generated by kheaders-pkg" in upgraded.stdout
    # The remove hook took the old tree and link away at once; its unregistration, like the
    # new tree's registration, waited for the lock.
    assert not tree.exists() and not build.is_symlink()
    assert f"unregister of {release} queued" in upgraded.stdout
    new_build = root / "usr/lib/modules" / new.release / "build"
    new_tree = root / os.readlink(new_build).lstrip("/")
    assert read_stamp(new_tree).build_id == new.expected["build_id"]
    assert pacman(root, "-Q", name).stdout.split() == [name, version]
    assert sorted(drain_queue(Layout(root=root))) == sorted([release, new.release])
    new_name, new_version = pacman_package_name(new.release), f"{expected_version(new_tree)}-1"
    assert pacman(root, "-Q").stdout.splitlines() == [
        f"{new_name} {new_version}",
        "linux 6.1.192.kh-2",
    ]
    new_header = "/" + (new_tree / HEADER).relative_to(root).as_posix()
    assert pacman_owner(root, new_header) == f"{new_name} {new_version}"

    removed = _pacman_in_chroot_ready_root(root, "-R", "linux")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "Removing kernel headers generated by kheaders-pkg" in removed.stdout
    assert not new_tree.exists() and not new_build.is_symlink()
    assert f"unregister of {new.release} queued" in removed.stdout
    assert drain_queue(Layout(root=root)) == [new.release]
    left = pacman(root, "-Q", ok=False)
    assert (left.returncode, left.stdout) == (1, "")  # neither a kernel nor our package is left
    assert not (root / "usr/src/kheaders-pkg" / new.release).exists()
