"""Turn a headers tree into a tree that builds modules for the kernel (`kbuild = true`).

A module build (`make -C build M=dir`) needs, beyond the headers (background.md 10): a
`Module.symvers` matching the running build (recovered here from the kernel's own image and
installed modules, and checked against every CRC those modules import), the kbuild host tools
(`scripts/`, `tools/`: Debian's `linux-kbuild-X.Y`), and a few kernel source files (the top
`Makefile`, `arch/$SRCARCH/Makefile*` from Debian's `linux-headers-*-common`; `module.lds`,
preprocessed per architecture, from Debian's `linux-headers-$KVER` or a kernel tree the user names
with `kbuild_source`). These are taken from where the distribution installed them; when one is
missing the tree stays headers-only and the record written into it names what is missing and
which package provides it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kheaders_pkg.errors import KbuildError, KernelDataError
from kheaders_pkg.kernel.identity import KernelFacts
from kheaders_pkg.kernel.ksymtab import Export
from kheaders_pkg.layout import Layout

log = logging.getLogger("kheaders-pkg")

# Written into every tree made with kbuild asked for: what was found, what is missing, why.
RECORD_NAME = ".kheaders-pkg.kbuild.json"
_VERSION_H = "include/generated/uapi/linux/version.h"
_MAKEFILE_VERSION = re.compile(rb"^(VERSION|PATCHLEVEL|SUBLEVEL)\s*=\s*(\d+)\s*$", re.M)
_VERSION_MACRO = re.compile(rb"^#define LINUX_VERSION_(MAJOR|PATCHLEVEL|SUBLEVEL)\s+(\d+)", re.M)


@dataclass(frozen=True)
class Missing:
    piece: str  # the path in the tree
    provider: str  # the package (or setting) that provides it
    detail: str = ""


@dataclass(frozen=True)
class KbuildRecord:
    """What a tree holds for module builds; `ready` only when every piece is there and checked."""

    ready: bool
    missing: tuple[Missing, ...] = ()
    refused: str | None = None  # why Module.symvers could not be made, if it could not
    symvers_exports: int = 0
    checked_imports: int = 0
    checked_modules: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # piece -> where it came from (inside)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> KbuildRecord:
        raw = json.loads(text)
        missing = tuple(Missing(**m) for m in raw.get("missing", ()))
        return cls(**{**raw, "missing": missing})

    @property
    def summary(self) -> str:
        if self.ready:
            return (
                f"ready: Module.symvers recovered ({self.symvers_exports} exports, "
                f"{self.checked_imports} imported CRCs of {self.checked_modules} modules agree)"
            )
        reasons = [self.refused] if self.refused else []
        reasons += [f"{m.piece} is missing (from {m.provider})" for m in self.missing]
        return "headers only: " + "; ".join(reasons)


def read_record(tree: Path) -> KbuildRecord | None:
    try:
        return KbuildRecord.from_json((tree / RECORD_NAME).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, TypeError) as e:
        log.debug("unreadable kbuild record in %s: %s", tree, e)
        return None


# --- what the kernel is ---------------------------------------------------------------------


def kernel_version(tree: Path) -> tuple[int, int, int]:
    """(major, patchlevel, sublevel) from the tree's generated version.h (the kernel's own)."""
    try:
        text = (tree / _VERSION_H).read_bytes()
    except OSError:
        raise KbuildError(
            f"the headers have no {_VERSION_H}: cannot tell the kernel version"
        ) from None
    found = {k.decode(): int(v) for k, v in _VERSION_MACRO.findall(text)}
    if set(found) != {"MAJOR", "PATCHLEVEL", "SUBLEVEL"}:
        raise KbuildError(f"{_VERSION_H} lacks LINUX_VERSION_MAJOR/PATCHLEVEL/SUBLEVEL")
    return found["MAJOR"], found["PATCHLEVEL"], found["SUBLEVEL"]


def makefile_version(makefile: bytes) -> tuple[int, int, int] | None:
    found = {k.decode(): int(v) for k, v in _MAKEFILE_VERSION.findall(makefile[:4096])}
    if set(found) != {"VERSION", "PATCHLEVEL", "SUBLEVEL"}:
        return None
    return found["VERSION"], found["PATCHLEVEL"], found["SUBLEVEL"]


def srcarch(tree: Path) -> str:
    """The kernel's $SRCARCH: the headers archive holds exactly one `arch/` directory."""
    try:
        arches = sorted(p.name for p in (tree / "arch").iterdir() if p.is_dir())
    except OSError:
        arches = []
    if len(arches) != 1:
        raise KbuildError(f"the headers hold {len(arches)} arch/ directories, expected one")
    return arches[0]


