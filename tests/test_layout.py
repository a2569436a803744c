"""layout.py: paths inside the target root are resolved inside it, never on the host."""

from __future__ import annotations

import os
from pathlib import Path

from kheaders_pkg.layout import Layout, LinkName, resolve_inside
from kheaders_pkg.tree import read_link


def test_absolute_link_is_resolved_inside_the_root_not_on_the_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/modules/6.1.192-kh").mkdir(parents=True)
    os.symlink("/usr/lib", root / "lib")  # merged-usr with an absolute link
    os.symlink("/etc", root / "usr/lib/modules/6.1.192-kh/build")  # points at /etc of the ROOT
    link = read_link(Layout(root=root), "6.1.192-kh", LinkName.BUILD)
    assert link.resolved is None and link.problem == "dangling"  # root/etc does not exist
    assert resolve_inside(root, "/lib/modules") == root / "usr/lib/modules"


def test_dotdot_cannot_climb_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("../../../../../../etc", root / "escape")
    assert resolve_inside(root, "/escape/passwd") == root / "etc/passwd"
