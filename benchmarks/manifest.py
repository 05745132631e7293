"""Hash manifests of a tree, to prove that a restore gave back exactly what was backed up.

An entry per path (relative to the tree's root, which itself is not compared):
    ("f", mode, size, blake3-hex)   regular file
    ("l", target)                   symlink (its target string, never followed)
    ("d", mode)                     directory
Owner and times are not compared: the benchmark runs as one user, and restored times are a
metadata question the tools' own tests answer. Permission bits are compared.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from blake3 import blake3

Entry = tuple


def _digest(path: str, size: int) -> str:
    hasher = blake3(max_threads=blake3.AUTO)
    if size:
        hasher.update_mmap(path)
    return hasher.hexdigest()


def manifest(root: str | Path) -> dict[str, Entry]:
    root = str(root)
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_size, _digest(path, st.st_size))
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


def total_bytes(entries: dict[str, Entry]) -> int:
    return sum(e[2] for e in entries.values() if e[0] == "f")


def compare(expected: dict[str, Entry], actual: dict[str, Entry], limit: int = 10) -> list[str]:
    """Human-readable differences (at most ``limit`` lines, then a count); empty if equal."""
    problems = []
    for rel in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(rel), actual.get(rel)
        if want == got:
            continue
        if got is None:
            problems.append(f"missing: {rel}")
        elif want is None:
            problems.append(f"unexpected: {rel}")
        elif want[0] != got[0]:
            problems.append(f"type differs: {rel} ({want[0]} vs {got[0]})")
        elif want[0] == "f" and want[2:] != got[2:]:
            problems.append(f"content differs: {rel} (size {want[2]} vs {got[2]})")
        elif want[0] == "l":
            problems.append(f"symlink target differs: {rel} ({want[1]!r} vs {got[1]!r})")
        else:
            problems.append(f"mode differs: {rel} ({want[1]:o} vs {got[1]:o})")
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more differences"]
    return problems


def find_restored_root(target: str | Path, source: str | Path, marker: str) -> Path | None:
    """Where inside ``target`` a restore put ``source``. restic recreates the absolute path
    (``target/tmp/snap-bench/src``); other tools may restore the directory itself or its
    contents. The corpus's marker file tells which."""
    target, source = Path(target), Path(source)
    for candidate in (target / str(source).lstrip("/"), target / source.name, target):
        if (candidate / marker).is_file():
            return candidate
    for dirpath, _, filenames in os.walk(target):
        if marker in filenames:
            return Path(dirpath)
    return None
