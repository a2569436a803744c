"""The disk our published trees take, each inode counted once.

Generations share inodes: a re-sync and a new kernel hard-link every file equal to one already
published (archive/reuse.py). `du` of each tree would count a shared file once per tree; here the
blocks of an inode are counted once, by (st_dev, st_ino), over every generation of every kernel.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DiskUse:
    trees: int  # generations walked
    names: int  # files, directories and symlinks, as listed in the trees
    inodes: int  # distinct inodes among them
    bytes: int  # st_blocks * 512 of each distinct inode, once
    listed_bytes: int  # the same, counted once per name (what `du` of each tree adds up to)

    @property
    def shared_bytes(self) -> int:
        """What sharing saves: blocks reached through more than one name."""
        return self.listed_bytes - self.bytes


def disk_use(trees: Iterable[Path]) -> DiskUse:
    """Walk `trees` (never following a symlink) and count each inode's blocks once."""
    seen: set[tuple[int, int]] = set()
    count = names = total = listed = 0
    for tree in trees:
        try:
            st = os.lstat(tree)
        except OSError:
            continue
        count += 1
        stack = [tree]
        _add(st, seen)
        names += 1
        listed += st.st_blocks * 512
        total += st.st_blocks * 512
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for e in entries:
                try:
                    est = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                names += 1
                size = est.st_blocks * 512
                listed += size
                if _add(est, seen):
                    total += size
                if stat.S_ISDIR(est.st_mode):
                    stack.append(Path(e.path))
    return DiskUse(count, names, len(seen), total, listed)


def _add(st: os.stat_result, seen: set[tuple[int, int]]) -> bool:
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True
