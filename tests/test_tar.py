"""archive/tar.py: the tar formats GNU tar and Python write, read through the extractor.

The shortcuts beside their checked twins are held equal in test_extract_fastpaths.py.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from tests.archive_util import archive, extract_bytes, regular, symlink


@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param(tarfile.GNU_FORMAT, id="gnu"),
        pytest.param(tarfile.PAX_FORMAT, id="pax"),
        pytest.param(tarfile.USTAR_FORMAT, id="ustar-prefix"),
    ],
)
def test_long_names_are_accepted_in_every_tar_format(tmp_path: Path, fmt: int) -> None:
    name = "include/" + "d" * 90 + "/" + "f" * 60 + ".h"
    # ustar has no room for a link target over 100 bytes; the others do.
    long = fmt != tarfile.USTAR_FORMAT
    target = "../" + "t" * (90 if long else 10) + "/" + "u" * (60 if long else 10) + ".h"
    dest, result = extract_bytes(
        archive([regular(name, b"long"), symlink(name + "l", target)], fmt), tmp_path
    )
    assert (dest / name).read_bytes() == b"long"
    assert os.readlink(dest / (name + "l")) == target
    assert len(result.entries) == 2


def test_a_pax_mtime_with_a_fraction_is_kept_to_the_nanosecond(tmp_path: Path) -> None:
    info, data = regular("include/a.h")
    info.pax_headers = {"mtime": "1700000000.123456789"}
    dest, _ = extract_bytes(archive([(info, data)], tarfile.PAX_FORMAT), tmp_path)
    assert (dest / "include/a.h").stat().st_mtime_ns == 1_700_000_000_123_456_789
