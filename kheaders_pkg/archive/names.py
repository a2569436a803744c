"""Names inside a generated tree: the rules every member path, link target and manifest path obey.

A name is checked before anything is written under it: Linux's NAME_MAX and PATH_MAX, no NUL, no
'..', no empty or '.' component, valid UTF-8 and no control character (a tab or newline would break
the manifest's line format). A symlink's target must stay inside the tree.
"""

from __future__ import annotations

import re

from kheaders_pkg.errors import ArchiveError

NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
PATH_MAX = 4095  # bytes in a path, without the NUL (Linux PATH_MAX - 1)

CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def show(name: bytes | str) -> str:
    """A name for a one-line message: quoted, control characters and bad UTF-8 escaped."""
    text = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
    if len(text) > 160:
        text = f"{text[:100]}...{text[-40:]}"
    return repr(text)


def decode_name(raw: bytes, what: str) -> str:
    """Raw name bytes -> text, or ArchiveError naming `what` (e.g. "member 'x'")."""
    if len(raw) > PATH_MAX:
        raise ArchiveError(f"{what}: name longer than {PATH_MAX} bytes")
    if b"\0" in raw:
        raise ArchiveError(f"{what}: name contains a NUL byte")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveError(f"{what}: name is not valid UTF-8") from None
    if CONTROL.search(text):
        # A tab or newline would break the manifest's line format; no header has either.
        raise ArchiveError(f"{what}: name contains a control character (tab, newline, ...)")
    return text


def decode_relative(raw: bytes, what: str, noun: str) -> str:
    """decode_name(), and the text must be a relative path: not empty, not starting with "/"."""
    text = decode_name(raw, what)
    if not text:
        raise ArchiveError(f"{what}: empty {noun}")
    if text.startswith("/"):
        raise ArchiveError(f"{what}: absolute {noun}")
    return text


def check_components(parts: list[str], what: str) -> None:
    for part in parts:
        if part == "..":
            raise ArchiveError(f"{what}: '..' component")
        if part in ("", "."):
            raise ArchiveError(f"{what}: empty or '.' component")
        if len(part.encode()) > NAME_MAX:
            raise ArchiveError(f"{what}: a path component is longer than {NAME_MAX} bytes")


# A path every check below would pass: printable ASCII components of 1-255 bytes, none "." or "..",
# separated by single slashes. One C call for the common case; anything else is checked piecewise.
_PLAIN_COMPONENT = rb"(?!\.\.?(?:/|\Z))[\x20-\x2e\x30-\x7e]{1,255}"
PLAIN_PATH = re.compile(rb"(?:%s/)*%s" % (_PLAIN_COMPONENT, _PLAIN_COMPONENT))
PLAIN_TEXT_PATH = re.compile(PLAIN_PATH.pattern.decode("ascii"))


def symlink_target(path: str, raw: bytes) -> str:
    """Check a symlink's target; it must stay inside the tree.

    Only `(../)*name(/name)*` is accepted, with at most as many `..` as the link's directory is
    deep. A purely lexical check of e.g. `s/../x` is not enough: if `s` is itself a symlink the
    kernel resolves `..` from wherever `s` points. With `..` only in front, resolution starts from
    the link's real directory (one this extraction created) and then only descends, so every link
    in the tree stays inside it. The kernel's own links (`../../uapi/linux/input-event-codes.h`,
    `qcom,dispcc-sm8250.h`) have this form.
    """
    what = f"member {show(path)}: symlink target {show(raw)}"
    target = decode_relative(raw, what, "target")
    parts = target.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ups > path.count("/"):
        raise ArchiveError(f"{what}: escapes the tree")
    rest = parts[ups:]
    if not rest and ups == 0:
        raise ArchiveError(f"{what}: empty target")
    for part in rest:
        if part == "..":
            raise ArchiveError(f"{what}: '..' after a name may escape the tree through a symlink")
    check_components(rest, what)
    return target
