"""A failing command's one line, written to the journal, carries the `<3>` (err) priority: the
line that says why kheaders-pkg.service failed is filed at PRIORITY=3, not as info."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONSOLE = Path(sys.executable).parent / "kheaders-pkg"


def fail_with_stderr_to(path: Path, journal_stream: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with path.open("w") as err:
        done = subprocess.run(
            [str(CONSOLE), "--kernel-fs", str(path.parent / "absent"), "check"],
            stderr=err, env=env, check=False,
        )  # fmt: skip
    assert done.returncode == 7
    return path.read_text()


def test_error_line_is_err_priority_when_stderr_is_the_journal(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr"
    stderr.touch()
    st = stderr.stat()
    # systemd's JOURNAL_STREAM names the stream's device and inode (systemd.exec(5)).
    text = fail_with_stderr_to(stderr, f"{st.st_dev}:{st.st_ino}")
    assert text.startswith("<3>") and text.count("\n") == 1, text
    assert "osrelease" in text and "kheaders-pkg: error" not in text


def test_error_line_is_plain_on_a_terminal_or_file(tmp_path: Path) -> None:
    text = fail_with_stderr_to(tmp_path / "stderr", None)
    assert text.startswith("kheaders-pkg: error: ") and text.count("\n") == 1, text
