"""Who the kernel is: from a live kernel's /proc and /sys, or from a kernel's files on disk.

The boot-time check reads only small files here (release, version, notes, config.gz and a stat of
the archive); the archive's digest is computed while `sync` streams it, never by `check`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from kheaders_pkg.errors import KernelDataError, NotesError, UnsupportedError
from kheaders_pkg.files import read_if_present, sha256_file
from kheaders_pkg.kernel.btf import BtfRef, BtfSource
from kheaders_pkg.kernel.kconfig import config_sha256, gunzip_config, looks_like_config, option
from kheaders_pkg.kernel.notes import read_build_id
from kheaders_pkg.layout import Layout, check_release
from kheaders_pkg.stamp import ArchiveSource, ConfigSource

# Small files under /proc and /sys: never read more than this from them.
_SMALL = 1 << 20


@dataclass(frozen=True)
class ArchiveRef:
    """Where the headers archive is, and what we know of it without reading it."""

    source: ArchiveSource
    path: Path
    size: int | None  # stat size (sysfs gives the exact size), None for an archive inside a module
    sha256: str | None = None  # known once the archive has been read


@dataclass(frozen=True)
class KernelIdentity:
    release: str
    uts_version: str | None  # `uname -v`; unknown for a kernel that is not running
    build_id: str | None  # GNU build id (hex); None when the kernel has no build-id note
    config_sha256: str | None
    config_source: ConfigSource | None
    ikheaders: str | None  # "y", "m", "n", or None when the config is unknown
    archive: ArchiveRef | None
    running: bool  # read from a live kernel interface (sys/, proc/), not from files on disk
    btf_sha256: str | None = None
    remarks: tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        return self.archive is not None or self.ikheaders in ("y", "m", None)


@dataclass(frozen=True)
class KernelFacts:
    """The identity, the config text we write as the tree's .config, and where the BTF is."""

    identity: KernelIdentity
    config: bytes | None
    btf: BtfRef | None = None  # read only when a tree is made (vmlinux.h)


def _read_small(path: Path) -> bytes | None:
    return read_if_present(path, _SMALL, "kernel file", KernelDataError)


def _text(path: Path) -> str | None:
    raw = _read_small(path)
    if raw is None:
        return None
    try:
        return raw.decode().strip("\n")
    except UnicodeDecodeError:
        raise KernelDataError(f"{path}: not UTF-8 text") from None


def _ikheaders(config: bytes | None) -> str | None:
    if config is None:
        return None
    return option(config, "CONFIG_IKHEADERS") or "n"


def live_facts(layout: Layout, *, want_btf: bool = False) -> KernelFacts:
    """The running kernel as seen under --kernel-fs (default: the live /proc and /sys)."""
    k = layout.kernel
    release = _text(k.osrelease)
    if release is None:
        raise KernelDataError(f"{k.osrelease}: missing; is --kernel-fs a kernel's /proc and /sys?")
    check_release(release)
    remarks: list[str] = []

    notes = _read_small(k.notes)
    if notes is None:
        build_id = None
        remarks.append(f"{k.notes} is missing: the tree is identified by the archive digest")
    else:
        try:
            build_id = read_build_id(notes)
        except NotesError as e:
            raise NotesError(f"{k.notes}: {e}") from None
        if build_id is None:
            remarks.append("the kernel has no GNU build-id note: identified by the archive digest")

    config: bytes | None = None
    config_source: ConfigSource | None = None
    gz = _read_small(k.config_gz) if k.config_gz.exists() else None
    if gz is not None:
        config = gunzip_config(gz, str(k.config_gz))
        if not looks_like_config(config):
            raise KernelDataError(f"{k.config_gz}: does not hold a kernel config")
        config_source = ConfigSource.PROC
    else:
        remarks.append(f"{k.config_gz} is missing (CONFIG_IKCONFIG_PROC): config not compared")

    archive: ArchiveRef | None = None
    try:
        st = os.stat(k.archive)
        archive = ArchiveRef(ArchiveSource.SYSFS, k.archive, st.st_size)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise KernelDataError(f"{k.archive}: cannot stat ({e.strerror})") from None

    btf = None
    if want_btf and k.btf.exists():
        btf = sha256_file(k.btf, "kernel BTF", KernelDataError)

    identity = KernelIdentity(
        release=release,
        uts_version=_text(k.version),
        build_id=build_id,
        config_sha256=config_sha256(config) if config is not None else None,
        config_source=config_source,
        ikheaders=_ikheaders(config),
        archive=archive,
        running=True,
        btf_sha256=btf,
        remarks=tuple(remarks),
    )
    return KernelFacts(identity, config, BtfRef(BtfSource.SYSFS, k.btf))


