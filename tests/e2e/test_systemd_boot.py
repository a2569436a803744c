"""The boot path as a machine runs it: dracut's initramfs runs our pre-pivot hook, systemd as PID 1
runs the packaged kheaders-pkg.service; every assertion is on systemd's own answers.

One Debian root (debootstrap + the tool's .deb, see systemd_guest.py) boots the Debian 6.1 kernel
four times, each boot building on what the one before left:

  first    no tree: the hook says missing, ExecCondition= lets the unit run, ExecStart= makes it
  fresh    nothing changed: the hook says fresh, the condition skips the unit without Python
  stale    before it, another build of the same release (the Debian 6.12 kernel's archive, under
           6.1.0-56-amd64's release) synced on the root, as after booting that build: the hook
           says stale, the unit regenerates
  failing  before it, the tree is gone and /usr/src is a tmpfs too small for one: the unit
           fails with one journal line saying why, and the boot goes on
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CorpusKernel, copy_sysroot, corpus_kernel

from . import systemd_guest as sg

KERNEL = "debian-6.1.0-56-amd64"
# Its archive makes the "same release, other build" tree of the stale boot.
OTHER_BUILD = "debian-6.12.107+deb13-amd64"
FIRST, FRESH, STALE, FAILING = "first", "fresh", "stale", "failing"
CHAIN = (FIRST, FRESH, STALE, FAILING)
# /usr/src in the failing boot: room for the directories, not for a tree of some 10 MiB.
SMALL_USR_SRC = "256k"
TOOL = Path(sys.executable).parent / "kheaders-pkg"
# systemctl show's rendering of an ExecCondition=/ExecStart= run: "... code=exited ; status=N }".
EXEC_STATUS = re.compile(r"code=(\w+) ; status=(\d+)")
JOURNAL_PRIORITY = {"err": "3", "warning": "4", "info": "6"}


class Boots:
    """The chain's boots, each run once on first need; a failed boot fails every later test
    (with its error), and the chain stops there."""

    def __init__(self, work: Path, deb: Path) -> None:
        self.work = work
        self.deb = deb
        self.kernel = corpus_kernel(KERNEL)
        self.done: dict[str, sg.Report | BaseException] = {}
        self._root: sg.SystemdRoot | None = None
        self._initramfs: Path | None = None

    def root(self) -> tuple[sg.SystemdRoot, Path]:
        if self._root is None or self._initramfs is None:
            self._root = sg.make_root(self.work / "root", self.deb, self.kernel)
            self._initramfs = sg.build_initramfs(self._root, self.work / "initramfs")
        return self._root, self._initramfs

    def get(self, stage: str) -> sg.Report:
        if stage not in self.done:
            index = CHAIN.index(stage)
            if index:
                self.get(CHAIN[index - 1])
            try:
                root, initramfs = self.root()
                prepare(stage, root, self.work)
                self.done[stage] = sg.boot(root, initramfs, stage)
            except Exception as exc:  # kept, raised again for every test that needs this boot
                self.done[stage] = exc
        found = self.done[stage]
        if isinstance(found, BaseException):
            raise found
        return found


def prepare(stage: str, root: sg.SystemdRoot, work: Path) -> None:
    """What the host changes on the root between the previous boot and `stage`'s."""
    if stage == STALE:
        plant_same_release_build(root, corpus_kernel(OTHER_BUILD), work / "other-build")
    elif stage == FAILING:
        tree = root.build_tree()
        assert tree is not None, "the stale boot left no tree"
        for name in ("build", "source"):
            (root.modules / name).unlink(missing_ok=True)
        shutil.rmtree(root.path / "usr/src/kheaders-pkg")
        with (root.path / "etc/fstab").open("a") as fstab:
            fstab.write(f"tmpfs /usr/src tmpfs size={SMALL_USR_SRC},mode=0755 0 0\n")


