"""Boot a corpus kernel the way a Debian machine boots: dracut's initramfs, then systemd as PID 1.

The root: a Debian 12 root made by `debootstrap --variant=minbase` from the Debian archive (with
systemd, python3, python3-jinja2, kmod), into a host directory in the pytest tmp dir, once per
session. The tool goes in as users install it: its own `.deb` (the session's, built by
`dpkg-buildpackage` from debian/, tests/packages.py), installed with `dpkg -i` in a chroot of that
root, so the unit, the condition, the dracut module and the verdict library are the packaged files
at their packaged paths, its bytecode is compiled by its postinst, and the postinst enables
kheaders-pkg.service. Its systemd is bookworm's 252, the host's own.

Why this root and not the host's (the other e2e guests run on the host's root over read-only 9p):
installing the .deb needs the root's own dpkg database and /etc, and the boots must persist what
the tool writes (the tree, the build link, its state) from one boot to the next; a root of its own,
shared read-write, gives both without touching the host. The root directory is shared read-write
over 9p (tag `root`) and mounted by dracut's own `virtfs` module (`root=virtfs:root`, module
95virtfs of the host's dracut-core 059); 9p and virtio are modules of the Debian kernel, taken from
the corpus's `modules/` into the root's /lib/modules, from where dracut installs them. Debian's
kernel is the one booted: the kh-* kernels are tinyconfig builds without cgroups, inotify or
fhandle, so systemd cannot run on them.

The initramfs is made by the host's `dracut` with its `base` (its own shell init and udev),
`virtfs` and our `kheaders-pkg` module as the .deb installed it into the root; dracut's init runs
our pre-pivot hook and switches to the root; the root's systemd then starts the packaged
kheaders-pkg.service, a stand-in dkms.service (guest/systemd/dkms.service) and finally
kh-e2e-report.service, which writes `systemctl show`, `journalctl -o json` and friends to
/var/lib/kh-e2e/report on the root and powers off. The host reads that directory after QEMU exits.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import CorpusKernel
from tests.test_hooks_dracut import dracut_base_with

from . import vm

GUEST_SYSTEMD = vm.GUEST_DIR / "systemd"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
ROOT_PACKAGES = ("systemd", "systemd-sysv", "python3", "python3-jinja2", "kmod")
# Where the .deb puts our dracut module and verdict library, inside the root.
PACKAGED_DRACUT_MODULE = "usr/lib/dracut/modules.d/90kheaders-pkg"
PACKAGED_HOOKLIB = "usr/lib/kheaders-pkg/kheaders-pkg-verdict.sh"
REPORT = "var/lib/kh-e2e/report"
ROOT_TAG = "root"
# Units the minbase root has but a headless guest without D-Bus or udev only waits on.
MASKED = (
    "serial-getty@.service",
    "getty@.service",
    "getty-static.service",
    "systemd-logind.service",
    "e2scrub_reap.service",
    "systemd-timesyncd.service",
)
# Host-side preparation steps of the session, and the boot time kheaders-pkg.service took in each
# boot, as systemd measured it: (what, seconds); the e2e conftest prints them.
SETUP_TIMES: list[tuple[str, float]] = []
UNIT_TIMES: list[tuple[str, float]] = []


class SystemdGuestError(Exception):
    """The root could not be made, or a boot did not reach its report; the message says why."""


def children_cpu() -> float:
    """CPU seconds of the finished child processes: on a busy host a TCG guest's wall time says
    more about the neighbours than about the guest, its CPU time does not."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def timed(what: str) -> Iterator[None]:
    start, cpu = time.monotonic(), children_cpu()
    yield
    SETUP_TIMES.append((f"{what} (cpu {children_cpu() - cpu:.0f} s)", time.monotonic() - start))