def abi_name(release: str) -> str:
    """Debian's ABI name: the release without its flavour (6.1.0-56-amd64 -> 6.1.0-56)."""
    return release.rsplit("-", 1)[0] if "-" in release else release


# --- where the pieces are -------------------------------------------------------------------


@dataclass(frozen=True)
class Pieces:
    kbuild_dir: str | None  # inside path holding scripts/ and tools/
    source_dir: str | None  # inside path holding the top Makefile and arch/$SRCARCH/Makefile
    module_lds: str | None  # inside path of the preprocessed module linker script
    missing: tuple[Missing, ...]


def find_pieces(
    layout: Layout, release: str, arch: str, version: tuple[int, int, int], source: str | None
) -> Pieces:
    major, patch, _sub = version
    abi = abi_name(release)
    missing: list[Missing] = []

    kbuild_candidates = [f"/usr/lib/linux-kbuild-{major}.{patch}", f"/usr/lib/linux-kbuild-{abi}"]
    if source is not None:
        kbuild_candidates.insert(0, source)
    kbuild_dir = next(
        (
            c
            for c in kbuild_candidates
            if (layout.host(c) / "scripts/basic/fixdep").is_file()
            and (layout.host(c) / "scripts/mod/modpost").is_file()
        ),
        None,
    )
    if kbuild_dir is None:
        missing.append(Missing("scripts", f"linux-kbuild-{major}.{patch}", "the kbuild host tools"))

    common = f"/usr/src/linux-headers-{abi}-common"
    source_candidates = [source] if source is not None else []
    source_candidates.append(common)
    source_dir = None
    for cand in source_candidates:
        top = layout.host(cand) / "Makefile"
        if not top.is_file() or not (layout.host(cand) / f"arch/{arch}/Makefile").is_file():
            continue
        found = makefile_version(top.read_bytes())
        if found != version:
            log.info("%s/Makefile is for %s, not %s: not used", cand, found, version)
            continue
        source_dir = cand
        break
    if source_dir is None:
        missing.append(
            Missing(
                "Makefile",
                f"linux-headers-{abi}-common",
                f"the top Makefile and arch/{arch}/Makefile of Linux {'.'.join(map(str, version))}",
            )
        )

    lds_candidates = []
    if source is not None:
        lds_candidates += [f"{source}/scripts/module.lds", f"{source}/arch/{arch}/module.lds"]
    lds_candidates.append(f"/usr/src/linux-headers-{release}/arch/{arch}/module.lds")
    module_lds = next((c for c in lds_candidates if layout.host(c).is_file()), None)
    if module_lds is None:
        missing.append(
            Missing(f"arch/{arch}/module.lds", f"linux-headers-{release}", "module linker script")
        )
    return Pieces(kbuild_dir, source_dir, module_lds, tuple(missing))


# --- Module.symvers -------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveredSymvers:
    text: bytes
    exports: int
    checked_imports: int
    checked_modules: int


