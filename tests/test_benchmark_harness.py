"""`benchmarks/run --quick` still works: every figure runs and the results are written.

Its timings are not judged here (one run on a shared machine measures nothing); the full run
and its targets are benchmarks/README.md's business.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks.harness import Result, Spread
from benchmarks.main import table
from tests.conftest import REPO


@pytest.mark.slow
def test_quick_benchmark_runs_every_figure(tmp_path: Path, built_deb: Path) -> None:
    out = tmp_path / "latest.json"
    workdir = REPO / "scratch" / f"test-bench-{tmp_path.name}"
    p = subprocess.run(
        [
            REPO / "benchmarks/run",
            "--quick",
            "--json",
            out,
            "--workdir",
            workdir,
            "--deb",  # figure 1 times the session's .deb as installed (tests/packages.py)
            built_deb,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    # 0: targets met, 1: a target missed (timings are not this test's business), 2: broken.
    assert p.returncode in (0, 1), p.stderr[-3000:]
    assert not workdir.exists(), "the benchmark must remove its work directory"
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert data["errors"] == {}
    figures = {row["figure"].split()[0] for row in data["rows"]}
    assert figures == {"1", "2", "3", "4", "5", "6", "7"}
    for row in data["rows"]:
        assert row["passed"] in (True, False, None)
        if row["ratio"] is not None:
            assert row["ratio"]["min"] <= row["ratio"]["median"] <= row["ratio"]["max"]
    assert "| figure | case |" in p.stdout


def test_table_marks_misses() -> None:
    s = Spread(1.0, 0.5, 2.0)
    rows = [
        Result("1 x", "a", "s", s, s, s, "<= 1.3x", True),
        Result("2 y", "b", "s", s, s, Spread(1.5, 1.4, 1.6), "<= 1x", False),
        Result("5 z", "c", "s", None, None, None, "", None, note="n/a (emit unavailable: x)"),
    ]
    text = table(rows)
    assert "| pass |" in text and "| FAIL |" in text
    assert "n/a (emit unavailable: x)" in text