def plant_same_release_build(root: sg.SystemdRoot, other: CorpusKernel, work: Path) -> None:
    """The root as another build of the same release leaves it: the tool syncs, on the host, from
    `other`'s kernel files with the booted kernel's release written into them."""
    kernel_fs = copy_sysroot(other, work / "kernel-fs")
    (kernel_fs / "proc/sys/kernel/osrelease").write_text(f"{root.kernel.release}\n")
    done = subprocess.run(
        [str(TOOL), "--root", str(root.path), "--kernel-fs", str(kernel_fs), "sync"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    tree = root.build_tree()
    assert tree is not None and other.expected["build_id"][:12] in tree.name, tree


@pytest.fixture(scope="session")
def boots(tmp_path_factory: pytest.TempPathFactory, built_deb: Path) -> Boots:
    """The chain; `built_deb` is the session's .deb (tests/packages.py), built from the checkout."""
    return Boots(tmp_path_factory.mktemp("systemd-boot"), built_deb)


def exec_result(show: dict[str, str], prop: str) -> tuple[str, int]:
    """(code, status) of the ExecCondition=/ExecStart= run `systemctl show` describes."""
    found = EXEC_STATUS.search(show[prop])
    assert found, f"{prop} never ran: {show[prop]}"
    return found[1], int(found[2])


def tool_lines(report: sg.Report) -> list[dict[str, str]]:
    """Journal entries the unit's ExecStart= (the tool) wrote."""
    return [e for e in report.journal() if e.get("SYSLOG_IDENTIFIER") == "kheaders-pkg"]


def condition_lines(report: sg.Report) -> list[dict[str, str]]:
    return [e for e in report.journal() if e.get("SYSLOG_IDENTIFIER") == "kheaders-pkg-condition"]


def usec(show: dict[str, str], prop: str) -> int:
    return int(show[f"{prop}TimestampMonotonic"])


def unit_seconds(report: sg.Report) -> float:
    """The boot time kheaders-pkg.service took: leaving inactive to being inactive again (a
    oneshot without RemainAfterExit=), from systemd's own monotonic timestamps."""
    show = report.show("kheaders-pkg.service")
    return (usec(show, "InactiveEnter") - usec(show, "InactiveExit")) / 1e6


# --- first boot: no tree ------------------------------------------------------------------------


@pytest.mark.vm
def test_first_boot_initramfs_hook_records_missing(boots: Boots) -> None:
    report = boots.get(FIRST)
    verdict = report.verdict()
    assert verdict["verdict"] == "missing", verdict
    assert verdict["release"] == boots.kernel.release
    assert verdict["build_id"] == boots.kernel.expected["build_id"]


@pytest.mark.vm
def test_first_boot_condition_lets_the_unit_run_and_it_regenerates(boots: Boots) -> None:
    report = boots.get(FIRST)
    show = report.show("kheaders-pkg.service")
    assert show["ConditionResult"] == "yes"
    assert exec_result(show, "ExecCondition") == ("exited", 0)
    assert exec_result(show, "ExecStart") == ("exited", 0)
    assert show["Result"] == "success"
    built = report.text("build").strip()
    assert built.startswith(f"/usr/src/kheaders-pkg/{boots.kernel.release}/gen-"), built
    assert boots.kernel.expected["build_id"][:12] in built
    assert report.text("system-state").strip() == "running"


@pytest.mark.vm
def test_first_boot_journal_carries_our_lines_with_their_priorities(boots: Boots) -> None:
    lines = tool_lines(boots.get(FIRST))
    assert lines, "ExecStart= wrote nothing to the journal"
    # journald took the `<N>` prefix as the priority: no message keeps it.
    assert not [e["MESSAGE"] for e in lines if re.match(r"<\d>", e["MESSAGE"])]
    regenerated = [e for e in lines if e["MESSAGE"].startswith("regenerated ")]
    assert len(regenerated) == 1, lines
    assert regenerated[0]["PRIORITY"] == JOURNAL_PRIORITY["info"]
    # A warning (the root has no bpftool for vmlinux.h) is filed as one, never as info or err.
    warnings = [e for e in lines if "install it" in e["MESSAGE"]]
    assert all(e["PRIORITY"] == JOURNAL_PRIORITY["warning"] for e in warnings), warnings
    assert {e["PRIORITY"] for e in lines} <= {JOURNAL_PRIORITY["info"], JOURNAL_PRIORITY["warning"]}


@pytest.mark.vm
def test_first_boot_unit_runs_after_modprobe_kheaders_and_before_dkms(boots: Boots) -> None:
    report = boots.get(FIRST)
    unit = report.show("kheaders-pkg.service")
    modprobe = report.show("modprobe@kheaders.service")
    dkms = report.show("dkms.service")
    assert "modprobe@kheaders.service" in unit["After"].split()
    assert "kheaders-pkg.service" in dkms["After"].split()  # our Before=, seen from dkms
    assert modprobe["Result"] == "success"
    # The job order as it happened: modprobe@kheaders finished before the unit left inactive,
    # and the unit was done before dkms started.
    assert usec(modprobe, "InactiveEnter") <= usec(unit, "InactiveExit")
    assert usec(unit, "InactiveEnter") <= usec(dkms, "InactiveExit")
    # So dkms saw the final link.
    assert report.text("dkms-saw") == report.text("build")


# --- second boot: nothing changed ---------------------------------------------------------------


@pytest.mark.vm
def test_second_boot_fresh_verdict_skips_the_unit_without_python(boots: Boots) -> None:
    first = boots.get(FIRST)
    report = boots.get(FRESH)
    verdict = report.verdict()
    assert verdict["verdict"] == "fresh", verdict
    assert verdict["tree"] == first.text("build").strip()
    show = report.show("kheaders-pkg.service")
    # systemd folds the ExecCondition= skip into ConditionResult (ConditionPathExists= held).
    assert show["ConditionResult"] == "no"
    assert exec_result(show, "ExecCondition") == ("exited", 1)
    assert "start_time=[n/a]" in show["ExecStart"] and "pid=0 " in show["ExecStart"]
    assert show["Result"] == "exec-condition"
    assert show["ActiveState"] == "inactive"
    # The condition answered from the initramfs verdict alone: the tool never started.
    assert tool_lines(report) == []
    said = [e["MESSAGE"] for e in condition_lines(report)]
    assert len(said) == 1 and "initramfs verdict" in said[0], said
    assert report.text("build") == first.text("build")
    seconds = unit_seconds(report)
    sg.UNIT_TIMES.append((FIRST, unit_seconds(first)))
    sg.UNIT_TIMES.append((FRESH, seconds))
    assert seconds < unit_seconds(first)


# --- a same-release rebuild ---------------------------------------------------------------------


@pytest.mark.vm
def test_same_release_rebuild_is_stale_in_the_initramfs_and_regenerated(boots: Boots) -> None:
    report = boots.get(STALE)
    verdict = report.verdict()
    other_id = corpus_kernel(OTHER_BUILD).expected["build_id"]
    assert verdict["verdict"] == "stale", verdict
    assert other_id in verdict["reason"], verdict
    show = report.show("kheaders-pkg.service")
    assert exec_result(show, "ExecCondition") == ("exited", 0)
    assert exec_result(show, "ExecStart") == ("exited", 0)
    assert show["Result"] == "success"
    built = report.text("build").strip()
    assert boots.kernel.expected["build_id"][:12] in built, built
    assert report.text("dkms-saw") == report.text("build")
    regenerated = [e for e in tool_lines(report) if e["MESSAGE"].startswith("regenerated ")]
    assert len(regenerated) == 1 and "stale" in regenerated[0]["MESSAGE"], regenerated
    sg.UNIT_TIMES.append((STALE, unit_seconds(report)))


# --- a failing unit -----------------------------------------------------------------------------


@pytest.mark.vm
def test_full_usr_src_fails_the_unit_with_one_line_and_the_boot_goes_on(boots: Boots) -> None:
    report = boots.get(FAILING)
    assert report.verdict()["verdict"] == "missing"
    show = report.show("kheaders-pkg.service")
    assert show["ActiveState"] == "failed"
    assert show["Result"] == "exit-code"
    code, status = exec_result(show, "ExecStart")
    assert code == "exited" and status != 0
    errors = [e for e in tool_lines(report) if int(e["PRIORITY"]) <= 3]
    assert len(errors) == 1, tool_lines(report)
    assert "No space left on device" in errors[0]["MESSAGE"], errors
    assert "\n" not in errors[0]["MESSAGE"]
    # The boot went on: multi-user.target reached, dkms ran, systemd calls the state degraded.
    assert report.show("multi-user.target")["ActiveState"] == "active"
    assert report.show("dkms.service")["Result"] == "success"
    assert report.text("system-state").strip() == "degraded"
    assert report.text("failed").split()[:1] == ["kheaders-pkg.service"]
    assert report.text("build").strip() == "none"