def run(
    command: list[str], what: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if done.returncode != 0:
        raise SystemdGuestError(
            f"{what}: {command[0]} exited {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


@dataclass(frozen=True)
class SystemdRoot:
    """A Debian root with the tool's .deb installed, booted over 9p; persists across boots."""

    path: Path
    kernel: CorpusKernel

    @property
    def modules(self) -> Path:
        return self.path / "usr/lib/modules" / self.kernel.release

    @property
    def report(self) -> Path:
        return self.path / REPORT

    def host_path(self, guest_path: str) -> Path:
        return self.path / guest_path.lstrip("/")

    def build_tree(self) -> Path | None:
        """The tree behind the root's /lib/modules/$KVER/build, or None."""
        link = self.modules / "build"
        if not link.is_symlink():
            return None
        target = os.readlink(link)
        tree = self.host_path(target) if target.startswith("/") else link.parent / target
        return tree if tree.is_dir() else None

    def chroot(self, *command: str) -> str:
        return run(["chroot", str(self.path), *command], f"chroot {' '.join(command)}")


def debootstrap(dest: Path) -> None:
    with timed("debootstrap"):
        run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(ROOT_PACKAGES)}",
             SUITE, str(dest), DEBIAN_MIRROR],
            "debootstrap",
        )  # fmt: skip


def make_root(dest: Path, deb: Path, kernel: CorpusKernel) -> SystemdRoot:
    """debootstrap, install the .deb, the kernel's modules and the guest's units."""
    debootstrap(dest)
    root = SystemdRoot(dest, kernel)
    with timed("dpkg -i, modules, units"):
        shutil.copyfile(deb, dest / "tmp" / deb.name)
        root.chroot("dpkg", "-i", f"/tmp/{deb.name}")
        (dest / "tmp" / deb.name).unlink()
        install_modules(root)
        install_guest_units(root)
    return root


def install_modules(root: SystemdRoot) -> None:
    """The corpus's modules under the root's /lib/modules/$KVER, where modprobe and dracut look;
    kheaders.ko and configs.ko under kernel/kernel/ as Debian's kernel/Makefile would put them."""
    for ko in sorted(root.kernel.modules.glob("*.ko")):
        sub = "kernel/kernel" if ko.name in ("kheaders.ko", "configs.ko") else "kernel/extra"
        (root.modules / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ko, root.modules / sub / ko.name)
    run(["depmod", "-b", str(root.path), root.kernel.release], "depmod")


def install_guest_units(root: SystemdRoot) -> None:
    system = root.path / "etc/systemd/system"
    wants = system / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ("dkms.service", "kh-e2e-report.service"):
        shutil.copyfile(GUEST_SYSTEMD / unit, system / unit)
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    script = root.path / "usr/local/lib/kh-e2e/report.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GUEST_SYSTEMD / "report.sh", script)
    script.chmod(0o755)
    for unit in MASKED:
        (system / unit).unlink(missing_ok=True)
        (system / unit).symlink_to("/dev/null")
    journald = root.path / "etc/systemd/journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    # The journal lives in /run: each boot's report reads it before poweroff.
    (journald / "kh-e2e.conf").write_text("[Journal]\nStorage=volatile\n")
    (root.path / "etc/hostname").write_text("kh-e2e\n")
    # dracut's virtfs module mounts the root with these options. Only this guest changes the
    # root while it runs (the host between boots), so cache=loose may keep lookups, attributes and
    # pages instead of a 9p round trip for each of Python's stat and open calls.
    (root.path / "etc/fstab").write_text(
        f"{ROOT_TAG} / 9p rw,trans=virtio,version=9p2000.L,msize=512000,cache=loose 0 0\n"
    )


def dracut_base(work: Path, root: SystemdRoot) -> Path:
    """A dracutbasedir with the host's dracut and modules, plus our module as the .deb put it in
    the root (dracut 059 takes dracutbasedir from the environment)."""
    return dracut_base_with(work / "dracut", root.path / PACKAGED_DRACUT_MODULE)


