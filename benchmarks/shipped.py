"""Figure 1 for what ships: the tool as its .deb installs it, timed at its real paths.

The .deb is built (dpkg-buildpackage, from a copy of the checkout) unless one is given, then
installed with `dpkg -i` in a private mount namespace whose /usr, /etc and /var are overlays on a
tmpfs (the host sees nothing; maintainer scripts run, so py3compile compiles the bytecode as on a
user's machine). Inside it, this module runs again (`--inside`) and times, in interleaved pairs
against `/usr/bin/python3 -c pass`:

- `/usr/bin/kheaders-pkg check` on a fresh tree (the installed wrapper, fast path);
- the installed ExecCondition= wrapper (/usr/lib/kheaders-pkg/kheaders-pkg-condition), no
  initramfs verdict, calling a copy of the installed wrapper that adds --root/--kernel-fs (the
  boot unit passes no options: the copy has the same interpreter start and imports).

It prints the timings as JSON for figures.figure1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import REPO, VENV_PYTHON, interleaved, run
from benchmarks.private_root import copy_source, private_root_argv

SYSTEM_PYTHON = "/usr/bin/python3"
INSTALLED_TOOL = "/usr/bin/kheaders-pkg"
INSTALLED_CONDITION = "/usr/lib/kheaders-pkg/kheaders-pkg-condition"
# After benchmarks/private_root.NAMESPACE_SETUP. As on a user's machine: py3compile must put the
# bytecode beside the package (the installed tool runs with -I and ignores PYTHONPYCACHEPREFIX),
# so the harness's prefix is not passed on.
_INSTALL_AND_RUN = """\
env -u PYTHONPYCACHEPREFIX -u PYTHONDONTWRITEBYTECODE dpkg -i "$KH_DEB" >/dev/null
exec "$@"
"""


def build_deb(workdir: Path) -> Path:
    src = workdir / "deb" / "kheaders-pkg"
    copy_source(src)
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src)
    (deb,) = src.parent.glob("kheaders-pkg_*_all.deb")
    return deb


def measure(
    deb: Path, workdir: Path, root: Path, kernel_fs: Path, n: int, warmup: int
) -> dict[str, list[list[float]]]:
    """{case: [ours, baseline, ratios]} timed inside a namespace with `deb` installed."""
    overlay = workdir / "deb-overlay"
    overlay.mkdir(parents=True, exist_ok=True)
    inside = [
        str(VENV_PYTHON),
        "-m",
        "benchmarks.shipped",
        "--inside",
        "--root",
        str(root),
        "--kernel-fs",
        str(kernel_fs),
        "--work",
        str(workdir),
        "-n",
        str(n),
        "--warmup",
        str(warmup),
    ]
    env = {**os.environ, "KH_OVERLAY": str(overlay), "KH_DEB": str(deb)}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    env["PYTHONPATH"] = str(REPO)
    p = subprocess.run(
        private_root_argv(_INSTALL_AND_RUN, *inside),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if p.returncode != 0:
        raise RuntimeError(f"timing the installed .deb failed: {p.stderr[-2000:]}")
    data: dict[str, list[list[float]]] = json.loads(p.stdout)
    return data


def _inside(root: Path, kernel_fs: Path, work: Path, n: int, warmup: int) -> None:
    options = ["--root", str(root), "--kernel-fs", str(kernel_fs)]
    check = [INSTALLED_TOOL, *options, "check"]
    first = run(check).stdout.split()[0]
    if first != "fresh:":
        raise RuntimeError(f"the installed tool needs a fresh tree; check said {first!r}")
    # The installed wrapper with the options added, as the condition calls it.
    installed = Path(INSTALLED_TOOL).read_text()
    head, _, rest = installed.partition("from kheaders_pkg.entry import main")
    shim = work / "installed-kheaders-pkg-with-options"
    shim.write_text(f"{head}sys.argv[1:1] = {options!r}\nfrom kheaders_pkg.entry import main{rest}")
    shim.chmod(0o755)
    empty = work / "run-no-verdict"
    empty.mkdir(exist_ok=True)
    env = {"KHEADERS_PKG": str(shim), "KHEADERS_PKG_RUNDIR": str(empty)}
    python_pass = [SYSTEM_PYTHON, "-c", "pass"]

    def timed(argv: list[str], env: dict[str, str] | None = None, ok: int = 0) -> float:
        return run(argv, env=env, ok=(ok,)).wall

    out: dict[str, list[list[float]]] = {}
    a, b, r = interleaved(lambda _: timed(check), lambda _: timed(python_pass), n, warmup=warmup)
    out["deb-check"] = [a, b, r]
    a, b, r = interleaved(
        lambda _: timed([INSTALLED_CONDITION], env, ok=1),
        lambda _: timed(python_pass),
        n,
        warmup=warmup,
    )
    out["deb-condition"] = [a, b, r]
    json.dump(out, sys.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shipped")
    p.add_argument("--inside", action="store_true", required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--kernel-fs", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("-n", type=int, required=True)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    _inside(args.root, args.kernel_fs, args.work, args.n, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
