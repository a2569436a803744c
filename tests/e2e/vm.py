"""Boot a corpus kernel under QEMU (TCG) on the host's own root, run a scenario, collect results.

The guest's root is the host's `/`, shared read-only over 9p, made writable by an overlay (kernels
with CONFIG_OVERLAY_FS) and, at the paths the tool writes, by a host scratch directory (the "state")
shared read-write over a second 9p tag. The state outlives the VM, so a second boot, of the same
kernel or of another, sees what the first one left. `guest/init.sh` is PID 1; the scenario (POSIX
sh, `scenarios/NAME.sh`) runs in a chroot of that root and prints `@@KH name=value` lines (or
`@@KH64 name=<base64>`) on the serial console, which `boot()` returns as a dict.
"""

from __future__ import annotations

import base64
import gzip
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kheaders_pkg.hooks import CONDITION, HookSystem, render_hooks

HERE = Path(__file__).resolve().parent
GUEST_DIR = HERE / "guest"
SCENARIOS = HERE / "scenarios"
CHECKOUT = HERE.parent.parent
SITE_PACKAGES = CHECKOUT / ".venv/lib/python3.11/site-packages"

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: no shared libraries to copy
QEMU = "qemu-system-x86_64"
DEPMOD = "/usr/sbin/depmod"

# Every boot of this session: (kernel, scenario, seconds); the e2e conftest prints them.
BOOT_TIMES: list[tuple[str, str, float]] = []

MARK = "@@KH "
MARK64 = "@@KH64 "
TIMEOUT = 120.0

# The tool as the guest runs it: the console script's entry point (kheaders_pkg.entry, so the
# fast path of `check` is the one exercised) on the host's real interpreter, from this checkout.
# The systemd unit rendered for the guest names this wrapper as its executable.
GUEST_TOOL = "/run/kh-e2e/kheaders-pkg"
GUEST_HOOKS = "/run/kh-e2e/hooks"
# The rendered systemd files the boot scenarios run (by their command lines, as systemd would).
UNIT_FILES = ("kheaders-pkg.service", os.path.basename(CONDITION))

# Where the tool writes, as real paths inside the root (Debian's /lib is a symlink to usr/lib):
# these are bound from the state share, so they persist across boots.
WRITABLE = (
    os.path.realpath("/lib/modules").lstrip("/"),
    "usr/src",
    "var/lib/kheaders-pkg",
    "var/lib/extensions",  # systemd-sysext extensions (test_sysext_boot.py)
)


