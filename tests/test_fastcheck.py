"""The boot-time fast path of `check` agrees with the full `check`, or stays out of the way.

For every state, `fast_check(argv)` must either return None (the full CLI then decides) or give
the full CLI's exit code and the first word of its line. It must answer the common case: our
fresh tree, including through a root whose `lib` or `usr/src` are absolute symlinks.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from kheaders_pkg import condition, fastcheck, layout, stamp
from kheaders_pkg.cli import main as cli_main
from kheaders_pkg.errors import ExitCode
from kheaders_pkg.fastcheck import fast_check
from kheaders_pkg.kernel.btf import VmlinuxH
from tests.conftest import REPO, copy_sysroot, corpus_kernel

KH_A = corpus_kernel("kh-6.1.192-kh-a")
KH_B = corpus_kernel("kh-6.1.192-kh-b")
RELEASE = KH_A.release


@pytest.fixture(scope="module")
def synced_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One root made by the real `sync` from kh-a; each state starts from a hard-linked copy."""
    root = tmp_path_factory.mktemp("fastcheck") / "root"
    root.mkdir()
    code = cli_main(["--root", str(root), "--kernel-fs", str(KH_A.sysroot), "-q", "sync"])
    assert code == 0
    return root


def clone(src: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-al", str(src), str(dest)], check=True)
    return dest


def generation(root: Path) -> Path:
    return root / os.readlink(root / "lib/modules" / RELEASE / "build").lstrip("/")


def replace_file(path: Path, data: bytes) -> None:
    """Write without touching the hard-linked original."""
    path.unlink()
    path.write_bytes(data)


def edit_stamp(root: Path, **changes: object) -> None:
    p = generation(root) / layout.STAMP_NAME
    data = json.loads(p.read_text())
    data.update(changes)
    replace_file(p, json.dumps(data, indent=1, sort_keys=True).encode())


def relink(root: Path, name: str, target: str) -> None:
    link = root / "lib/modules" / RELEASE / name
    link.unlink()
    os.symlink(target, link)


@dataclass(frozen=True)
class State:
    """A root, a kernel-fs and the argv to ask about them."""

    root: Path | str
    kernel_fs: Path
    extra: tuple[str, ...] = ()  # options before `check`
    after: tuple[str, ...] = ()  # options after `check`

    @property
    def argv(self) -> list[str]:
        return [
            "--root",
            str(self.root),
            "--kernel-fs",
            str(self.kernel_fs),
            *self.extra,
            "check",
            *self.after,
        ]


Setup = Callable[[Path, Path], State]


def _fresh(root: Path, work: Path) -> State:
    return State(root, KH_A.sysroot)


def _condition(root: Path, work: Path) -> State:
    return State(root, KH_A.sysroot, after=("--condition",))


def _quiet(root: Path, work: Path) -> State:
    return State(root, KH_A.sysroot, extra=("-q",))


def _stale_build_id(root: Path, work: Path) -> State:
    return State(root, KH_B.sysroot)  # same release and config, another build and archive


def _stale_config(root: Path, work: Path) -> State:
    kfs = copy_sysroot(KH_A, work / "kfs")
    config = gzip.decompress((kfs / "proc/config.gz").read_bytes()) + b"CONFIG_BENCH_EXTRA=y\n"
    (kfs / "proc/config.gz").write_bytes(gzip.compress(config))
    return State(root, kfs)


def _stale_archive_size(root: Path, work: Path) -> State:
    kfs = copy_sysroot(KH_A, work / "kfs")
    with open(kfs / "sys/kernel/kheaders.tar.xz", "ab") as f:
        f.write(b"\0")
    return State(root, kfs)


def _stale_uts_version(root: Path, work: Path) -> State:
    kfs = copy_sysroot(KH_A, work / "kfs")
    (kfs / "proc/sys/kernel/version").write_text("#2 SMP another build\n")
    return State(root, kfs)


def _no_kernel_config(root: Path, work: Path) -> State:
    kfs = copy_sysroot(KH_A, work / "kfs")
    (kfs / "proc/config.gz").unlink()
    return State(root, kfs)


def _bad_notes(root: Path, work: Path) -> State:
    kfs = copy_sysroot(KH_A, work / "kfs")
    notes = kfs / "sys/kernel/notes"
    notes.write_bytes(notes.read_bytes() + b"\x05\0\0\0")  # a truncated note header
    return State(root, kfs)


def _source_elsewhere_ours(root: Path, work: Path) -> State:
    gen = generation(root)
    clone(gen, gen.with_name("gen-0099-000000000000"))
    relink(
        root, "source", str(Path("/") / gen.with_name("gen-0099-000000000000").relative_to(root))
    )
    return State(root, KH_A.sysroot)


def _source_foreign(root: Path, work: Path) -> State:
    foreign = root / "usr/src/linux-headers-x"
    (foreign / "include").mkdir(parents=True)
    (foreign / ".config").write_text("CONFIG_X=y\n")
    relink(root, "source", "/usr/src/linux-headers-x")
    return State(root, KH_A.sysroot)


def _build_foreign(root: Path, work: Path) -> State:
    foreign = root / "usr/src/linux-headers-x"
    shutil.copytree(generation(root), foreign)  # even with our stamp: not in our trees dir
    relink(root, "build", "/usr/src/linux-headers-x")
    relink(root, "source", "/usr/src/linux-headers-x")
    return State(root, KH_A.sysroot)


def _stamp_corrupt(root: Path, work: Path) -> State:
    replace_file(generation(root) / layout.STAMP_NAME, b'{"tool": "kheaders-pkg",')
    return State(root, KH_A.sysroot)


def _stamp_missing_key(root: Path, work: Path) -> State:
    p = generation(root) / layout.STAMP_NAME
    data = json.loads(p.read_text())
    del data["manifest_sha256"]
    replace_file(p, json.dumps(data).encode())
    return State(root, KH_A.sysroot)


def _stamp_bool_generation(root: Path, work: Path) -> State:
    edit_stamp(root, generation=True)
    return State(root, KH_A.sysroot)


def _stamp_newer_format(root: Path, work: Path) -> State:
    edit_stamp(root, format=2)
    return State(root, KH_A.sysroot)


def _stamp_before_vmlinux_h(root: Path, work: Path) -> State:
    p = generation(root) / layout.STAMP_NAME
    data = json.loads(p.read_text())
    del data["btf_sha256"], data["vmlinux_h"]
    replace_file(p, json.dumps(data, indent=1, sort_keys=True).encode())
    return State(root, KH_A.sysroot)


def _stamp_unknown_vmlinux_h(root: Path, work: Path) -> State:
    edit_stamp(root, vmlinux_h="maybe")
    return State(root, KH_A.sysroot)


def _stamp_distro_config(root: Path, work: Path) -> State:
    edit_stamp(root, config_source="boot-config", config_sha256="0" * 64)
    return State(root, KH_A.sysroot)


def _stamp_gone(root: Path, work: Path) -> State:
    (generation(root) / layout.STAMP_NAME).unlink()
    return State(root, KH_A.sysroot)


def _missing(root: Path, work: Path) -> State:
    (root / "lib/modules" / RELEASE / "build").unlink()
    (root / "lib/modules" / RELEASE / "source").unlink()
    return State(root, KH_A.sysroot)


def _dangling(root: Path, work: Path) -> State:
    relink(root, "build", "/usr/src/kheaders-pkg/nowhere")
    return State(root, KH_A.sysroot)


def _relative_links(root: Path, work: Path) -> State:
    inside = "../../.." + str(Path("/") / generation(root).relative_to(root))
    relink(root, "build", inside)
    relink(root, "source", inside)
    return State(root, KH_A.sysroot)


def _absolute_lib_link(root: Path, work: Path) -> State:
    """Merged /usr with an absolute link, like `lib -> /usr/lib`: followed inside the root."""
    (root / "usr/lib").mkdir(parents=True, exist_ok=True)
    shutil.move(root / "lib/modules", root / "usr/lib/modules")
    (root / "lib").rmdir()
    os.symlink("/usr/lib", root / "lib")
    return State(root, KH_A.sysroot)


def _absolute_trees_link(root: Path, work: Path) -> State:
    """usr/src is an absolute link to /srv/src inside the root; the links still say /usr/src."""
    (root / "srv").mkdir()
    shutil.move(root / "usr/src", root / "srv/src")
    os.symlink("/srv/src", root / "usr/src")
    return State(root, KH_A.sysroot)


def _link_loop(root: Path, work: Path) -> State:
    relink(root, "build", "/loop/a")
    (root / "loop").mkdir()
    os.symlink("/loop/b", root / "loop/a")
    os.symlink("/loop/a", root / "loop/b")
    return State(root, KH_A.sysroot)


def _config_file(root: Path, work: Path) -> State:
    (root / "etc").mkdir()
    (root / "etc/kheaders-pkg.toml").write_text("keep_generations = 2\n")
    return State(root, KH_A.sysroot)


def _verbose(root: Path, work: Path) -> State:
    return State(root, KH_A.sysroot, extra=("-v",))


def _kernel_option(root: Path, work: Path) -> State:
    return State(root, KH_A.sysroot, after=("--kernel", RELEASE))


def _root_with_dots(root: Path, work: Path) -> State:
    return State(f"{root}/./", KH_A.sysroot)


# name: (setup, whether the fast path must answer it)
STATES: dict[str, tuple[Setup, bool]] = {
    "fresh": (_fresh, True),
    "fresh --condition": (_condition, True),
    "fresh -q": (_quiet, True),
    "fresh, relative links": (_relative_links, True),
    "fresh, lib -> /usr/lib": (_absolute_lib_link, True),
    "fresh, usr/src -> /srv/src": (_absolute_trees_link, True),
    "fresh, root spelled with ./": (_root_with_dots, True),
    "stale build id": (_stale_build_id, False),
    "stale config": (_stale_config, False),
    "stale archive size": (_stale_archive_size, False),
    "stale uts version": (_stale_uts_version, False),
    "no kernel config": (_no_kernel_config, False),
    "malformed notes": (_bad_notes, False),
    "source at another tree of ours": (_source_elsewhere_ours, False),
    "source foreign": (_source_foreign, False),
    "build foreign": (_build_foreign, False),
    "stamp corrupt": (_stamp_corrupt, False),
    "stamp missing a key": (_stamp_missing_key, False),
    "stamp generation is a bool": (_stamp_bool_generation, False),
    "stamp newer format": (_stamp_newer_format, False),
    "fresh, stamp made before vmlinux.h": (_stamp_before_vmlinux_h, True),
    "stamp unknown vmlinux.h state": (_stamp_unknown_vmlinux_h, False),
    "stamp from a distro config copy": (_stamp_distro_config, False),
    "stamp gone": (_stamp_gone, False),
    "missing": (_missing, False),
    "dangling build": (_dangling, False),
    "symlink loop": (_link_loop, False),
    "config file present": (_config_file, False),
    "-v": (_verbose, False),
    "--kernel": (_kernel_option, False),
}


# --- publish = sysext: the same table's questions for an extension -----------------------------


@pytest.fixture(scope="module")
def synced_sysext_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image-based root (it says /run/ostree-booted, has systemd-sysext and os-release) made
    by the real `sync`: the generation under /var, the links in an extension. Not the running
    system, so the extension is judged "not merged: --root is not the running system"
    (tests/test_sysext.py asks the installed tool about a merged one on the live root)."""
    root = tmp_path_factory.mktemp("fastcheck-sysext") / "root"
    for d in ("run", "etc", "usr/lib", "usr/bin", "lib/modules"):
        (root / d).mkdir(parents=True)
    (root / "run/ostree-booted").touch()
    (root / "usr/lib/os-release").write_text('ID=debian\nVERSION_ID="12"\nNAME="Debian"\n')
    os.symlink("../usr/lib/os-release", root / "etc/os-release")
    shutil.copy2(shutil.which("systemd-sysext") or "/usr/bin/systemd-sysext", root / "usr/bin")
    code = cli_main(["--root", str(root), "--kernel-fs", str(KH_A.sysroot), "-q", "sync"])
    assert code == 0
    assert (extension(root) / "usr/lib/modules" / RELEASE / "build").is_symlink()
    return root


def extension(root: Path) -> Path:
    return root / layout.EXTENSIONS_DIR.lstrip("/") / f"{layout.EXTENSION_PREFIX}{RELEASE}"


def _ext_release_file(root: Path) -> Path:
    name = f"{layout.EXTENSION_PREFIX}{RELEASE}"
    return extension(root) / "usr/lib/extension-release.d" / f"extension-release.{name}"


def _sysext_os_updated(root: Path, work: Path) -> State:
    replace_file(root / "usr/lib/os-release", b"ID=debian\nVERSION_ID=13\n")
    return State(root, KH_A.sysroot)


def _sysext_label_any(root: Path, work: Path) -> State:
    replace_file(_ext_release_file(root), b"ID=_any\n")
    replace_file(root / "usr/lib/os-release", b"ID=debian\nVERSION_ID=13\n")
    return State(root, KH_A.sysroot)


def _sysext_label_other_arch(root: Path, work: Path) -> State:
    replace_file(_ext_release_file(root), b"ID=debian\nVERSION_ID=12\nARCHITECTURE=s390x\n")
    return State(root, KH_A.sysroot)


def _sysext_label_gone(root: Path, work: Path) -> State:
    _ext_release_file(root).unlink()
    return State(root, KH_A.sysroot)


def _sysext_extension_gone(root: Path, work: Path) -> State:
    shutil.rmtree(extension(root))
    return State(root, KH_A.sysroot)


def _sysext_extension_symlink(root: Path, work: Path) -> State:
    ext = extension(root)
    ext.rename(ext.with_name("elsewhere"))
    os.symlink("elsewhere", ext)
    return State(root, KH_A.sysroot)


def _sysext_no_binary(root: Path, work: Path) -> State:
    (root / "usr/bin/systemd-sysext").unlink()  # publish = var: nothing at /lib/modules
    return State(root, KH_A.sysroot)


def _sysext_links_in_lib_modules(root: Path, work: Path) -> State:
    """A tree published in /lib/modules before /usr became read-only: not what sysext judges."""
    target = os.readlink(extension(root) / "usr/lib/modules" / RELEASE / "build")
    shutil.rmtree(extension(root))
    (root / "lib/modules" / RELEASE).mkdir(parents=True, exist_ok=True)
    for name in ("build", "source"):
        os.symlink(target, root / "lib/modules" / RELEASE / name)
    return State(root, KH_A.sysroot)


SYSEXT_STATES: dict[str, tuple[Setup, bool]] = {
    "fresh, sysext": (_fresh, True),
    "fresh, sysext --condition": (_condition, True),
    "fresh, sysext -q": (_quiet, True),
    "fresh, sysext labelled ID=_any after an OS update": (_sysext_label_any, True),
    "sysext stale build id": (_stale_build_id, False),
    "sysext label after an OS update": (_sysext_os_updated, False),
    "sysext label for another architecture": (_sysext_label_other_arch, False),
    "sysext label gone": (_sysext_label_gone, False),
    "sysext extension gone": (_sysext_extension_gone, False),
    "sysext extension is a symlink": (_sysext_extension_symlink, False),
    "sysext without systemd-sysext (publish = var)": (_sysext_no_binary, False),
    "sysext root with links in /lib/modules": (_sysext_links_in_lib_modules, False),
}


def answer(
    capsys: pytest.CaptureFixture[str], ask: Callable[[list[str]], int | None], argv: list[str]
) -> tuple[int | None, str]:
    capsys.readouterr()
    code = ask(argv)
    out = capsys.readouterr().out
    return code, (out.split() or [""])[0]


@pytest.mark.parametrize("name", list(STATES))
def test_fast_check_agrees_with_full_check(
    name: str, synced_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup, must_answer = STATES[name]
    agrees(name, setup(clone(synced_root, tmp_path / "root"), tmp_path), must_answer, capsys)


@pytest.mark.integration
@pytest.mark.parametrize("name", list(SYSEXT_STATES))
def test_fast_check_agrees_with_full_check_on_an_extension(
    name: str, synced_sysext_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup, must_answer = SYSEXT_STATES[name]
    state = setup(clone(synced_sysext_root, tmp_path / "root"), tmp_path)
    agrees(name, state, must_answer, capsys)
    if must_answer and "-q" not in state.extra:
        capsys.readouterr()
        fast_check(state.argv)
        assert "systemd-sysext extension" in capsys.readouterr().out


def agrees(name: str, state: State, must_answer: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """The fast path answers as the full `check` does (exit code and first word), or defers."""
    fast_code, fast_word = answer(capsys, fast_check, state.argv)
    full_code, full_word = answer(capsys, cli_main, state.argv)
    if must_answer:
        assert fast_code is not None, f"{name}: the fast path must answer the common case"
    if fast_code is not None:
        assert (fast_code, fast_word) == (full_code, full_word)
    if name.startswith("fresh"):
        expected = 1 if "--condition" in state.after else int(ExitCode.OK)
        assert full_code == expected
        assert full_word == ("" if "-q" in state.extra else "fresh:")
    else:
        assert fast_code is None


def test_fast_check_declines_unknown_command_lines() -> None:
    for argv in (
        ["check", "--help"],
        ["--root", "/", "sync"],
        ["--ro", "/", "check"],
        ["--root", "", "check"],
        ["--root", "a/../b", "check"],
        ["--root", "/x", "--root", "/y", "check"],
        ["--config", "/etc/x.toml", "check"],
        ["check", "--condition", "--condition"],
    ):
        assert fast_check(argv) is None, argv


def test_copied_facts_match_their_source_of_truth() -> None:
    assert fastcheck.STAMP_NAME == layout.STAMP_NAME
    assert fastcheck.DEFAULT_TREES_DIR == layout.DEFAULT_TREES_DIR
    assert fastcheck.MODULES_DIR == layout.MODULES_DIR
    assert fastcheck.CONFIG_PATH == layout.CONFIG_PATH
    assert fastcheck.MAX_SYMLINKS == layout.MAX_SYMLINKS
    assert fastcheck.STAMP_FORMAT == stamp.STAMP_FORMAT
    assert fastcheck.TOOL == stamp.TOOL
    from kheaders_pkg.kernel import identity, kconfig, notes

    assert fastcheck.SMALL == identity._SMALL
    assert fastcheck.MAX_CONFIG_BYTES == kconfig.MAX_CONFIG_BYTES
    assert fastcheck.NT_GNU_BUILD_ID == notes.NT_GNU_BUILD_ID
    assert set(fastcheck.STAMP_INT) == stamp._INT
    assert set(fastcheck.STAMP_OPTIONAL_STR) == stamp._OPTIONAL_STR
    assert set(fastcheck.STAMP_ADDED) == stamp._ADDED
    every = {
        *fastcheck.STAMP_INT,
        *fastcheck.STAMP_OPTIONAL_STR,
        *fastcheck.STAMP_STR,
        *fastcheck.STAMP_ADDED,
    }
    assert every == {f.name for f in fields(stamp.Stamp)}
    assert fastcheck.CONFIG_SOURCES == tuple(str(s) for s in stamp.ConfigSource)
    assert fastcheck.BUILD_CONFIG_SOURCES == tuple(
        str(s) for s in stamp.ConfigSource if s.is_build_config
    )
    assert fastcheck.ARCHIVE_SOURCES == tuple(str(s) for s in stamp.ArchiveSource)
    assert fastcheck.VMLINUX_H_STATES == tuple(str(s) for s in VmlinuxH)
    assert fastcheck.EXIT_FRESH == int(ExitCode.OK)
    assert fastcheck.CONDITION_SKIP == condition.SKIP == condition.condition_exit(ExitCode.OK)
    from kheaders_pkg import sysext

    assert fastcheck.VAR_TREES_DIR == layout.VAR_TREES_DIR
    assert fastcheck.VAR_TREES_DIR == sysext.trees_dir_for(
        layout.PublishMode.SYSEXT, layout.DEFAULT_TREES_DIR
    )
    assert fastcheck.EXTENSIONS_DIR == layout.EXTENSIONS_DIR
    assert fastcheck.EXTENSION_PREFIX == layout.EXTENSION_PREFIX
    assert fastcheck.RELEASE_DIR == sysext.RELEASE_DIR
    assert fastcheck.OSTREE_BOOTED == sysext.OSTREE_BOOTED
    assert fastcheck.SYSEXT_PATHS == sysext.SYSEXT_PATHS
    assert fastcheck.OS_RELEASE_PATHS == sysext.OS_RELEASE_PATHS
    assert fastcheck.SYSTEMD_ARCH == sysext._SYSTEMD_ARCH


@pytest.mark.parametrize(
    "text",
    [
        'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian \\"x\\" $y"\n# c\nbad\n',
        "ID='fedora'\nSYSEXT_LEVEL=1.0\nVERSION_ID=39\n",
        "VERSION_ID=12\nARCHITECTURE=arm64\n",
        "ID=_any\n",
        "ID=debian\n",
    ],
)
def test_fast_label_rules_are_sysexts(text: str) -> None:
    """The fast path's os-release parser and label rule are sysext.py's, over labels and hosts."""
    from kheaders_pkg import sysext

    parsed = fastcheck._os_release(text.encode())
    assert parsed == sysext.parse_os_release(text)
    for host_text in (
        'ID=debian\nVERSION_ID="12"\n',
        "ID=fedora\nVERSION_ID=39\nSYSEXT_LEVEL=1.0\n",
    ):
        host = sysext.parse_os_release(host_text)
        for arch in ("x86-64", "arm64", None):
            full = sysext.label_problem(parsed, sysext.OsRelease.from_fields(host), arch) is None
            assert fastcheck._label_ok(parsed, host, arch) == full, (text, host_text, arch)


def test_fast_path_imports_nothing_heavy(synced_root: Path) -> None:
    """The point of the fast path: none of the full CLI's imports on the way to "fresh"."""
    code = (
        "import sys; before = set(sys.modules); from kheaders_pkg.entry import main; "
        f"sys.argv = ['kheaders-pkg', '--root', {str(synced_root)!r}, "
        f"'--kernel-fs', {str(KH_A.sysroot)!r}, '-q', 'check']; rc = main(); "
        "print(rc, ' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "0"
    heavy = {"argparse", "dataclasses", "enum", "pathlib", "logging", "json", "re", "hashlib"}
    assert not heavy & set(out[1:]), out[1:]
