"""An arm64 guest on this x86 host: qemu-system-aarch64 and an arm64 userland with Python.

The host's x86 root cannot run in an arm64 guest (`chroot /host /bin/true`: Exec format error),
so the guest's root is a small arm64 userland made here, once per test session: Debian's own
arm64 packages for Python 3.11 (the interpreter the host's checkout runs on), kmod and
busybox-static, fetched with apt-get into a private apt state (the host's sources, arm64 lists;
nothing on the host changes) and unpacked with `dpkg-deb -x`. No maintainer script runs and no
second stage is needed: measured at 20-40 s here, against 3.5-5.6 min for a `debootstrap
--foreign` root finished in the guest (corpus README). The guest shares that root read-only over
9p with the host's checkout bound at its own path (guest/init.sh), so the tool runs from this
checkout exactly as in the x86 guests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from . import vm

QEMU = "qemu-system-aarch64"
# -cpu max with implementation-defined pointer authentication: plain `max` spends most of its time
# emulating QARMA (corpus README: 2.5 s to poweroff instead of 8-12 s). One vCPU: TCG is faster.
MACHINE_ARGS = ("-M", "virt", "-cpu", "max,pauth-impdef=on", "-nic", "none")
CONSOLE = "ttyAMA0"  # the virt machine's PL011 UART

# Debian bookworm arm64 packages: the interpreter and the standard library's shared objects the
# tool imports (lzma, bz2, zlib, hashlib), jinja2 for the rendered hooks, kmod for modprobe (the
# tool loads kheaders itself), coreutils for what the scenarios measure as on x86 (GNU `date
# +%N`, `stat %.9Y`: busybox has neither), dash as /bin/sh as on Debian (busybox's sh would run
# its own applets before coreutils), busybox-static for everything else.
PACKAGES = (
    "libc6", "libgcc-s1", "libcrypt1", "zlib1g", "libexpat1", "liblzma5", "libbz2-1.0",
    "libffi8", "libssl3", "libuuid1", "libzstd1", "libsqlite3-0",
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "media-types",
    "python3-jinja2", "python3-markupsafe",
    "kmod", "libkmod2", "busybox-static",
    "coreutils", "libacl1", "libattr1", "libgmp10", "libselinux1", "libpcre2-8-0", "dash",
)  # fmt: skip
USERLAND_BUSYBOX = "bin/busybox"  # inside the userland, also the initramfs's busybox
MERGED = ("bin", "sbin", "lib")  # Debian 12 is merged-/usr: these are links into usr/

HOST_PYTHON = "/usr/bin/python3.11"  # the host's interpreter: the same 3.11 as the guest's

# Every step of the preparation, for the session summary: (what, seconds).
SETUP_TIMES: list[tuple[str, float]] = []


def _timed(what: str, argv: list[str], **kwargs: object) -> None:
    start = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
    SETUP_TIMES.append((what, time.monotonic() - start))


def _apt_options(state: Path) -> list[str]:
    """apt-get with its own lists, cache and an empty status: the host's sources for arm64."""
    return [
        f"-oDir::State={state}",
        f"-oDir::State::Lists={state}/lists",
        "-oDir::State::status=/dev/null",
        f"-oDir::Cache={state}/cache",
        "-oAPT::Architecture=arm64",
        "-oAPT::Architectures=arm64",
        "-oDebug::NoLocking=1",
        "-oAcquire::Languages=none",
        "-oAPT::Sandbox::User=root",
    ]


def download(dest: Path) -> list[Path]:
    """Debian's arm64 .debs of PACKAGES in `dest` (apt-get update + download, arm64 lists only)."""
    state = dest / "apt"
    (state / "lists/partial").mkdir(parents=True, exist_ok=True)
    (state / "cache/archives/partial").mkdir(parents=True, exist_ok=True)
    options = _apt_options(state)
    _timed("apt-get update (arm64 lists)", ["apt-get", "-q", *options, "update"])
    _timed(
        f"apt-get download ({len(PACKAGES)} arm64 packages)",
        ["apt-get", "-q", *options, "download", *PACKAGES],
        cwd=dest,
    )
    return sorted(dest.glob("*_arm64.deb")) + sorted(dest.glob("*_all.deb"))


def make_userland(work: Path) -> Path:
    """The arm64 root: every package unpacked, merged /usr, busybox applets where nothing else
    provides the command, and the mount points init.sh needs."""
    debs = download(work / "debs")
    unpacked = work / "unpacked"
    start = time.monotonic()
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", deb, unpacked], check=True)
    root = work / "root"
    (root / "usr").mkdir(parents=True)
    for top in MERGED:
        (root / "usr" / top).mkdir(exist_ok=True)
        (root / top).symlink_to(f"usr/{top}")
    for entry in unpacked.iterdir():
        target = root / "usr" / entry.name if entry.name in MERGED else root / entry.name
        shutil.copytree(entry, target, symlinks=True, dirs_exist_ok=True)
    assert os.readlink(root / "usr/bin/sh") == "dash"  # shipped by dash: busybox is not sh
    _busybox_applets(root)
    _compile_python(root)
    for path in ("proc", "sys", "dev", "run", "tmp", "root", "etc", "var/lib", "usr/src"):
        (root / path).mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    SETUP_TIMES.append(("dpkg-deb -x and merged /usr", time.monotonic() - start))
    return root


def _busybox_applets(root: Path) -> None:
    # The applet list of Debian's busybox-static is the same on every architecture: ask the
    # host's (an arm64 binary cannot run here). Real programs (kmod's modprobe) take precedence.
    applets = subprocess.run(
        [str(vm.BUSYBOX), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        path = root / applet  # bin/ and sbin/ are links into usr/
        if not os.path.lexists(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(f"/{USERLAND_BUSYBOX}")


def _compile_python(root: Path) -> None:
    # Debian byte-compiles its Python modules in the packages' postinst (py3compile), which
    # dpkg-deb -x does not run; the guest's root is read-only, so without .pyc files every start
    # would compile the standard library again under TCG. The host's Python is the same 3.11
    # (one bytecode magic for the whole series; bytecode does not depend on the architecture).
    for inside in ("usr/lib/python3.11", "usr/lib/python3/dist-packages"):
        subprocess.run(
            [HOST_PYTHON, "-m", "compileall", "-q", "-j0", "-d", f"/{inside}", root / inside],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip


def machine(userland: Path) -> vm.Machine:
    return vm.Machine(QEMU, MACHINE_ARGS, CONSOLE, userland / USERLAND_BUSYBOX, userland)