def precompile() -> None:
    """Byte-compile the tool and its site-packages on the host, before any guest starts.

    The guest's root is read-only and its Python never writes bytecode: without .pyc files next
    to the sources, every start in the guest compiles each imported module again, under TCG.
    compileall only rewrites what is missing or out of date.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j0", str(CHECKOUT / "kheaders_pkg"),
         str(SITE_PACKAGES)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


class VMError(Exception):
    """The guest did not boot, or the scenario did not finish; the message ends in the log tail."""


@dataclass(frozen=True)
class Machine:
    """The emulated platform: QEMU binary and machine options, serial console, the busybox the
    initramfs runs, and the guest's root when it cannot be the host's (another architecture:
    a userland shared as 9p tag `userland`, with the checkout bound in; arm64_guest.py)."""

    qemu: str
    args: tuple[str, ...]
    console: str
    busybox: Path
    userland: Path | None = None


X86_64 = Machine(QEMU, (), "ttyS0", BUSYBOX)


@dataclass(frozen=True)
class GuestKernel:
    """A bootable kernel and the modules its initramfs loads, in order."""

    name: str
    vmlinuz: Path
    release: str
    modules: tuple[Path, ...]
    machine: Machine = X86_64

    @classmethod
    def from_corpus(
        cls, name: str, path: Path, release: str, vmlinuz: Path, withhold: Iterable[str] = ()
    ) -> GuestKernel:
        """The corpus kernel at `path`; `withhold` names modules the tool must load itself."""
        withheld = set(withhold)
        order = path / "modules" / "load-order"
        names = order.read_text().split() if order.is_file() else []
        modules = tuple(path / "modules" / n for n in names if n not in withheld)
        return cls(name, vmlinuz, release, modules)


@dataclass(frozen=True)
class BootResult:
    values: dict[str, str]
    seconds: float
    log: str

    def __getitem__(self, name: str) -> str:
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(f"guest reported no {name!r}; log tail:\n{tail(self.log)}") from None

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, default)

    def rc(self, name: str) -> int:
        """Exit code of a command the scenario ran with `record NAME ...`."""
        return int(self[f"{name}.rc"])


@dataclass
class GuestState:
    """The host scratch directory that backs the guest's writable, persistent paths."""

    path: Path
    boots: list[BootResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        for rel in (*WRITABLE, "e2e"):
            (self.path / rel).mkdir(parents=True, exist_ok=True)
        self._install_tool()
        # Same merged-/usr links as the host, so the tool run on the host with --root on the
        # state writes lib/modules where the guest sees it.
        for top in ("lib", "lib64"):
            if Path("/", top).is_symlink() and not (self.path / top).is_symlink():
                (self.path / top).symlink_to(os.readlink(Path("/", top)))

    @property
    def exchange(self) -> Path:
        """Seen as /run/kh-e2e in the guest: scenario, helpers, inputs."""
        return self.path / "e2e"

    def _install_tool(self) -> None:
        """The guest's `kheaders-pkg` executable and the systemd files rendered for it."""
        tool = self.exchange / os.path.basename(GUEST_TOOL)
        tool.write_text(
            "#!/bin/sh\n"
            f"PYTHONPATH={shlex.quote(f'{CHECKOUT}:{SITE_PACKAGES}')} "
            'exec /usr/bin/python3.11 -m kheaders_pkg "$@"\n'
        )
        tool.chmod(0o755)
        hooks = self.exchange / os.path.basename(GUEST_HOOKS)
        hooks.mkdir(exist_ok=True)
        for hook in render_hooks(HookSystem.DEBIAN, GUEST_TOOL, CHECKOUT):
            name = os.path.basename(hook.dest)
            if name in UNIT_FILES:
                (hooks / name).write_bytes(hook.content)
                (hooks / name).chmod(hook.mode)

    def host_path(self, guest_path: str) -> Path:
        """The state file behind an absolute guest path under one of the WRITABLE paths."""
        real = os.path.realpath(guest_path).lstrip("/")
        for rel in WRITABLE:
            if real == rel or real.startswith(rel + "/"):
                return self.path / real
        raise ValueError(f"{guest_path} is not on the persistent state")

    def resolve(self, guest_path: str) -> Path:
        """The state file behind `guest_path`, following a final symlink as the guest would."""
        for _ in range(40):
            host = self.host_path(guest_path)
            if not host.is_symlink():
                return host
            target = os.readlink(host)
            guest_path = os.path.join(os.path.dirname(guest_path), target)
        raise ValueError(f"{guest_path}: too many levels of symbolic links")

    def install_module(self, ko: Path, release: str) -> Path:
        """Put `ko` where modprobe looks (kernel/kernel/, like a distro) and run depmod."""
        modules = self.host_path(f"/lib/modules/{release}")
        dest = modules / "kernel" / "kernel" / ko.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ko, dest)
        # depmod -b BASE reads BASE/lib/modules/RELEASE: BASE is the parent of lib/modules.
        base = modules.parent.parent.parent
        subprocess.run([DEPMOD, "-b", str(base), release], check=True)
        return dest


def build_initramfs(kernel: GuestKernel, dest: Path) -> Path:
    """A gzip'ed cpio (newc) with busybox, its applet links, init.sh and the kernel's modules."""
    tree = dest.with_suffix(".d")
    if tree.exists():
        shutil.rmtree(tree)
    for d in ("bin", "proc", "sys", "dev", "modules"):
        (tree / d).mkdir(parents=True)
    shutil.copy2(kernel.machine.busybox, tree / "bin/busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (tree / "bin" / applet).symlink_to("busybox")
    shutil.copy2(GUEST_DIR / "init.sh", tree / "init")
    (tree / "init").chmod(0o755)
    for ko in kernel.modules:
        shutil.copyfile(ko, tree / "modules" / ko.name)
    (tree / "modules/load-order").write_text("".join(f"{ko.name}\n" for ko in kernel.modules))
    (tree / "writable").write_text("".join(f"{p}\n" for p in WRITABLE))
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    cpio = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        input="\n".join([".", *names]).encode(),
        cwd=tree,
        check=True,
        capture_output=True,
    ).stdout
    dest.write_bytes(gzip.compress(cpio, compresslevel=1))
    shutil.rmtree(tree)
    return dest


