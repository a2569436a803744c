"""Module.symvers from recovered exports, and the check that the installed modules agree with it.

Module.symvers is what modpost writes (scripts/mod/modpost.c write_dump): one line per export,
`0x%08x\\tNAME\\tMODULE\\tEXPORT_SYMBOL[_GPL]\\tNAMESPACE`, vmlinux first, then each module, its
column the module's path under the kernel tree without `.ko` (`drivers/gpu/drm/drm`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from kheaders_pkg.kernel.kmod import MODULE_SUFFIXES
from kheaders_pkg.kernel.ksymtab import Export, Import

VMLINUX = "vmlinux"


@dataclass(frozen=True)
class ModuleExports:
    module: str  # the Module.symvers column: "vmlinux" or "drivers/net/foo"
    exports: tuple[Export, ...]


@dataclass(frozen=True)
class Disagreement:
    """An installed module imports `name` with a CRC other than the recovered one (or none)."""

    module: str
    name: str
    imported: int
    recovered: int | None  # None: no recovered export has that name


def module_column(path_in_modules_dir: str) -> str | None:
    """`kernel/drivers/net/foo.ko.xz` -> `drivers/net/foo`; None for a module outside `kernel/`
    (updates/, extra/: out-of-tree modules are not the kernel's exports)."""
    parts = PurePosixPath(path_in_modules_dir).parts
    if len(parts) < 2 or parts[0] != "kernel":
        return None
    name = "/".join(parts[1:])
    for suffix in MODULE_SUFFIXES[1:]:
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko") if name.endswith(".ko") else None


def render_symvers(tables: Sequence[ModuleExports]) -> bytes:
    """The Module.symvers text, in the order given (vmlinux first, as modpost writes it)."""
    lines = [
        f"0x{export.crc or 0:08x}\t{export.name}\t{table.module}\t{export.kind}\t"
        f"{export.namespace}\n"
        for table in tables
        for export in table.exports
    ]
    return "".join(lines).encode()


def crc_table(tables: Iterable[ModuleExports]) -> dict[str, int | None]:
    return {e.name: e.crc for table in tables for e in table.exports}


def disagreements(
    crcs: Mapping[str, int | None], imports: Iterable[tuple[str, Sequence[Import]]]
) -> list[Disagreement]:
    """Every import whose CRC differs from the recovered one, in the order met.

    The kernel refuses such a module ("disagrees about version of symbol"); a CRC we recovered
    wrongly would make every module built against our Module.symvers fail the same way, so any
    difference means the recovery cannot be trusted.
    """
    found = []
    for module, wanted in imports:
        for imp in wanted:
            have = crcs.get(imp.name)
            if have != imp.crc:
                found.append(Disagreement(module, imp.name, imp.crc, have))
    return found
