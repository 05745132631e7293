"""Which snapshots and paths depend on damaged or missing blobs (check's last step).

Trees are shared between snapshots, so a tree is asked "does damage lie in or below you?"
once (memoized); each snapshot is then walked descending only into trees that answer yes,
which names every (snapshot, path) pair without visiting the undamaged bulk twice per snapshot.
"""

from __future__ import annotations

from typing import Callable

from .checkreport import Affected, Finding
from .packs import BLOB_DATA, BLOB_TREE
from .tree import Node, file_blobs
from .walker import join


def map_affected(snapshots, bad: dict[tuple[int, bytes], Finding],
                 load_tree: Callable[[bytes], list[Node]], max_affected: int) -> None:
    """Add (snapshot, path, blob) to the finding of every damaged blob a path depends on.

    ``bad`` maps (blob type, blob id) to the finding that reports it. A directory whose own
    tree blob is damaged is reported with its path; files with each damaged blob they use.
    """
    leads: dict[bytes, bool] = {}

    def nodes(tree_id: bytes) -> list[Node]:
        try:
            return load_tree(tree_id)
        except Exception:  # already reported by the structure check (or its pack is lost)
            return []

    def add(finding: Finding, snapshot: str, path: bytes, blob: bytes) -> None:
        finding.affected_total += 1
        if len(finding.affected) < max_affected:
            finding.affected.append(Affected(snapshot, path, blob))

    def leads_to_damage(tree_id: bytes) -> bool:
        if tree_id in leads:
            return leads[tree_id]
        found = (BLOB_TREE, tree_id) in bad
        if not found:
            for node in nodes(tree_id):
                if node["type"] == "file":
                    found = any((BLOB_DATA, b) in bad for b in file_blobs(node))
                elif node["type"] == "dir" and node.get("subtree") is not None:
                    found = leads_to_damage(node["subtree"])
                if found:
                    break
        leads[tree_id] = found
        return found

    def visit(snap_id: str, tree_id: bytes, path: bytes) -> None:
        f = bad.get((BLOB_TREE, tree_id))
        if f is not None:
            add(f, snap_id, path, tree_id)
            return
        for node in nodes(tree_id):
            child = join(path, node["name"])
            if node["type"] == "file":
                for b in dict.fromkeys(file_blobs(node)):
                    f = bad.get((BLOB_DATA, b))
                    if f is not None:
                        add(f, snap_id, child, b)
            elif node["type"] == "dir" and node.get("subtree") is not None:
                if leads_to_damage(node["subtree"]):
                    visit(snap_id, node["subtree"], child)

    for snap in snapshots:
        if leads_to_damage(snap.tree):
            visit(snap.id, snap.tree, b"/")
