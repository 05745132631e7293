"""Walking snapshot trees: the one traversal that ls, find, diff, restore, stats, check,
prune and mount share."""

from __future__ import annotations

from typing import Callable, Iterator

from .errors import PathNotFound
from .packs import BLOB_TREE
from .tree import Node, decode_tree


def load_tree(repo, tree_id: bytes) -> list[Node]:
    return decode_tree(repo.load_blob(BLOB_TREE, tree_id), f"tree {tree_id.hex()[:16]}")


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent != b"/" else b"/" + name


def walk(repo, tree_id: bytes, prefix: bytes = b"/",
         descend: Callable[[bytes, Node], bool] | None = None) -> Iterator[tuple[bytes, Node]]:
    """Yield (path, node) depth first in name order; directories before their contents.

    ``descend(path, node)`` may return False to skip a directory's contents.
    """
    for node in load_tree(repo, tree_id):
        path = join(prefix, node["name"])
        yield path, node
        if node["type"] == "dir" and node.get("subtree") is not None:
            if descend is None or descend(path, node):
                yield from walk(repo, node["subtree"], path, descend)


def split_path(path: str | bytes) -> list[bytes]:
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    return [c for c in raw.split(b"/") if c and c != b"."]


def find_node(repo, root: bytes, path: str | bytes) -> Node:
    """The node at ``path`` inside the tree ``root``; the root itself is a synthetic dir."""
    node: Node = {"name": b"", "type": "dir", "subtree": root, "mode": 0o755}
    walked = b""
    for comp in split_path(path):
        if node["type"] != "dir":
            raise PathNotFound(f"{walked.decode(errors='replace')} is not a directory")
        walked += b"/" + comp
        for child in load_tree(repo, node["subtree"]):
            if child["name"] == comp:
                node = child
                break
        else:
            raise PathNotFound(f"path {walked.decode(errors='replace')} not found in snapshot")
    return node