def parse_marks(log: str) -> dict[str, str]:
    """`@@KH name=value` and `@@KH64 name=<base64>` lines; a later line wins."""
    values: dict[str, str] = {}
    for raw in log.splitlines():
        line = raw.strip("\r")
        for mark, decode in ((MARK64, True), (MARK, False)):
            start = line.find(mark)
            if start < 0:
                continue
            name, sep, value = line[start + len(mark) :].partition("=")
            if sep:
                values[name] = (
                    base64.b64decode(value).decode("utf-8", "replace") if decode else value
                )
            break
    return values


def tail(log: str, lines: int = 40) -> str:
    return "\n".join(log.splitlines()[-lines:])


def qemu_command(
    kernel: GuestKernel, initramfs: Path, state: GuestState, serial: Path, memory: int, cpus: int
) -> list[str]:
    return [
        kernel.machine.qemu,
        *kernel.machine.args,
        "-accel", "tcg",
        "-m", str(memory),
        "-smp", str(cpus),
        "-nographic", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{serial}",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initramfs),
        "-append", f"console={kernel.machine.console} panic=-1 loglevel=3",
        # multidevs=remap: the host root spans several filesystems (/proc, /sys, ...)
        "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={state.path},mount_tag=state,security_model=none,multidevs=remap",
        *_userland_share(kernel.machine),
    ]  # fmt: skip


def _userland_share(machine: Machine) -> list[str]:
    if machine.userland is None:
        return []
    return [
        "-virtfs",
        f"local,path={machine.userland},mount_tag=userland,security_model=none,readonly=on,"
        "multidevs=remap",
    ]


def boot(
    kernel: GuestKernel,
    initramfs: Path,
    state: GuestState,
    scenario: str | Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = TIMEOUT,
    memory: int = 1024,
    cpus: int = 1,
) -> BootResult:
    """Boot `kernel`, run `scenarios/<scenario>.sh` in the guest, return what it reported.

    Several scenarios run one after the other, in the same shell, in one boot.

    Raises VMError if the guest does not finish within `timeout` seconds or stops before the
    scenario has run to its end; the message carries the tail of the serial log.
    """
    exchange = state.exchange
    shutil.copyfile(GUEST_DIR / "lib.sh", exchange / "lib.sh")
    names = [scenario] if isinstance(scenario, str) else list(scenario)
    scenario = "+".join(names)
    (exchange / "scenario.sh").write_text(
        "".join((SCENARIOS / f"{n}.sh").read_text() + "\n" for n in names)
    )
    settings = {
        "KH_CHECKOUT": str(CHECKOUT),
        "KH_SITE_PACKAGES": str(SITE_PACKAGES),
        "KH_TOOL": GUEST_TOOL,
        "KH_HOOKS": GUEST_HOOKS,
        "KH_CONDITION": CONDITION,
        "KH_USERLAND": "1" if kernel.machine.userland is not None else "",
        **(env or {}),
    }
    (exchange / "env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items()))
    serial = exchange.parent / f"serial-{len(state.boots)}-{kernel.name}-{scenario}.log"
    command = qemu_command(kernel, initramfs, state, serial, memory, cpus)
    start = time.monotonic()
    with subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        try:
            qemu_output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            log = serial.read_text(errors="replace") if serial.exists() else ""
            raise VMError(
                f"{kernel.name}/{scenario}: no poweroff after {timeout:.0f} s; serial log tail:\n"
                f"{tail(log)}"
            ) from None
    seconds = time.monotonic() - start
    BOOT_TIMES.append((kernel.name, scenario, seconds))
    log = serial.read_text(errors="replace") if serial.exists() else ""
    values = parse_marks(log)
    if proc.returncode != 0 or "e2e.done" not in values or "init.error" in values:
        raise VMError(
            f"{kernel.name}/{scenario}: qemu exit {proc.returncode}, "
            f"init error {values.get('init.error')!r}; qemu said "
            f"{qemu_output.decode(errors='replace').strip()!r}; serial log tail:\n{tail(log)}"
        )
    result = BootResult(values, seconds, log)
    state.boots.append(result)
    return result
