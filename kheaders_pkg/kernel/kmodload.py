"""Loading a module into the running kernel for as long as we need it (kheaders, configs).

bcc does the same: load kheaders, read the archive, unload it if it was we who loaded it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kheaders_pkg.errors import UnsupportedError
from kheaders_pkg.run import CommandError, run

log = logging.getLogger("kheaders-pkg")


def is_loaded(proc_modules: Path, name: str) -> bool:
    try:
        text = proc_modules.read_text()
    except OSError:
        return False
    prefix = name.replace("-", "_") + " "
    return any(line.startswith(prefix) for line in text.splitlines())


@contextmanager
def module_loaded(name: str, proc_modules: Path, appears: Path) -> Iterator[bool]:
    """Make `appears` exist by loading module `name`; unload it afterwards if we loaded it.

    Yields True when we loaded the module. Raises UnsupportedError if modprobe fails.
    """
    loaded_by_us = False
    if not appears.exists() and not is_loaded(proc_modules, name):
        try:
            run(["modprobe", name])
        except CommandError as e:
            raise UnsupportedError(f"cannot load the {name} module: {e}") from None
        except Exception as e:  # modprobe missing
            raise UnsupportedError(f"cannot load the {name} module: {e}") from None
        loaded_by_us = True
        log.info("loaded module %s", name)
    try:
        yield loaded_by_us
    finally:
        if loaded_by_us:
            try:
                run(["modprobe", "-r", name])
                log.info("unloaded module %s again", name)
            except Exception as e:  # leaving it loaded is harmless; say so
                log.warning("could not unload module %s: %s", name, e)
