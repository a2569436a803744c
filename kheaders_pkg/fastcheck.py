"""The boot-time fast path of `check`: answer "fresh" without loading the full CLI, or defer.

The boot unit runs `check` (through the ExecCondition= wrapper) on every boot, and nearly always
the answer is "fresh". Python's start-up is most of that cost; the full CLI adds argparse,
dataclasses, enum, pathlib, logging and json (and through json, re): several times the start-up
itself (benchmarks/README.md, figure 1). This module answers the common case with the modules
the interpreter has already loaded, plus zlib and two C accelerators, and returns None for
anything else so that the full CLI decides:

- only `[--root R] [--kernel-fs K] [-q|--quiet] check [--condition]`, spelled exactly;
- no configuration file (its keys could move the trees dir or make the run a config error);
- a running kernel with a release, a GNU build id, /proc/config.gz and the archive in sysfs;
- `build` and `source` are symlinks leading (inside --root, as layout.resolve_inside follows
  them) to the same directory under the trees dir, holding a stamp that parses exactly as
  stamp.parse_stamp would accept it, and whose release, build id, build-config hash, archive
  size and `uname -v` equal the kernel's.

Every check mirrors the full path and any doubt returns None, so the answer never differs from
`kheaders-pkg check` (tests/test_fastcheck.py compares them over a table of states). The
constants below are copies: the source of truth is named beside each, and
tests/test_fastcheck.py asserts they agree, because importing those modules costs more than the
whole fast path (measured with `python -X importtime`, benchmarks/README.md).
"""

import os
import zlib

# --- copies of facts that live elsewhere (asserted equal by tests/test_fastcheck.py) ----------
STAMP_NAME = ".kheaders-pkg.json"  # layout.STAMP_NAME
DEFAULT_TREES_DIR = "/usr/src/kheaders-pkg"  # layout.DEFAULT_TREES_DIR (config.Config.trees_dir)
MODULES_DIR = "/lib/modules"  # layout.MODULES_DIR
CONFIG_PATH = "/etc/kheaders-pkg.toml"  # layout.CONFIG_PATH
MAX_SYMLINKS = 40  # layout.MAX_SYMLINKS
SMALL = 1 << 20  # kernel.identity._SMALL: most we read of a /proc or /sys file
MAX_CONFIG_BYTES = 16 * 1024 * 1024  # kernel.kconfig.MAX_CONFIG_BYTES
STAMP_FORMAT = 1  # stamp.STAMP_FORMAT
TOOL = "kheaders-pkg"  # stamp.TOOL
# stamp.Stamp's fields and how stamp.parse_stamp checks each.
STAMP_INT = ("archive_size", "generation", "file_count", "format")
STAMP_OPTIONAL_STR = ("uts_version", "build_id", "config_sha256", "config_source")
STAMP_STR = (
    "release",
    "archive_sha256",
    "archive_source",
    "created",
    "manifest_sha256",
    "tool_version",
    "tool",
)
CONFIG_SOURCES = ("proc", "configs.ko", "boot-config", "modules-config")  # stamp.ConfigSource
BUILD_CONFIG_SOURCES = ("proc", "configs.ko")  # ConfigSource.is_build_config
ARCHIVE_SOURCES = ("sysfs", "module", "file")  # stamp.ArchiveSource
# stamp._ADDED: optional keys (absent in older stamps) and the values of one of them.
STAMP_ADDED = ("btf_sha256", "vmlinux_h")
VMLINUX_H_STATES = ("made", "no-btf", "no-bpftool", "failed")  # kernel.btf.VmlinuxH
EXIT_FRESH = 0  # errors.ExitCode.OK (verdict fresh)
CONDITION_SKIP = 1  # condition.SKIP: --condition exits 1 when no sync is needed
NT_GNU_BUILD_ID = 3  # kernel.notes.NT_GNU_BUILD_ID
# publish = sysext (sysext.py): where /usr is read-only, the generation under /var and the links
# in a systemd-sysext extension.
VAR_TREES_DIR = "/var/lib/kheaders-pkg/trees"  # layout.VAR_TREES_DIR (sysext.trees_dir_for)
EXTENSIONS_DIR = "/var/lib/extensions"  # layout.EXTENSIONS_DIR
EXTENSION_PREFIX = "kheaders-pkg-"  # layout.EXTENSION_PREFIX
RELEASE_DIR = "usr/lib/extension-release.d"  # sysext.RELEASE_DIR
OSTREE_BOOTED = "/run/ostree-booted"  # sysext.OSTREE_BOOTED
SYSEXT_PATHS = ("/usr/bin/systemd-sysext", "/bin/systemd-sysext")  # sysext.SYSEXT_PATHS
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")  # sysext.OS_RELEASE_PATHS
SYSTEMD_ARCH = {  # sysext._SYSTEMD_ARCH
    "x86_64": "x86-64",
    "i386": "x86",
    "i486": "x86",
    "i586": "x86",
    "i686": "x86",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64-le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loongarch64",
}

