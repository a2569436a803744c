"""/etc/kheaders-pkg.toml: defaults, every key, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kheaders_pkg.config import Config, ForeignPolicy, PackageFormat, load_config
from kheaders_pkg.errors import ConfigError, ExitCode


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "kheaders-pkg.toml"
    p.write_text(text)
    return p


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.toml") == Config()


def test_missing_file_named_on_the_command_line_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", required=True)


def test_every_key_is_read(tmp_path: Path) -> None:
    c = load_config(
        write(
            tmp_path,
            """
trees_dir = "/var/lib/kheaders-pkg/trees"
state_dir = "/var/lib/kh"
keep_generations = 3
foreign = "divert"
lock_timeout = 5
emit = ["deb", "rpm"]
register = true
kbuild = true
kbuild_source = "/usr/src/linux-6.1"
""",
        )
    )
    assert c.trees_dir == "/var/lib/kheaders-pkg/trees"
    assert c.state_dir == "/var/lib/kh"
    assert c.keep_generations == 3
    assert c.foreign is ForeignPolicy.DIVERT
    assert c.lock_timeout == 5.0
    assert c.emit == (PackageFormat.DEB, PackageFormat.RPM)
    assert c.register is True
    assert c.kbuild is True
    assert c.kbuild_source == "/usr/src/linux-6.1"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("tree_dir = '/x'", "tree_dir"),
        ("trees_dir = 'relative/path'", "trees_dir"),
        ("trees_dir = '/usr/../etc'", "trees_dir"),
        ("keep_generations = -1", "keep_generations"),
        ("keep_generations = true", "keep_generations"),
        ("foreign = 'overwrite'", "foreign"),
        ("lock_timeout = 'soon'", "lock_timeout"),
        ("emit = 'deb'", "emit"),
        ("emit = ['zip']", "emit"),
        ("register = 1", "register"),
        ("register = true", "register"),  # without emit
        ("kbuild = 'yes'", "kbuild"),
        ("kbuild_source = 'linux'", "kbuild_source"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert repr(key) in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code is ExitCode.CONFIG


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "foreign = "))
