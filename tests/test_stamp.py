"""stamp.py: the stamp a generation carries, as JSON, read by every later version of the tool."""

from __future__ import annotations

import json

import pytest

from kheaders_pkg.stamp import parse_stamp


def test_stamp_from_before_vmlinux_h_still_reads() -> None:
    old = {
        "format": 1, "tool": "kheaders-pkg", "tool_version": "0.1.0", "release": "6.1.192-kh",
        "uts_version": None, "build_id": None, "config_sha256": None, "config_source": None,
        "archive_sha256": "0" * 64, "archive_size": 1, "archive_source": "sysfs",
        "created": "2026-11-22T06:30:00Z", "generation": 1, "file_count": 1,
        "manifest_sha256": "0" * 64,
    }  # fmt: skip
    stamp = parse_stamp(json.dumps(old))
    assert stamp.btf_sha256 is None and stamp.vmlinux_h is None
    with pytest.raises(Exception, match="vmlinux_h"):
        parse_stamp(json.dumps({**old, "vmlinux_h": 3}))
