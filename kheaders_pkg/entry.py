"""The process entry point: the boot-time `check` may be answered before the full CLI loads."""

import sys


def main() -> int:
    argv = sys.argv[1:]
    if "check" in argv:
        from kheaders_pkg.fastcheck import fast_check

        code = fast_check(argv)
        if code is not None:
            return code
    from kheaders_pkg.cli import main as cli_main

    return cli_main(argv)
