"""Our generated trees as real packages, against the real dpkg, dpkg-deb, rpm and rpmbuild.

Each corpus kernel with an archive becomes one generated tree (module scope); every test that
installs works in its own scratch root holding a hard-linked copy of that tree (dpkg replaces
files by rename, so the shared tree is never written).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kheaders_pkg.config import Config, PackageFormat
from kheaders_pkg.distro import (
    Owner,
    drain_queue,
    emit_and_register,
    emit_command,
    emit_package,
    families,
    owner_of,
    register_command,
    register_tree,
    unregister_all,
    unregister_release,
)
from kheaders_pkg.distro.identity import deb_package_name, rpm_package_name
from kheaders_pkg.distro.queue import pending, queue_file
from kheaders_pkg.errors import ExitCode, PackagingError, QueuedError
from kheaders_pkg.layout import MANIFEST_NAME, STAMP_NAME, Layout
from kheaders_pkg.stamp import read_stamp
from tests.conftest import KERNELS_WITH_ARCHIVE, CorpusKernel, corpus_kernel
from tests.conftest import hold_lock as _hold_lock
from tests.distro_util import (
    HEADER,
    ONE_KERNEL,
    GeneratedTree,
    expected_version,
    generated_tree,
    link_build,
    link_tree_into,
    next_generation,
    register_two_generations,
    tool,
)

pytestmark = pytest.mark.integration

# The corpus kernels that come with Debian's own linux-headers packages (debs/).
DEBIAN_KERNELS = tuple(k for k in KERNELS_WITH_ARCHIVE if (corpus_kernel(k).path / "debs").is_dir())


@pytest.fixture(scope="module", autouse=True)
def rpm_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """rpm and rpmbuild read ~/.rpmmacros and Debian's rpm keeps its db in ~/.rpmdb: not ours."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="module", params=KERNELS_WITH_ARCHIVE)
def generated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> GeneratedTree:
    return generated_tree(request, tmp_path_factory, "tree")