def disk_facts(layout: Layout, release: str) -> KernelFacts:
    """A kernel that is not running, from its files under --root (package-manager hooks)."""
    from kheaders_pkg.kernel.image import build_id_from_image
    from kheaders_pkg.kernel.kmod import config_from_module, find_module

    check_release(release)
    remarks: list[str] = []
    modules_dir = layout.modules_dir(release)
    if not modules_dir.is_dir():
        raise KernelDataError(f"{modules_dir}: no such kernel installed")

    build_id = None
    btf: BtfRef | None = None
    for image in layout.kernel_images(release):
        if image.is_file():
            btf = BtfRef(BtfSource.IMAGE, image)
            build_id = build_id_from_image(image)
            if build_id is None:
                remarks.append(f"{image} has no GNU build-id note")
            break
    else:
        remarks.append(f"no kernel image for {release}: the tree is identified by the archive")

    config: bytes | None = None
    config_source: ConfigSource | None = None
    configs_ko = find_module(layout.kernel_module_dir(release), "configs")
    if configs_ko is not None:
        config = config_from_module(configs_ko)
        config_source = ConfigSource.MODULE
    else:
        for path, source in zip(
            layout.kernel_configs(release),
            (ConfigSource.BOOT, ConfigSource.MODULES_DIR),
            strict=True,
        ):
            if path.is_file():
                config = path.read_bytes()
                config_source = source
                remarks.append(
                    f"config from {path}: the distro's copy, which may differ from the build config"
                )
                break
    if config is not None and not looks_like_config(config):
        raise KernelDataError(f"config for {release} does not look like a kernel config")

    archive: ArchiveRef | None = None
    kheaders = find_module(layout.kernel_module_dir(release), "kheaders")
    if kheaders is not None:
        archive = ArchiveRef(ArchiveSource.MODULE, kheaders, None)

    identity = KernelIdentity(
        release=release,
        uts_version=None,
        build_id=build_id,
        config_sha256=config_sha256(config) if config is not None else None,
        config_source=config_source,
        ikheaders=_ikheaders(config),
        archive=archive,
        running=False,
        remarks=tuple(remarks),
    )
    return KernelFacts(identity, config, btf)


def with_archive(facts: KernelFacts, archive: ArchiveRef) -> KernelFacts:
    return replace(facts, identity=replace(facts.identity, archive=archive))


def with_archive_file(facts: KernelFacts, path: Path) -> KernelFacts:
    """`--archive FILE` overrides wherever the archive would have come from."""
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise KernelDataError(f"{path}: cannot read archive ({e.strerror})") from None
    return with_archive(facts, ArchiveRef(ArchiveSource.FILE, path, size))


def require_archive(identity: KernelIdentity) -> ArchiveRef:
    """The archive, or the plain reason there is none (the "unsupported" exit code)."""
    if identity.archive is not None:
        return identity.archive
    if identity.ikheaders == "n":
        raise UnsupportedError(
            f"kernel {identity.release} was built without CONFIG_IKHEADERS: it carries no headers "
            "archive; install its headers package instead"
        )
    if identity.ikheaders == "m":
        raise UnsupportedError(
            f"kernel {identity.release} has CONFIG_IKHEADERS=m but no kheaders module was found"
        )
    raise UnsupportedError(
        f"kernel {identity.release}: no headers archive found and no config to say why"
    )