def installed_modules(modules_dir: Path) -> Iterator[tuple[str, Path]]:
    """(path relative to /lib/modules/$KVER, file) of every installed module, in the distro's
    modules.order first (the order modpost writes Module.symvers in), then the rest sorted."""
    from kheaders_pkg.kernel.kmod import MODULE_SUFFIXES

    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(modules_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in ("build", "source"))
        for name in filenames:
            if any(name.endswith(".ko" + s) for s in MODULE_SUFFIXES):
                path = Path(dirpath) / name
                found[path.relative_to(modules_dir).as_posix()] = path
    order: list[str] = []
    try:
        order = (modules_dir / "modules.order").read_text().split()
    except (OSError, UnicodeDecodeError):
        pass
    stems = {_without_compression(rel): rel for rel in found}
    seen = set()
    for rel in order:
        actual = stems.get(rel)
        if actual is not None and actual not in seen:
            seen.add(actual)
            yield actual, found[actual]
    for rel in sorted(found):
        if rel not in seen:
            yield rel, found[rel]


def _without_compression(rel: str) -> str:
    for suffix in (".xz", ".zst", ".gz"):
        if rel.endswith(".ko" + suffix):
            return rel[: -len(suffix)]
    return rel


def recover_symvers(layout: Layout, facts: KernelFacts) -> RecoveredSymvers:
    """Module.symvers for the kernel of `facts`, checked against the installed modules.

    KbuildError (exit 15) when the image is not the kernel's build, its layout is one we do not
    read, or any installed module's imported CRC disagrees with what was recovered.
    """
    from kheaders_pkg.kernel.elf import ELFFile
    from kheaders_pkg.kernel.kconfig import option
    from kheaders_pkg.kernel.kmod import read_module
    from kheaders_pkg.kernel.ksymtab import module_exports, module_imports
    from kheaders_pkg.kernel.symvers import (
        VMLINUX,
        ModuleExports,
        crc_table,
        disagreements,
        module_column,
        render_symvers,
    )

    ident = facts.identity
    release = ident.release
    vmlinux = _vmlinux_exports(layout, facts)
    tables = [ModuleExports(VMLINUX, vmlinux)]
    imports = []
    modules_dir = layout.modules_dir(release)
    for rel, path in installed_modules(modules_dir):
        try:
            elf = ELFFile(read_module(path))
            column = module_column(rel)
            if column is not None:
                tables.append(ModuleExports(column, module_exports(elf)))
            imports.append((rel, module_imports(elf), column is not None))
        except KernelDataError as e:
            raise KbuildError(f"cannot read installed module {rel}: {e}") from None
    crcs = crc_table(tables)
    # An out-of-tree module (updates/, extra/) may import from another out-of-tree module:
    # only names the kernel exports are checked for those.
    checked = [
        (rel, tuple(i for i in imps if in_tree or i.name in crcs)) for rel, imps, in_tree in imports
    ]
    bad = disagreements(crcs, checked)
    if bad:
        first = bad[0]
        recovered = "none" if first.recovered is None else f"0x{first.recovered:08x}"
        raise KbuildError(
            f"recovered Module.symvers disagrees with the installed modules on {len(bad)} "
            f"imported CRCs (e.g. {first.module} imports {first.name} 0x{first.imported:08x}, "
            f"recovered {recovered}): not written"
        )
    count = sum(len(imps) for _rel, imps in checked)
    # Without CONFIG_MODVERSIONS there are no CRCs to get wrong (the kernel checks none, modpost
    # writes 0x00000000); with it, a check that compared nothing proves nothing.
    modversions = facts.config is None or option(facts.config, "CONFIG_MODVERSIONS") == "y"
    if count == 0 and modversions:
        raise KbuildError(
            f"no installed module under {layout.modules_dir_inside(release)} imports a CRC: "
            "the recovered Module.symvers cannot be checked"
        )
    return RecoveredSymvers(
        render_symvers(tables), sum(len(t.exports) for t in tables), count, len(checked)
    )