# sha256 and JSON through their C accelerators: `hashlib` loads OpenSSL (~10 ms under load) and
# `json` imports `re`; both cost more than everything else here. Fall back to the public modules.
try:
    from _sha256 import sha256  # type: ignore[import-not-found]  # CPython 3.11 (3.12: _sha2)
except ImportError:  # pragma: no cover - other interpreters
    from hashlib import sha256


class _Defer(Exception):
    """Not certain: the full CLI decides."""


def fast_check(argv: list[str]) -> int | None:
    """An exit code when the answer is certain without the full machinery, else None."""
    try:
        args = _parse(argv)
        if args is None:
            return None
        root, kernel_fs, quiet, condition = args
        line = _fresh_line(root, kernel_fs)
    except Exception:  # any doubt at all: the full CLI answers (with its own errors)
        return None
    if not quiet:
        try:
            print(line, flush=True)
        except BrokenPipeError:  # the reader left (`check | head -0`): the verdict stands
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
    return CONDITION_SKIP if condition else EXIT_FRESH


# --- the command line -----------------------------------------------------------------------


def _parse(argv: list[str]) -> tuple[str, str, bool, bool] | None:
    """(root, kernel_fs, quiet, condition) for exactly the spellings we know, else None."""
    values: dict[str, str] = {}
    quiet = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-q", "--quiet"):
            quiet = True
        elif arg in ("--root", "--kernel-fs"):
            if i + 1 >= len(argv) or arg in values or argv[i + 1].startswith("-"):
                return None
            values[arg] = argv[i + 1]
            i += 1
        elif arg.startswith(("--root=", "--kernel-fs=")):
            name, _, value = arg.partition("=")
            if name in values:
                return None
            values[name] = value
        else:
            break
        i += 1
    rest = argv[i:]
    if rest == ["check"]:
        condition = False
    elif rest == ["check", "--condition"]:
        condition = True
    else:
        return None
    root = _norm_root(values.get("--root", "/"))
    kernel_fs = values.get("--kernel-fs", "/")
    if root is None or not kernel_fs:
        return None
    return root, kernel_fs, quiet, condition