def build_initramfs(root: SystemdRoot, work: Path) -> Path:
    """The host's dracut: base (its shell init), virtfs (the 9p root) and kheaders-pkg."""
    work.mkdir(parents=True, exist_ok=True)
    confdir = work / "conf.d"
    confdir.mkdir()
    image = work / f"initrd.img-{root.kernel.release}"
    env = {
        **os.environ,
        "dracutbasedir": str(dracut_base(work, root)),
        # module-setup.sh installs the library from here to its packaged path in the image.
        "KHEADERS_PKG_HOOKLIB": str(root.path / PACKAGED_HOOKLIB),
        "TMPDIR": str(work),
    }
    with timed("dracut"):
        run(
            ["dracut", "--no-hostonly", "--kver", root.kernel.release,
             "--kmoddir", str(root.modules),
             "--modules", "base virtfs kheaders-pkg",
             "--conf", "/dev/null", "--confdir", str(confdir),
             "--no-compress", "--force", str(image)],
            "dracut",
            env,
        )  # fmt: skip
    return image


@dataclass(frozen=True)
class Report:
    """What kh-e2e-report.service wrote about one boot."""

    path: Path
    seconds: float
    log: str

    def text(self, name: str) -> str:
        return (self.path / name).read_text()

    def show(self, unit: str) -> dict[str, str]:
        """`systemctl show UNIT` as a dict."""
        props: dict[str, str] = {}
        for line in self.text(f"{unit}.show").splitlines():
            key, _, value = line.partition("=")
            props[key] = value
        return props

    def journal(self) -> list[dict[str, str]]:
        """The boot's journal entries of kheaders-pkg.service (`journalctl -o json -u`)."""
        entries = []
        for line in self.text("kheaders-pkg.journal.json").splitlines():
            entry = json.loads(line)
            # journalctl gives a field that is not valid UTF-8 as a list of bytes
            entries.append({k: v for k, v in entry.items() if isinstance(v, str)})
        return entries

    def verdict(self) -> dict[str, str]:
        """/run/kheaders-pkg/initramfs-verdict as the dracut hook left it."""
        lines = self.text("initramfs-verdict").splitlines()
        return dict(line.partition("=")[::2] for line in lines)


def qemu_command(root: SystemdRoot, initramfs: Path, serial: Path) -> list[str]:
    return [
        vm.QEMU,
        "-accel", "tcg",
        "-m", "1024",
        "-smp", "1",
        "-nographic", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{serial}",
        "-kernel", str(root.kernel.vmlinuz),
        "-initrd", str(initramfs),
        "-append", f"console=ttyS0 panic=-1 loglevel=4 root=virtfs:{ROOT_TAG} rw",
        "-virtfs", f"local,path={root.path},mount_tag={ROOT_TAG},security_model=passthrough",
    ]  # fmt: skip


def boot(root: SystemdRoot, initramfs: Path, name: str, timeout: float = 600) -> Report:
    """Boot `root` until kh-e2e-report.service powers it off; the report it wrote."""
    if root.report.exists():
        shutil.rmtree(root.report)
    serial = root.path.parent / f"serial-{name}.log"
    start, cpu = time.monotonic(), children_cpu()
    with subprocess.Popen(
        qemu_command(root, initramfs, serial),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as proc:  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    seconds = time.monotonic() - start
    cpu = children_cpu() - cpu
    what = f"dracut+systemd {name} (qemu cpu {cpu:.0f} s)"
    vm.BOOT_TIMES.append((root.kernel.name, what, seconds))
    log = serial.read_text(errors="replace") if serial.exists() else ""
    if not (root.report / "done").exists():
        raise SystemdGuestError(
            f"{name}: no report after {seconds:.0f} s (qemu exit {proc.returncode}, "
            f"{output.decode(errors='replace').strip()!r}); serial log tail:\n{vm.tail(log, 60)}"
        )
    kept = root.path.parent / f"report-{name}"
    if kept.exists():
        shutil.rmtree(kept)
    shutil.copytree(root.report, kept)
    return Report(kept, seconds, log)
