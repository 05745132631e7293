"""Listing and searching snapshot trees: what ``ls`` and ``find`` walk, with restic's rules.

Paths are absolute ``bytes`` inside the snapshot (``/home/user/file``), as ``walker.walk``
yields them. Nothing here prints; the CLI renders the (path, node) pairs.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable, Iterator, Protocol

from . import filters
from .errors import PathNotFound
from .tree import Node
from .walker import find_node, walk


class PathMatcher(filters.PathMatcher, Protocol):
    """What ``find`` needs of a pattern list (``dedupe.filters.PatternList`` fits)."""

    def child_may_match(self, dir_path: bytes) -> bool: ...


def has_path_prefix(prefix: bytes, path: bytes) -> bool:
    """restic's ``fs.HasPathPrefix``: ``path`` is ``prefix`` itself or lies below it."""
    if prefix == b"/":
        return path.startswith(b"/")
    return path == prefix or path.startswith(prefix + b"/")


def clean_absolute(path: str | bytes) -> bytes:
    """Normalize an absolute snapshot path (``//a/./b/`` -> ``/a/b``); ValueError if relative."""
    raw = os.fsencode(path)
    if not raw.startswith(b"/"):
        raise ValueError(f"path {os.fsdecode(raw)!r} must be absolute (start with '/')")
    cleaned = posixpath.normpath(raw)
    return b"/" + cleaned.lstrip(b"/")


def subtree_root(repo, root: bytes, subpath: str | bytes) -> bytes:
    """The tree id of the directory ``subpath`` inside the tree ``root`` (``ID:PATH``)."""
    node = find_node(repo, root, subpath)
    if node["type"] != "dir" or node.get("subtree") is None:
        raise PathNotFound(f"{os.fsdecode(subpath)} is a {node['type']}, not a directory")
    return node["subtree"]


def list_tree(repo, root: bytes, dirs: Iterable[bytes] = (), recursive: bool = False
              ) -> Iterator[tuple[bytes, Node]]:
    """Yield the (path, node) pairs ``ls`` shows, depth first in name order.

    Without ``dirs``: every node of the tree. With ``dirs`` (absolute, cleaned): each dir
    itself and its direct entries, or everything below it with ``recursive`` (restic's
    ``ls SNAPSHOT DIR...``). Branches that neither lie in nor lead to a dir are not loaded.
    """
    dirs = list(dirs)
    if not dirs:
        yield from walk(repo, root)
        return

    def within(path: bytes) -> bool:
        return any(has_path_prefix(d, path) for d in dirs)

    def approaching(path: bytes) -> bool:
        return any(has_path_prefix(path, d) for d in dirs)

    def descend(path: bytes, node: Node) -> bool:
        return (recursive and within(path)) or approaching(path)

    for path, node in walk(repo, root, b"/", descend):
        if within(path):
            yield path, node


def check_dirs_exist(repo, root: bytes, dirs: Iterable[bytes]) -> None:
    """Raise PathNotFound naming the first of ``dirs`` that the tree does not hold."""
    for d in dirs:
        if d != b"/":
            find_node(repo, root, d)


def find_in_tree(repo, root: bytes, patterns: PathMatcher, *, oldest_ns: int | None = None,
                 newest_ns: int | None = None) -> Iterator[tuple[bytes, Node]]:
    """Yield the (path, node) pairs whose path matches ``patterns`` (restic ``find``).

    restic matches the whole path: an unanchored pattern matches a run of components at any
    depth, and a match on a directory is a match on everything below it. Directories whose
    contents cannot match (anchored patterns) are not loaded. ``oldest_ns``/``newest_ns``
    bound the mtime of what is reported (not of what is searched).
    """

    def descend(path: bytes, node: Node) -> bool:
        return patterns.matches(path) or patterns.child_may_match(path)

    for path, node in walk(repo, root, b"/", descend):
        if not patterns.matches(path):
            continue
        mtime = node.get("mtime", 0)
        if oldest_ns is not None and mtime < oldest_ns:
            continue
        if newest_ns is not None and mtime > newest_ns:
            continue
        yield path, node
