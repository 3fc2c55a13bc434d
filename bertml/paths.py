"""Local path comparisons that every stage shares (inputs, outputs, checkpoints): resolved
paths, and folders seen through bind mounts. No imports from bertml: any module may use it."""

from __future__ import annotations

import os


def resolved(path: str) -> str:
    """A local path with ~, `.`, `..` and symlinks resolved (what path comparisons must use)."""
    return os.path.realpath(os.path.expanduser(path))


def within(path: str, root: str) -> bool:
    """`path` is `root` or below it (both resolved or both object-store keys)."""
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


def same_or_below(path: str, folder: str) -> bool:
    """Local `path` is `folder` or below it: compared resolved, and by (device, inode) of each
    of its existing ancestors, so a bind mount or a second mount of the same folder is seen."""
    p, f = resolved(path), resolved(folder)
    if within(p, f):
        return True
    try:
        target = os.stat(f)
    except OSError:
        return False
    while True:
        try:
            st = os.stat(p)
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                return True
        except OSError:
            pass
        parent = os.path.dirname(p)
        if parent == p:
            return False
        p = parent
