"""The boot policy: which answers of `check` let kheaders-pkg.service run `sync`.

systemd runs a unit's ExecStart= when its ExecCondition= exits 0, skips the unit quietly on 1-254
and fails it on 255 (systemd.service(5)). A skip leaves no trace in `systemctl --failed`, so an
error must never skip: when `check` cannot tell (the kernel's files unreadable, exit 7; a
filesystem problem, 8; a bug, 1), `sync` runs, meets the same error, logs it to the journal and
fails the unit. Only the answers that leave `sync` nothing to do skip.

This is the one home of the rule: `check --condition` applies it, the fast path (fastcheck.py)
answers only "fresh", and the ExecCondition= wrapper (templates/hooks/systemd/
kheaders-pkg-condition.j2) calls `check --condition` and runs `sync` on anything unexpected.
"""

from __future__ import annotations

from kheaders_pkg.errors import ExitCode

RUN = 0  # ExecCondition=: run ExecStart= (sync)
SKIP = 1  # ExecCondition=: skip the unit, quietly

# `check` exit codes after which `sync` has nothing to do.
NOTHING_TO_DO = frozenset(
    {
        ExitCode.OK,  # fresh: ours, or a distro tree that matches
        ExitCode.FOREIGN_STALE,  # a tree we do not own: sync would leave it alone too
        ExitCode.UNSUPPORTED,  # no CONFIG_IKHEADERS: nothing to sync from
    }
)


def condition_exit(check_exit: int) -> int:
    """The ExecCondition= exit for a `check` exit code: skip only when sync has nothing to do."""
    return SKIP if check_exit in NOTHING_TO_DO else RUN