def _norm_root(root: str) -> str | None:
    """The root as pathlib spells it (no empty or "." parts); None for "" or any "..".

    The result has no trailing slash: "" stands for "/", so that root + "/x" is right for both.
    """
    if not root:
        return None
    parts = [p for p in root.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    if root.startswith("/"):
        return "/".join(["", *parts])
    return "/".join(parts) if parts else None


# --- paths inside the root (layout.resolve_inside, on strings) --------------------------------


def _join(root: str, parts: list[str]) -> str:
    if not parts:
        return root or "/"
    return root + "/" + "/".join(parts) if root else "/" + "/".join(parts)


def _resolve_inside(root: str, inside: str) -> str:
    """layout.resolve_inside: follow symlinks as if chrooted into root; _Defer on a loop."""
    parts = [p for p in inside.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = _join(root, [*resolved, part])
        try:
            target = os.readlink(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        except OSError as e:
            if e.errno == 22:  # EINVAL: not a symlink
                resolved.append(part)
                continue
            raise
        links += 1
        if links > MAX_SYMLINKS:
            raise _Defer("symlink loop")
        target_parts = [p for p in target.split("/") if p]
        if target.startswith("/"):
            resolved = []
        parts = target_parts + parts
    return _join(root, resolved)


# --- the kernel (kernel.identity.live_facts) ---------------------------------------------------


def _read_small(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(SMALL)


def _text(path: str) -> str:
    return _read_small(path).decode().strip("\n")


def _build_id(blob: bytes) -> str:
    """kernel.notes.read_build_id, with every malformed case a _Defer (the full path says 7)."""
    found: str | None = None
    offset = 0
    size = len(blob)
    while offset < size:
        if not any(blob[offset:]):
            break
        if offset % 8 == 4 and blob[offset : offset + 4] == b"\0\0\0\0":
            offset += 4
            continue
        if offset + 12 > size:
            raise _Defer("truncated note")
        namesz = int.from_bytes(blob[offset : offset + 4], "little")
        descsz = int.from_bytes(blob[offset + 4 : offset + 8], "little")
        note_type = int.from_bytes(blob[offset + 8 : offset + 12], "little")
        name_start = offset + 12
        if namesz == 0 or namesz > size - name_start:
            raise _Defer("bad note name size")
        desc_start = (name_start + namesz + 3) & ~3
        if descsz and (desc_start > size or descsz > size - desc_start):
            raise _Defer("bad note desc size")
        name = blob[name_start : name_start + namesz]
        if name[-1] != 0 or not all(0x20 <= b < 0x7F for b in name[:-1]):
            raise _Defer("bad note name")
        if name == b"GNU\0" and note_type == NT_GNU_BUILD_ID:
            desc = blob[desc_start : desc_start + descsz]
            if not desc or (found is not None and found != desc.hex()):
                raise _Defer("bad build id")
            found = desc.hex()
        offset = min((desc_start + descsz + 3) & ~3, size)
    if found is None:
        raise _Defer("no build id")
    return found


def _config_sha256(path: str) -> str:
    """kernel.kconfig.gunzip_config + config_sha256 of /proc/config.gz."""
    d = zlib.decompressobj(wbits=31)
    text = d.decompress(_read_small(path), MAX_CONFIG_BYTES)
    if d.unconsumed_tail:
        raise _Defer("config too large")
    text += d.flush()
    if not d.eof or b"CONFIG_" not in text[:65536]:
        raise _Defer("not a config")
    return str(sha256(text).hexdigest())


# --- the stamp (stamp.parse_stamp) --------------------------------------------------------------


class _JSONContext:
    """What json's C scanner reads from a JSONDecoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"),
        "Infinity": float("inf"),
        "NaN": float("nan"),
    }.__getitem__
    memo: dict[str, str] = {}


def _loads(text: str) -> object:
    """json.loads(text) through the C scanner, which does not import `re`."""
    try:
        from _json import make_scanner
    except ImportError:  # pragma: no cover - other interpreters
        import json

        return json.loads(text)
    ws = " \t\n\r"
    start = 0
    while start < len(text) and text[start] in ws:
        start += 1
    value, end = make_scanner(_JSONContext())(text, start)  # type: ignore[arg-type]
    while end < len(text) and text[end] in ws:
        end += 1
    if end != len(text):
        raise _Defer("trailing data")
    return value


def _stamp(tree: str) -> dict[str, object]:
    data = _loads(_read_small_file(tree + "/" + STAMP_NAME).decode())
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        raise _Defer("not our stamp")
    for key in STAMP_INT:
        v = data[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise _Defer(key)
    if data["format"] > STAMP_FORMAT:
        raise _Defer("newer stamp format")
    for key in STAMP_OPTIONAL_STR:
        if data[key] is not None and not isinstance(data[key], str):
            raise _Defer(key)
    for key in STAMP_STR:
        if not isinstance(data[key], str):
            raise _Defer(key)
    if data["config_source"] not in (None, *CONFIG_SOURCES):
        raise _Defer("config_source")
    if data["archive_source"] not in ARCHIVE_SOURCES:
        raise _Defer("archive_source")
    for key in STAMP_ADDED:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise _Defer(key)
    if data.get("vmlinux_h") not in (None, *VMLINUX_H_STATES):
        raise _Defer("vmlinux_h")
    return data


def _read_small_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- the tree (tree.read_link, tree.tree_state) -------------------------------------------------


def _link(root: str, links_inside: str, name: str) -> str:
    """Where build/source in `links_inside` leads, on this machine, when it is a symlink to a
    directory."""
    link_inside = f"{links_inside}/{name}"
    path = _resolve_inside(root, links_inside) + "/" + name
    target = os.readlink(path)  # OSError (absent, not a link): defer
    if target.startswith("/"):
        inside = target
    else:
        inside = link_inside.rsplit("/", 1)[0] + "/" + target
    host = _resolve_inside(root, inside)
    if not os.path.isdir(host):
        raise _Defer("link does not lead to a directory")
    return host


def _fresh_line(root: str, kernel_fs: str) -> str:
    """The line `check` prints for a fresh tree of ours, or _Defer."""
    try:
        os.stat(_resolve_inside(root, CONFIG_PATH))
    except FileNotFoundError:
        pass
    else:
        raise _Defer("a configuration file exists")

    kfs = kernel_fs.rstrip("/") or ""
    release = _text(kfs + "/proc/sys/kernel/osrelease")
    if (
        not release
        or release in (".", "..")
        or "/" in release
        or "\0" in release
        or "\n" in release
        or len(release.encode()) > 255
    ):
        raise _Defer("bad release")
    build_id = _build_id(_read_small(kfs + "/sys/kernel/notes"))
    config_sha = _config_sha256(kfs + "/proc/config.gz")
    archive_size = os.stat(kfs + "/sys/kernel/kheaders.tar.xz").st_size
    try:
        uts: str | None = _text(kfs + "/proc/sys/kernel/version")
    except FileNotFoundError:
        uts = None

    if _usr_writable(root):
        links_inside, trees_dir, extension = f"{MODULES_DIR}/{release}", DEFAULT_TREES_DIR, ""
    else:
        ext_inside = f"{EXTENSIONS_DIR}/{EXTENSION_PREFIX}{release}"
        links_inside, trees_dir = f"{ext_inside}/usr/lib/modules/{release}", VAR_TREES_DIR
        extension = _extension_suffix(root, release, ext_inside, links_inside)
    build = _link(root, links_inside, "build")
    source = _link(root, links_inside, "source")
    trees = _resolve_inside(root, trees_dir)
    if build != source or not build.startswith(trees.rstrip("/") + "/"):
        raise _Defer("not one tree of ours")
    if not os.path.isfile(build + "/" + STAMP_NAME):
        raise _Defer("no stamp")
    stamp = _stamp(build)
    if (
        stamp["release"] != release
        or stamp["build_id"] != build_id
        or stamp["config_source"] not in BUILD_CONFIG_SOURCES
        or stamp["config_sha256"] != config_sha
        or stamp["archive_size"] != archive_size
        or (uts is not None and stamp["uts_version"] is not None and stamp["uts_version"] != uts)
    ):
        raise _Defer("not fresh")
    return (
        f"fresh: headers match the running kernel (generation {stamp['generation']}, by build id)"
        + extension
    )


# --- publish = sysext (sysext.publish_mode, sysext.extension_state, verdict._extension_verdict) -


def _usr_writable(root: str) -> bool:
    """sysext.publish_mode with no configuration: a tree unless /usr cannot be written; then an
    extension if the root has systemd-sysext, else (publish = var) _Defer."""
    if os.path.lexists(_resolve_inside(root, OSTREE_BOOTED)) or (
        _read_only(_resolve_inside(root, "/usr"))
        and _read_only(_resolve_inside(root, DEFAULT_TREES_DIR))
    ):
        if not any(os.access(_resolve_inside(root, p), os.X_OK) for p in SYSEXT_PATHS):
            raise _Defer("no systemd-sysext where sysext.py looks first")
        return False
    return True


def _read_only(path: str) -> bool:
    while True:
        try:
            return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent


def _extension_suffix(root: str, release: str, ext_inside: str, links_inside: str) -> str:
    """What the fresh line adds for our extension; _Defer unless systemd-sysext would merge it
    and, on the running system, has (/lib/modules shows our link)."""
    ext = _resolve_inside(root, EXTENSIONS_DIR) + "/" + EXTENSION_PREFIX + release
    if not os.path.isdir(ext) or os.path.islink(ext):
        raise _Defer("no extension")
    name = EXTENSION_PREFIX + release
    label = _os_release(_read_small_file(f"{ext}/{RELEASE_DIR}/extension-release.{name}"))
    host: dict[str, str] | None = None
    for inside in OS_RELEASE_PATHS:
        try:
            host = _os_release(_read_small_file(_resolve_inside(root, inside)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        break
    if host is None or not _label_ok(label, host, SYSTEMD_ARCH.get(os.uname().machine)):
        raise _Defer("extension label")
    if os.path.realpath(root or "/") != "/":
        return f"; systemd-sysext extension {name}, not merged: --root is not the running system"
    ours = os.readlink(_resolve_inside(root, links_inside) + "/build")
    view = os.readlink(_resolve_inside(root, f"{MODULES_DIR}/{release}") + "/build")
    if view != ours:
        raise _Defer("not merged")
    return f"; systemd-sysext extension {name}, merged"


def _os_release(data: bytes) -> dict[str, str]:
    """sysext.parse_os_release."""
    out: dict[str, str] = {}
    for raw in data.decode().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            continue
        out[key] = _unquote(value)
    return out


def _unquote(value: str) -> str:
    """sysext._unquote: shell quoting as os-release(5) allows it."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner, out, i = value[1:-1], [], 0
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner) and inner[i + 1] in '\\"$`':
                i += 1
            out.append(inner[i])
            i += 1
        return "".join(out)
    return value


def _label_ok(label: dict[str, str], host: dict[str, str], arch: str | None) -> bool:
    """sysext.label_problem(...) is None."""
    ext_id = label.get("ID")
    if ext_id is None or (ext_id != "_any" and ext_id != host.get("ID", "linux")):
        return False
    if ext_id != "_any":
        level, version = label.get("SYSEXT_LEVEL"), label.get("VERSION_ID")
        host_level = host.get("SYSEXT_LEVEL") or None
        if level is not None and host_level is not None:
            if level != host_level:
                return False
        elif version is not None:
            if version != (host.get("VERSION_ID") or None):
                return False
        elif level is None:
            return False
    label_arch = label.get("ARCHITECTURE")
    return label_arch is None or arch is None or label_arch == arch
