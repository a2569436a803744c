"""/etc/kheaders-pkg.toml (under --root) -> a frozen Config; errors name the key."""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from kheaders_pkg.errors import ConfigError
from kheaders_pkg.layout import DEFAULT_STATE_DIR, DEFAULT_TREES_DIR


class ForeignPolicy(enum.StrEnum):
    LEAVE = "leave"  # report a stale distro tree, never touch it (default)
    DIVERT = "divert"  # publish ours and repoint build/source, recording the originals for restore


class PublishChoice(enum.StrEnum):
    AUTO = "auto"  # a systemd-sysext extension when /usr cannot be written, else a tree (default)
    TREE = "tree"  # links in /lib/modules/$KVER
    SYSEXT = "sysext"  # always an extension under /var/lib/extensions


class PackageFormat(enum.StrEnum):
    DEB = "deb"
    RPM = "rpm"
    PACMAN = "pacman"


@dataclass(frozen=True)
class Config:
    trees_dir: str = DEFAULT_TREES_DIR
    state_dir: str = DEFAULT_STATE_DIR
    # Unreferenced generations kept per release (the previous tree, for a reader still in it).
    keep_generations: int = 1
    foreign: ForeignPolicy = ForeignPolicy.LEAVE
    # Seconds a run waits for another run's lock before giving up with the "busy" exit code.
    lock_timeout: float = 300.0
    # Package formats `sync` emits after a regeneration ([] = none), and whether it registers them.
    emit: tuple[PackageFormat, ...] = ()
    register: bool = False
    # Where build/source are published: see sysext.publish_mode.
    publish: PublishChoice = PublishChoice.AUTO
    # Make the tree build modules too (kbuild.py): Module.symvers recovered from the kernel,
    # the kbuild tools and source pieces from the distro's packages or from `kbuild_source`.
    kbuild: bool = False
    kbuild_source: str | None = None  # a kernel source tree of the same version (inside path)
    source: Path | None = field(default=None, compare=False)


_KEYS = {f.name for f in fields(Config)} - {"source"}


def _absolute_dir(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ConfigError(f"config key {key!r}: must be an absolute path, got {value!r}")
    norm = str(PurePosixPath(value))
    if ".." in PurePosixPath(value).parts or norm == "/":
        raise ConfigError(f"config key {key!r}: {value!r} is not a usable directory")
    return norm


def parse_config(data: dict[str, Any], source: Path | None = None) -> Config:
    where = f"{source}: " if source else ""
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}unknown config key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})"
        )
    values: dict[str, Any] = {"source": source}
    try:
        for key, value in data.items():
            if key in ("trees_dir", "state_dir"):
                values[key] = _absolute_dir(key, value)
            elif key == "keep_generations":
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
                    raise ConfigError(
                        f"config key {key!r}: must be an integer 0-100, got {value!r}"
                    )
                values[key] = value
            elif key == "foreign":
                values[key] = _choice(key, value, ForeignPolicy)
            elif key == "publish":
                values[key] = _choice(key, value, PublishChoice)
            elif key == "lock_timeout":
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ConfigError(f"config key {key!r}: must be seconds >= 0, got {value!r}")
                values[key] = float(value)
            elif key == "emit":
                if not isinstance(value, list):
                    raise ConfigError(
                        f'config key {key!r}: must be a list like ["deb"], got {value!r}'
                    )
                values[key] = tuple(_choice(key, v, PackageFormat) for v in value)
            elif key == "kbuild":
                if not isinstance(value, bool):
                    raise ConfigError(f"config key {key!r}: must be true or false, got {value!r}")
                values[key] = value
            elif key == "kbuild_source":
                values[key] = _absolute_dir(key, value)
            elif key == "register":
                if not isinstance(value, bool):
                    raise ConfigError(f"config key {key!r}: must be true or false, got {value!r}")
                values[key] = value
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    config = Config(**values)
    if config.register and not config.emit:
        raise ConfigError(f"{where}config key 'register': needs 'emit' to name a package format")
    return config


def _choice(key: str, value: Any, kind: type[enum.StrEnum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(str(m)) for m in kind)
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {allowed}") from None


def load_config(path: Path, *, required: bool = False) -> Config:
    """Read the file; a missing file gives the defaults unless it was named on the command line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: config file not found") from None
        return Config()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return parse_config(data, path)
