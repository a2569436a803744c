"""The stamp we write at the top of every tree we generate: the identity it was made from.

JSON, one key per line (the initramfs hooks read `build_id` and `config_sha256` with `sed`), sorted
keys. Unknown keys are ignored so that an older tool can still read a newer tool's stamp; a missing
or mistyped key makes the stamp unreadable, and the tree is then treated as stale.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from kheaders_pkg.errors import KheadersError
from kheaders_pkg.kernel.btf import VmlinuxH
from kheaders_pkg.layout import STAMP_NAME

STAMP_FORMAT = 1
TOOL = "kheaders-pkg"


class ConfigSource(enum.StrEnum):
    """Where the kernel config came from; only the same source hashes comparably."""

    PROC = "proc"  # /proc/config.gz: the build config (CONFIG_IKCONFIG_PROC)
    MODULE = "configs.ko"  # the same data, from configs.ko on disk (CONFIG_IKCONFIG=m)
    BOOT = "boot-config"  # /boot/config-$KVER: the distro's copy, may differ (Debian strips lines)
    MODULES_DIR = "modules-config"  # /lib/modules/$KVER/config (Fedora, Arch): the distro's copy

    @property
    def is_build_config(self) -> bool:
        return self in (ConfigSource.PROC, ConfigSource.MODULE)


class ArchiveSource(enum.StrEnum):
    SYSFS = "sysfs"  # /sys/kernel/kheaders.tar.xz of the running kernel
    MODULE = "module"  # kheaders.ko on disk, for a kernel that is not running
    FILE = "file"  # --archive FILE


class StampError(KheadersError):
    """Our stamp is unreadable; the tree it sits in cannot be trusted."""


@dataclass(frozen=True)
class Stamp:
    release: str
    uts_version: str | None
    build_id: str | None
    config_sha256: str | None
    config_source: ConfigSource | None
    archive_sha256: str
    archive_size: int
    archive_source: ArchiveSource
    created: str
    generation: int
    file_count: int
    manifest_sha256: str
    tool_version: str
    # Added within format 1 (a stamp without them reads as None: made before vmlinux.h existed).
    btf_sha256: str | None = None  # the kernel BTF that vmlinux.h was made from
    vmlinux_h: VmlinuxH | None = None
    format: int = STAMP_FORMAT
    tool: str = TOOL

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


_OPTIONAL_STR = {"uts_version", "build_id", "config_sha256", "config_source"}
# Keys added since format 1 was first written: optional, so that older stamps stay readable and
# the format number stays, so that older tools (which ignore unknown keys) still read ours.
_ADDED = {"btf_sha256", "vmlinux_h"}
_INT = {"archive_size", "generation", "file_count", "format"}


def parse_stamp(text: str, where: str = STAMP_NAME) -> Stamp:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise StampError(f"{where}: not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(data, dict):
        raise StampError(f"{where}: not a JSON object")
    if data.get("tool") != TOOL:
        raise StampError(f"{where}: not a {TOOL} stamp")
    if not isinstance(data.get("format"), int) or data["format"] > STAMP_FORMAT:
        raise StampError(f"{where}: stamp format {data.get('format')!r} is not one this tool reads")
    values: dict[str, Any] = {}
    for f in fields(Stamp):
        if f.name not in data and f.name in _ADDED:
            values[f.name] = None
            continue
        if f.name not in data:
            raise StampError(f"{where}: missing key {f.name!r}")
        value = data[f.name]
        if f.name in _INT:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif f.name in _OPTIONAL_STR or f.name in _ADDED:
            ok = value is None or isinstance(value, str)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise StampError(f"{where}: key {f.name!r} has a bad value {value!r}")
        values[f.name] = value
    try:
        if values["config_source"] is not None:
            values["config_source"] = ConfigSource(values["config_source"])
        values["archive_source"] = ArchiveSource(values["archive_source"])
        if values["vmlinux_h"] is not None:
            values["vmlinux_h"] = VmlinuxH(values["vmlinux_h"])
    except ValueError as e:
        raise StampError(f"{where}: {e}") from None
    return Stamp(**values)


def read_stamp(tree: Path) -> Stamp:
    path = tree / STAMP_NAME
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise StampError(f"{path}: cannot read stamp ({e.strerror})") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise StampError(f"{path}: not UTF-8") from None
    return parse_stamp(text, str(path))


def has_stamp(tree: Path) -> bool:
    return (tree / STAMP_NAME).is_file()
