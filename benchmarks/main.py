"""Command line of the benchmarks: run the figures, print the table, write JSON, exit 1 on a miss.

Exit codes: 0 every target met, 1 a target missed, 2 a figure could not run (its error is in
the JSON and on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import time
import traceback
from pathlib import Path

from benchmarks.figures import FIGURES, KERNELS, Options
from benchmarks.harness import REPO, Result, Spread, remove

DEFAULT_JSON = REPO / "benchmarks" / "results" / "latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1 run each, one kernel, small scaling")
    p.add_argument("--runs", type=int, default=5, help="runs of each slow figure (default 5)")
    p.add_argument("--check-runs", type=int, default=40, help="runs of figure 1 (default 40)")
    p.add_argument(
        "--figures", default=",".join(FIGURES), help="comma-separated figures (default all)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch directory, created and removed (default ./scratch/bench-XXXX, on the "
        "filesystem of the trees)",
    )
    p.add_argument(
        "--kernels", default=None, help="comma-separated corpus kernels for figures 2 and 4"
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument(
        "--deb",
        type=Path,
        default=None,
        help="the tool's .deb for figure 1 (default: built with dpkg-buildpackage)",
    )
    return p.parse_args(argv)


def _fmt(s: Spread | None, unit: str) -> str:
    if s is None:
        return "-"
    if unit == "s":
        return f"{s.median * 1000:.1f}ms" if s.median < 1 else f"{s.median:.2f}s"
    return f"{s.median:.1f}{unit}"


def _ratio(s: Spread | None, unit: str) -> str:
    if s is None:
        return "-"
    suffix = "%" if unit == "%" else "x"
    return f"{s.median:.2f}{suffix} ({s.min:.2f}-{s.max:.2f})"


def table(rows: list[Result]) -> str:
    head = ("figure", "case", "ours", "baseline", "ratio med (min-max)", "target", "pass")
    body = []
    for r in rows:
        verdict = {True: "pass", False: "FAIL", None: "-"}[r.passed]
        body.append(
            (
                r.figure,
                r.case + (f" [{r.note}]" if r.note else ""),
                _fmt(r.ours, r.unit),
                _fmt(r.baseline, r.unit),
                _ratio(r.ratio, r.unit),
                r.target or "-",
                verdict,
            )
        )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or REPO / "scratch" / f"bench-{secrets.token_hex(3)}"
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=False)
    quick = args.quick
    o = Options(
        workdir=workdir,
        runs=1 if quick else args.runs,
        check_runs=3 if quick else args.check_runs,
        kernels=(
            tuple(args.kernels.split(","))
            if args.kernels
            else ("kh-6.1.192-kh-a",)
            if quick
            else KERNELS
        ),
        generations=2 if quick else 5,
        scale=(1, 3) if quick else (1, 10, 50),
        warmup=0 if quick else 1,
        deb=args.deb,
        quick=quick,
    )
    # Installed, the tool is byte-compiled (Debian's py3compile); this environment may set
    # PYTHONDONTWRITEBYTECODE, which would make every child recompile kheaders_pkg from source.
    # The children get a private bytecode cache in the work directory instead.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    rows: list[Result] = []
    errors: dict[str, str] = {}
    started = time.time()
    try:
        for name in args.figures.split(","):
            print(f"figure {name}...", file=sys.stderr, flush=True)
            try:
                rows += FIGURES[name](o)
            except Exception as e:  # one broken figure must not hide the others
                errors[name] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
    finally:
        if not args.keep:
            remove(workdir)
    print(table(rows))
    for name, err in errors.items():
        print(f"figure {name} failed: {err}", file=sys.stderr)
    missed = [r for r in rows if r.passed is False]
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "quick": quick,
        "host": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load": os.getloadavg(),
        },
        "rows": [r.to_json() for r in rows],
        "errors": errors,
        "missed": [f"{r.figure}: {r.case}" for r in missed],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"results: {args.json}", file=sys.stderr)
    if errors:
        return 2
    return 1 if missed else 0
