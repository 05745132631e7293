"""Small helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import os


def tree_digest(root: str) -> dict[str, str]:
    """sha256 of every regular file below ``root``, by path relative to ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def data_bytes(repo_dir: str) -> int:
    """Bytes stored under ``data/`` of a local repository (what prune should shrink)."""
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, fs in os.walk(os.path.join(repo_dir, "data")) for f in fs)