def _vmlinux_exports(layout: Layout, facts: KernelFacts) -> tuple[Export, ...]:
    from kheaders_pkg.kernel.elf import ELFFile
    from kheaders_pkg.kernel.image import build_id_of, read_kernel_image
    from kheaders_pkg.kernel.ksymtab import flat_image_exports, vmlinux_exports

    ident = facts.identity
    if ident.build_id is None:
        raise KbuildError(
            "the kernel has no GNU build id: its image cannot be shown to be the running build"
        )
    path = next((p for p in layout.kernel_images(ident.release) if p.is_file()), None)
    if path is None:
        raise KbuildError(
            f"no kernel image for {ident.release} (/boot/vmlinuz-{ident.release}): "
            "exports cannot be recovered"
        )
    try:
        image = read_kernel_image(path)
        image_id = build_id_of(image)
        if image_id != ident.build_id:
            # Reading the live kernel's tables (/proc/kcore with /proc/kallsyms) is not done.
            raise KbuildError(
                f"{path} is build {image_id}, the kernel is {ident.build_id}: the image on disk "
                "is not the running build, so its exports cannot be used"
            )
        if image.is_elf:  # x86: the vmlinux ELF inside the bzImage, with its sections
            return vmlinux_exports(ELFFile(image.kernel))
        # arm64: a flat Image, no ELF; the tables are found by their structure.
        return flat_image_exports(image.kernel, "little")
    except KernelDataError as e:  # ImageError, ELFError, UnsupportedLayout
        raise KbuildError(f"cannot read exports from {path}: {e}") from None


# --- the tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KbuildFiles:
    """What to add to a staging tree: files and symlinks (by relative path), and the record."""

    files: dict[str, bytes]
    links: dict[str, str]
    record: KbuildRecord


def plan_kbuild(
    layout: Layout, facts: KernelFacts, staging: Path, generation_inside: str, source: str | None
) -> KbuildFiles:
    """Everything a module build needs, or a record of why the tree stays headers-only.

    Never raises for a missing piece or a refused recovery: those are the record's to say, and
    the headers tree is published either way (the caller exits 15 after publishing).
    """
    release = facts.identity.release
    version = kernel_version(staging)
    arch = srcarch(staging)
    pieces = find_pieces(layout, release, arch, version, source)
    refused: str | None = None
    symvers: RecoveredSymvers | None = None
    try:
        symvers = recover_symvers(layout, facts)
    except KbuildError as e:
        refused = str(e)
    if facts.config is None:
        refused = refused or "the kernel's config is unknown: no .config for kbuild"
    record = KbuildRecord(
        ready=refused is None and not pieces.missing,
        missing=pieces.missing,
        refused=refused,
        symvers_exports=symvers.exports if symvers else 0,
        checked_imports=symvers.checked_imports if symvers else 0,
        checked_modules=symvers.checked_modules if symvers else 0,
        sources={
            k: v
            for k, v in (
                ("scripts", pieces.kbuild_dir),
                ("Makefile", pieces.source_dir),
                ("module.lds", pieces.module_lds),
            )
            if v is not None
        },
    )
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    if record.ready:
        assert symvers is not None and pieces.source_dir and pieces.kbuild_dir
        assert pieces.module_lds
        files["Module.symvers"] = symvers.text
        source_dir = layout.host(pieces.source_dir)
        files["Makefile"] = (source_dir / "Makefile").read_bytes()
        for entry in sorted((source_dir / "arch" / arch).iterdir()):
            # arch/x86/Makefile, Makefile_32.cpu, Makefile.um, Makefile.postlink: read by the
            # top Makefile and Makefile.modfinal; nothing else of the source is needed.
            if entry.name.startswith("Makefile") and entry.is_file():
                files[f"arch/{arch}/{entry.name}"] = entry.read_bytes()
        # Debian's Makefile.modfinal links modules with scripts/module.lds or, failing that,
        # arch/$SRCARCH/module.lds (scripts/ is the shared kbuild package's).
        files[f"arch/{arch}/module.lds"] = layout.host(pieces.module_lds).read_bytes()
        for name in ("scripts", "tools"):
            # Relative, as Debian's own headers link them: right under --root and on the target.
            links[name] = os.path.relpath(f"{pieces.kbuild_dir}/{name}", generation_inside)
    files[RECORD_NAME] = record.to_json().encode()
    return KbuildFiles(files, links, record)