@pytest.fixture(scope="module")
def packages(generated: GeneratedTree, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("out")
    layout = Layout(root=generated.root)
    return {fmt: emit_package(layout, generated.tree, out, fmt) for fmt in ("deb", "rpm")}


def scratch_root(path: Path, generated: GeneratedTree | None = None) -> Path:
    """A merged-/usr root with an empty dpkg database, and `generated`'s tree hard-linked in."""
    (path / "usr/lib").mkdir(parents=True)
    (path / "lib").symlink_to("usr/lib")
    admin = path / "var/lib/dpkg"
    for sub in ("info", "updates", "triggers"):
        (admin / sub).mkdir(parents=True)
    (admin / "status").touch()
    (path / "var/log").mkdir(parents=True)
    if generated is not None:
        link_tree_into(path, generated)
    return path


def rpm_root(path: Path, generated: GeneratedTree) -> Path:
    """A root with an initialised rpmdb (and no dpkg database) and the tree in place."""
    path.mkdir()
    link_tree_into(path, generated)
    (path / "var/lib/rpm").mkdir(parents=True)
    tool(["rpm", "--root", path, "--dbpath", "/var/lib/rpm", "--initdb"])
    return path


def dpkg(root: Path, *args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return tool(
        [
            "dpkg",
            f"--root={root}",
            f"--admindir={root}/var/lib/dpkg",
            "--log=/dev/null",
            "--force-script-chrootless",
            *args,
        ],
        ok=ok,
    )


def rpmq(root: Path, *args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return tool(["rpm", "--root", root, "--dbpath", "/var/lib/rpm", *args], ok=ok)


# --- emitted packages: what the tools themselves read from them -----------------------------


def test_deb_metadata_names_the_release_and_build(
    generated: GeneratedTree, packages: dict[str, Path]
) -> None:
    fields = {
        name: tool(["dpkg-deb", "--field", packages["deb"], name]).stdout.strip()
        for name in ("Package", "Version", "Architecture", "Section", "Provides", "Description")
    }
    version = expected_version(generated.tree)
    assert fields["Package"] == deb_package_name(generated.release)
    assert fields["Version"] == version
    assert fields["Architecture"] == tool(["dpkg", "--print-architecture"]).stdout.strip()
    assert fields["Section"] == "kernel"
    assert fields["Provides"] == f"kernel-ikheaders-{generated.release} (= {version})"
    assert "linux-headers" not in fields["Provides"]
    assert read_stamp(generated.tree).archive_sha256 in fields["Description"]
    assert generated.inside in fields["Description"]
    info = tool(["dpkg-deb", "--info", packages["deb"]]).stdout
    assert "md5sums" in info


def test_deb_contents_are_the_tree_and_nothing_else(
    generated: GeneratedTree, packages: dict[str, Path]
) -> None:
    listing = tool(["dpkg-deb", "--contents", packages["deb"]]).stdout.splitlines()
    paths = {line.split(maxsplit=5)[5].split(" -> ")[0] for line in listing}
    prefix = "." + generated.inside + "/"
    files = {p.removeprefix(prefix) for p in paths if p.startswith(prefix) and not p.endswith("/")}
    manifest = (generated.tree / MANIFEST_NAME).read_text().splitlines()
    assert files == {line.split("\t")[3] for line in manifest} | {STAMP_NAME, MANIFEST_NAME}
    assert not any("lib/modules" in p for p in paths)  # build/source links are not shipped
    assert all(" root/root " in line for line in listing)


def test_rpm_metadata_and_provides_are_honest(
    generated: GeneratedTree, packages: dict[str, Path]
) -> None:
    query = "%{NAME}|%{VERSION}|%{RELEASE}|%{ARCH}|%{PAYLOADCOMPRESSOR}"
    info = tool(["rpm", "-qp", "--qf", query, packages["rpm"]]).stdout
    name, version, release, arch, compressor = info.split("|")
    assert name == rpm_package_name(generated.release)
    assert version == expected_version(generated.tree)
    assert (release, arch, compressor) == ("1", os.uname().machine, "xz")
    provides = tool(["rpm", "-qp", "--provides", packages["rpm"]]).stdout
    assert f"kernel-ikheaders-{generated.release} = {version}" in provides
    assert "kernel-devel" not in provides
    assert "kernel-devel-uname-r" in tool(["rpm", "-qpi", packages["rpm"]]).stdout  # says why
    assert tool(["rpm", "-qp", "--requires", packages["rpm"]]).stdout.count("rpmlib(") >= 1
    listed = tool(["rpm", "-qpl", packages["rpm"]]).stdout.splitlines()
    files = [
        line.split("\t")[3] for line in (generated.tree / MANIFEST_NAME).read_text().splitlines()
    ]
    files += [STAMP_NAME, MANIFEST_NAME]
    expected = {f"{generated.inside}/{f}" for f in files}
    expected |= {f"{generated.inside}/{d}" for f in files for d in map(str, Path(f).parents)}
    expected.add(str(Path(generated.inside).parent))  # the release directory is ours too
    assert set(listed) == {p.removesuffix("/.") for p in expected}
    assert f"{generated.inside}/{HEADER}" in listed
    assert not any("/lib/modules/" in p for p in listed)


# --- dpkg: registration, ownership, removal ---------------------------------------------------


def test_registered_deb_owns_the_tree_and_removal_takes_it(
    generated: GeneratedTree, tmp_path: Path
) -> None:
    root = scratch_root(tmp_path / "root", generated)
    layout = Layout(root=root)
    assert [f.name for f in families(layout)] == ["dpkg"]
    header = f"{generated.inside}/{HEADER}"
    before = (root / header.lstrip("/")).read_bytes()
    assert owner_of(layout, header) is None

    assert register_tree(layout, root / generated.inside.lstrip("/")) == "dpkg"
    name = deb_package_name(generated.release)
    assert dpkg(root, "-S", header).stdout.startswith(f"{name}: ")
    owner = owner_of(layout, header)
    assert owner == Owner("dpkg", name, expected_version(generated.tree))
    assert owner is not None and owner.is_ours
    assert (root / header.lstrip("/")).read_bytes() == before
    assert not list((root / "var/lib/kheaders-pkg/packages").glob("*.deb"))  # cleaned up

    unregister_release(layout, generated.release)
    assert owner_of(layout, header) is None
    assert dpkg(root, "-s", name, ok=False).returncode != 0
    assert not (root / header.lstrip("/")).exists()


def test_plain_dpkg_installs_and_removes_the_emitted_deb(
    generated: GeneratedTree, packages: dict[str, Path], tmp_path: Path
) -> None:
    root = scratch_root(tmp_path / "root")
    dpkg(root, "-i", packages["deb"])
    header = f"{generated.inside}/{HEADER}"
    assert (root / header.lstrip("/")).read_bytes() == (generated.tree / HEADER).read_bytes()
    assert dpkg(root, "-S", header).stdout.split(":")[0] == deb_package_name(generated.release)
    dpkg(root, "--verify", deb_package_name(generated.release))  # md5sums match the files
    dpkg(root, "-r", deb_package_name(generated.release))
    assert not (root / header.lstrip("/")).exists()


@ONE_KERNEL
def test_new_generation_upgrades_the_same_package(generated: GeneratedTree, tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root", generated)
    first, second = register_two_generations(root, generated)
    layout = Layout(root=root)
    name = deb_package_name(generated.release)
    status = dpkg(root, "-s", name).stdout
    assert f"Version: {expected_version(second)}" in status
    owner = owner_of(layout, "/" + (second / HEADER).relative_to(root).as_posix())
    assert owner is not None and owner.package == name
    # dpkg removes what the old version listed and the new one does not: generation 1's files.
    assert not (first / HEADER).exists()


# --- Debian's own linux-headers and ours in one root ---------------------------------------


def _debian_debs(kernel: CorpusKernel) -> list[Path]:
    return sorted(kernel.debs.glob("*.deb"))


@pytest.mark.parametrize("generated", DEBIAN_KERNELS, indirect=True)
@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-first", "debian-first"])
def test_coexists_with_debian_linux_headers(
    generated: GeneratedTree, tmp_path: Path, ours_first: bool
) -> None:
    root = scratch_root(tmp_path / "root", generated)
    layout = Layout(root=root)
    tree = root / generated.inside.lstrip("/")
    debs = _debian_debs(generated.kernel)
    if ours_first:
        register_tree(layout, tree)
        dpkg(root, "--unpack", *debs)  # their postinst needs a full system: unpack only
    else:
        dpkg(root, "--unpack", *debs)
        register_tree(layout, tree)

    release = generated.release
    theirs = owner_of(layout, f"/lib/modules/{release}/build")
    assert theirs is not None and theirs.package == f"linux-headers-{release}"
    assert not theirs.is_ours
    assert theirs.version is not None and theirs.version.startswith(
        str(generated.kernel.expected["proc_version"]).split(" Debian ")[1].split()[0]
    )
    config = owner_of(layout, f"/usr/src/linux-headers-{release}/.config")
    assert config is not None and config.package == f"linux-headers-{release}"
    ours = owner_of(layout, f"{generated.inside}/{HEADER}")
    assert ours is not None and ours.package == deb_package_name(release)

    before = {
        p: p.read_bytes()
        for p in (root / f"usr/src/linux-headers-{release}").rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    unregister_release(layout, release)
    after = {
        p: p.read_bytes()
        for p in (root / f"usr/src/linux-headers-{release}").rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    assert before == after
    assert (root / f"lib/modules/{release}/build").is_symlink()
    assert owner_of(layout, f"/lib/modules/{release}/build") == theirs
    assert owner_of(layout, f"{generated.inside}/{HEADER}") is None


# --- rpm: registration with --justdb, ownership through the bindings --------------------------


def test_registered_rpm_owns_the_tree_through_the_bindings(
    generated: GeneratedTree, tmp_path: Path
) -> None:
    root = rpm_root(tmp_path / "root", generated)
    layout = Layout(root=root)
    assert [f.name for f in families(layout)] == ["rpm"]
    header = f"{generated.inside}/{HEADER}"
    assert owner_of(layout, header) is None
    assert register_tree(layout, root / generated.inside.lstrip("/")) == "rpm"

    name = rpm_package_name(generated.release)
    version = expected_version(generated.tree)
    assert owner_of(layout, header) == Owner("rpm", name, f"{version}-1")
    assert rpmq(root, "-qf", header).stdout.strip() == f"{name}-{version}-1.{os.uname().machine}"
    provider = rpmq(root, "-q", "--whatprovides", f"kernel-ikheaders-{generated.release}")
    assert provider.stdout.startswith(name)
    devel = rpmq(
        root, "-q", "--whatprovides", f"kernel-devel-uname-r = {generated.release}", ok=False
    )
    assert devel.returncode != 0

    unregister_release(layout, generated.release)
    assert rpmq(root, "-q", name, ok=False).returncode != 0
    assert not (root / header.lstrip("/")).exists()  # like dpkg -r: the package's files go


@ONE_KERNEL
def test_new_rpm_generation_replaces_the_record_and_keeps_the_old_files(
    generated: GeneratedTree, tmp_path: Path
) -> None:
    root = rpm_root(tmp_path / "root", generated)
    layout = Layout(root=root)
    tree = root / generated.inside.lstrip("/")
    register_tree(layout, tree)
    newer = next_generation(tree)
    register_tree(layout, newer)
    owner = owner_of(layout, "/" + (newer / HEADER).relative_to(root).as_posix())
    assert owner is not None and owner.version == f"{expected_version(newer)}-1"
    assert owner_of(layout, f"{generated.inside}/{HEADER}") is None
    assert (tree / HEADER).exists()  # --justdb: generation 1's files are left to the core's gc
    versions = rpmq(root, "-q", rpm_package_name(generated.release)).stdout.splitlines()
    assert len(versions) == 1


# --- the registration queue ---------------------------------------------------------------


@ONE_KERNEL
@pytest.mark.parametrize("lock", ["var/lib/dpkg/lock-frontend", "var/lib/dpkg/lock"])
def test_registration_under_dpkg_lock_is_queued_then_drained(
    generated: GeneratedTree, tmp_path: Path, lock: str
) -> None:
    root = scratch_root(tmp_path / "root", generated)
    layout = Layout(root=root)
    tree = root / generated.inside.lstrip("/")
    holder = _hold_lock(root / lock)
    try:
        with pytest.raises(QueuedError) as caught:
            register_tree(layout, tree)
        assert caught.value.exit_code is ExitCode.QUEUED
        assert int(caught.value.exit_code) == 12
        assert "queued" in str(caught.value) and str(holder.pid) in str(caught.value)
        assert queue_file(layout, generated.release).is_file()
        assert drain_queue(layout) == []  # still locked: nothing done, nothing lost
        assert len(pending(layout)) == 1
    finally:
        holder.communicate("")
    assert owner_of(layout, f"{generated.inside}/{HEADER}") is None
    assert drain_queue(layout) == [generated.release]
    assert not queue_file(layout, generated.release).exists()
    owner = owner_of(layout, f"{generated.inside}/{HEADER}")
    assert owner is not None and owner.package == deb_package_name(generated.release)
    assert dpkg(root, "-S", f"{generated.inside}/{HEADER}").returncode == 0


@ONE_KERNEL
def test_registration_under_rpmdb_lock_is_queued_then_drained(
    generated: GeneratedTree, tmp_path: Path
) -> None:
    root = rpm_root(tmp_path / "root", generated)
    layout = Layout(root=root)
    holder = _hold_lock(root / "var/lib/rpm/.rpm.lock")
    try:
        with pytest.raises(QueuedError):
            register_tree(layout, root / generated.inside.lstrip("/"))
    finally:
        holder.communicate("")
    assert drain_queue(layout) == [generated.release]
    owner = owner_of(layout, f"{generated.inside}/{HEADER}")
    assert owner is not None and owner.package == rpm_package_name(generated.release)


@ONE_KERNEL
def test_unregistration_under_lock_is_queued_too(generated: GeneratedTree, tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root", generated)
    layout = Layout(root=root)
    register_tree(layout, root / generated.inside.lstrip("/"))
    holder = _hold_lock(root / "var/lib/dpkg/lock-frontend")
    try:
        with pytest.raises(QueuedError):
            unregister_release(layout, generated.release)
    finally:
        holder.communicate("")
    assert drain_queue(layout) == [generated.release]
    assert owner_of(layout, f"{generated.inside}/{HEADER}") is None


@ONE_KERNEL
def test_queued_request_for_a_vanished_tree_is_dropped(
    generated: GeneratedTree, tmp_path: Path
) -> None:
    root = scratch_root(tmp_path / "root", generated)
    layout = Layout(root=root)
    tree = root / generated.inside.lstrip("/")
    holder = _hold_lock(root / "var/lib/dpkg/lock-frontend")
    try:
        with pytest.raises(QueuedError):
            register_tree(layout, tree)
    finally:
        holder.communicate("")
    shutil.rmtree(tree)  # the core collected it meanwhile
    assert drain_queue(layout) == []
    assert pending(layout) == []


@ONE_KERNEL
def test_tree_that_differs_from_its_manifest_is_not_packaged(
    generated: GeneratedTree, tmp_path: Path
) -> None:
    root = scratch_root(tmp_path / "root", generated)
    tree = root / generated.inside.lstrip("/")
    target = tree / HEADER
    data = target.read_bytes()
    target.unlink()  # break the hard link before changing the file
    target.write_bytes(data + b"/* changed */\n")
    with pytest.raises(PackagingError, match="differs from its manifest"):
        emit_package(Layout(root=root), tree, tmp_path / "out", "deb")


# --- what the command line calls ------------------------------------------------------------


@ONE_KERNEL
def test_sync_packaging_registers_the_roots_format_and_keeps_the_other(
    generated: GeneratedTree, tmp_path: Path
) -> None:
    root = scratch_root(tmp_path / "root", generated)
    link_build(root, generated)
    layout = Layout(root=root)
    config = Config(emit=(PackageFormat.DEB, PackageFormat.RPM), register=True)
    kept = emit_and_register(layout, config, generated.release, None)
    assert [p.suffix for p in kept] == [".rpm"]
    assert kept[0].parent == root / "var/lib/kheaders-pkg/packages" / generated.release
    owner = owner_of(layout, f"{generated.inside}/{HEADER}")
    assert owner is not None and owner.family == "dpkg" and owner.is_ours
    assert str(owner) == f"{owner.package} (dpkg, {expected_version(generated.tree)})"

    assert unregister_all(layout, generated.release) == ["dpkg"]
    assert not kept[0].parent.exists()
    assert owner_of(layout, f"{generated.inside}/{HEADER}") is None


@ONE_KERNEL
def test_register_needs_the_roots_format(generated: GeneratedTree, tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root", generated)
    link_build(root, generated)
    layout = Layout(root=root)
    with pytest.raises(PackagingError, match="no rpm database"):
        register_command(layout, Config(), generated.release, "rpm")
    with pytest.raises(PackagingError, match="does not include the root's package format"):
        emit_and_register(
            layout, Config(emit=(PackageFormat.RPM,), register=True), generated.release, None
        )
    message = register_command(layout, Config(), generated.release, None)
    assert message.startswith(f"registered {generated.release} ") and message.endswith("dpkg")


@ONE_KERNEL
def test_cli_emit_builds_the_current_tree(generated: GeneratedTree, tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root", generated)
    link_build(root, generated)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "kheaders_pkg", "--root", str(root), "emit"]
    argv += ["--kernel", generated.release, "--format", "deb", "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    built = Path(proc.stdout.strip())
    assert built.parent == out and built.name.startswith(deb_package_name(generated.release))
    assert tool(["dpkg-deb", "--field", built, "Package"]).returncode == 0


def test_no_tree_to_package_is_a_packaging_error(tmp_path: Path) -> None:
    layout = Layout(root=scratch_root(tmp_path / "root"))
    with pytest.raises(PackagingError, match="no generated tree") as caught:
        emit_command(layout, "6.1.192-kh", "deb", tmp_path / "out")
    assert caught.value.exit_code is ExitCode.PACKAGING
