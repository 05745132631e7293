"""Which snapshots and paths use given objects: check's damaged or missing blobs (its last
step) and ``find --blob/--tree/--pack``.

Trees are shared between snapshots, so a tree is asked "does a wanted object lie in or below
you?" once (memoized); each snapshot is then walked descending only into trees that answer
yes, which names every (snapshot, path) pair without visiting the rest twice per snapshot.
"""

from __future__ import annotations

from typing import Callable, Container, Iterable, Iterator

from .checkreport import Affected, Finding
from .index import MasterIndex
from .packs import BLOB_DATA, BLOB_TREE
from .snapshot import Snapshot
from .tree import Node, file_blobs
from .walker import join

Wanted = Container[tuple[int, bytes]]  # (blob type, blob id)
#: (snapshot, path, blob type, blob id): a file holding a wanted data blob, or a directory
#: whose own tree is wanted (a snapshot's root directory as "/")
Use = tuple[Snapshot, bytes, int, bytes]


def object_users(snapshots: Iterable[Snapshot], wanted: Wanted,
                 load_tree: Callable[[bytes], list[Node]]) -> Iterator[Use]:
    """Every use of a wanted object in ``snapshots``, snapshot by snapshot in their order,
    each path in tree order; a file once per wanted blob it holds. A tree that cannot be
    loaded holds nothing (check reports why elsewhere)."""
    leads: dict[bytes, bool] = {}

    def nodes(tree_id: bytes) -> list[Node]:
        try:
            return load_tree(tree_id)
        except Exception:  # damaged, or its pack is lost
            return []

    def leads_to_wanted(tree_id: bytes) -> bool:
        if tree_id in leads:
            return leads[tree_id]
        found = (BLOB_TREE, tree_id) in wanted
        if not found:
            for node in nodes(tree_id):
                if node["type"] == "file":
                    found = any((BLOB_DATA, b) in wanted for b in file_blobs(node))
                elif node["type"] == "dir" and node.get("subtree") is not None:
                    found = leads_to_wanted(node["subtree"])
                if found:
                    break
        leads[tree_id] = found
        return found

    def visit(snap: Snapshot, tree_id: bytes, path: bytes) -> Iterator[Use]:
        if (BLOB_TREE, tree_id) in wanted:
            yield snap, path, BLOB_TREE, tree_id
        for node in nodes(tree_id):
            child = join(path, node["name"])
            if node["type"] == "file":
                for b in dict.fromkeys(file_blobs(node)):
                    if (BLOB_DATA, b) in wanted:
                        yield snap, child, BLOB_DATA, b
            elif node["type"] == "dir" and node.get("subtree") is not None:
                if leads_to_wanted(node["subtree"]):
                    yield from visit(snap, node["subtree"], child)

    for snap in snapshots:
        if leads_to_wanted(snap.tree):
            yield from visit(snap, snap.tree, b"/")


def map_affected(snapshots, bad: dict[tuple[int, bytes], Finding],
                 load_tree: Callable[[bytes], list[Node]], max_affected: int) -> None:
    """Add (snapshot, path, blob) to the finding of every damaged blob a path depends on.

    ``bad`` maps (blob type, blob id) to the finding that reports it. A directory whose own
    tree blob is damaged is reported with its path; files with each damaged blob they use.
    """
    for snap, path, blob_type, blob_id in object_users(snapshots, bad, load_tree):
        finding = bad[(blob_type, blob_id)]
        finding.affected_total += 1
        if len(finding.affected) < max_affected:
            finding.affected.append(Affected(snap.id, path, blob_id))


def objects_by_id(index: MasterIndex, prefixes: list[str], kind: str
                  ) -> tuple[dict[tuple[int, bytes], list[bytes]], list[str]]:
    """The indexed objects ``find --blob/--tree/--pack`` asks for: with ``kind`` "blob" the
    data blobs, with "tree" the tree blobs, whose ids start with one of ``prefixes``
    (lowercase hex, at least 8 digits); with "pack" every blob of the packs whose ids do.
    Returns ((blob type, blob id) -> the packs holding it, the prefixes nothing matched)."""
    by_head: dict[str, list[str]] = {}
    for p in prefixes:
        by_head.setdefault(p[:8], []).append(p)
    want_type = {"blob": BLOB_DATA, "tree": BLOB_TREE}.get(kind)
    found: dict[tuple[int, bytes], list[bytes]] = {}
    used: set[str] = set()
    for blob_id, loc in index.iter_blobs():
        if want_type is not None and loc.type != want_type:
            continue
        text = (loc.pack_id if kind == "pack" else blob_id).hex()
        for p in by_head.get(text[:8], ()):
            if text.startswith(p):
                used.add(p)
                packs = found.setdefault((loc.type, blob_id), [])
                if loc.pack_id not in packs:
                    packs.append(loc.pack_id)
                break
    return found, [p for p in prefixes if p not in used]
