"""Kernel configuration text: its hash, the options that matter, and kbuild's derived files."""

from __future__ import annotations

import hashlib
import re
import zlib

from kheaders_pkg.errors import KernelDataError

# /proc/config.gz is ~60 KB of gzip for ~260 KB of text; anything far larger is not a config.
MAX_CONFIG_BYTES = 16 * 1024 * 1024

_OPTION = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")


def gunzip_config(data: bytes, where: str) -> bytes:
    """Decompress a gzip'd config (bounded); KernelDataError if it is not gzip or too large."""
    try:
        # wbits=31: gzip container only; a raw or zlib stream is not what the kernel exports.
        d = zlib.decompressobj(wbits=31)
        text = d.decompress(data, MAX_CONFIG_BYTES)
        if d.unconsumed_tail:
            raise KernelDataError(f"{where}: config larger than {MAX_CONFIG_BYTES} bytes")
        text += d.flush()
    except zlib.error as e:
        raise KernelDataError(f"{where}: not a gzip'd kernel config ({e})") from None
    if not d.eof:
        raise KernelDataError(f"{where}: truncated gzip data")
    return text


def config_sha256(config: bytes) -> str:
    """The hash of the decompressed build config (background.md 2: hash the text, not the gzip)."""
    return hashlib.sha256(config).hexdigest()


def parse_config(config: bytes) -> dict[str, str]:
    """`CONFIG_X=value` lines -> {"CONFIG_X": "value"}; `# CONFIG_X is not set` lines are absent."""
    options: dict[str, str] = {}
    for line in config.decode("utf-8", "replace").splitlines():
        m = _OPTION.match(line)
        if m:
            options[m.group(1)] = m.group(2)
    return options


def looks_like_config(config: bytes) -> bool:
    return b"CONFIG_" in config[:65536]


def option(config: bytes, name: str) -> str | None:
    """The value of one option without parsing the whole file (the boot path asks for one)."""
    m = re.search(rb"^" + re.escape(name.encode()) + rb"=(.*)$", config, re.MULTILINE)
    return m.group(1).decode("utf-8", "replace") if m else None


def render_auto_conf(config: bytes) -> bytes:
    """include/config/auto.conf as kbuild writes it: every option that is set, with its value.

    kbuild's `syncconfig` writes the set symbols in its own order; the content (one `CONFIG_X=v`
    line per set option, under a generated-file header) is what Makefiles and tools read. Since
    Linux 5.18 string values are written without their quotes and escapes (scripts/kconfig
    print_symbol_for_autoconf): the top Makefile compares CONFIG_CC_VERSION_TEXT in a shell
    test that quotes break.
    """
    unquote = _config_version(config) >= (5, 18)
    lines = [
        b"#",
        b"# Automatically generated file; DO NOT EDIT.",
        b"# Written by kheaders-pkg from the running kernel's configuration",
        b"#",
    ]
    for line in config.splitlines():
        if line.startswith(b"CONFIG_") and b"=" in line and not line.endswith(b"=n"):
            lines.append(_unquoted(line) if unquote else line)
    return b"\n".join(lines) + b"\n"


# The header kconfig writes at the top of .config: "# Linux/x86 6.1.192 Kernel Configuration".
_CONFIG_HEADER = re.compile(rb"^# Linux/\S+ (\d+)\.(\d+)\S* Kernel Configuration$", re.MULTILINE)


def _config_version(config: bytes) -> tuple[int, int]:
    """(major, minor) from the config's header; a config without one is taken as current."""
    m = _CONFIG_HEADER.search(config[:4096])
    return (int(m.group(1)), int(m.group(2))) if m else (99, 0)


def _unquoted(line: bytes) -> bytes:
    name, _, value = line.partition(b"=")
    if len(value) >= 2 and value.startswith(b'"') and value.endswith(b'"'):
        value = re.sub(rb"\\(.)", rb"\1", value[1:-1])
    return name + b"=" + value


def autoconf_disagreements(config: bytes, autoconf_h: bytes) -> list[str]:
    """Options whose value in the archive's include/generated/autoconf.h differs from the config.

    A known kbuild bug can leave a stale autoconf.h in the archive after a config-only change
    (background.md 1); we report it, and trust the config.
    """
    want: dict[str, str] = {}
    for key, value in parse_config(config).items():
        if value == "y":
            want[key] = "1"
        elif value == "m":
            want[key + "_MODULE"] = "1"
        else:
            want[key] = value
    have: dict[str, str] = {}
    for m in re.finditer(rb"^#define (CONFIG_[A-Za-z0-9_]+) (.*)$", autoconf_h, re.MULTILINE):
        have[m.group(1).decode()] = m.group(2).decode("utf-8", "replace")

    def same(key: str) -> bool:
        w, h = want.get(key), have.get(key)
        # kconfig writes hex symbols to autoconf.h with a 0x prefix even where .config has none.
        return w == h or (w is not None and h is not None and h.lower() == "0x" + w.lower())

    return [k for k in sorted(set(want) | set(have)) if not same(k)]
