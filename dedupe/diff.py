"""Differences between two snapshot trees (``snap diff``), with restic's modifiers.

    +  added           -  removed
    M  file content changed (its blob list differs)
    U  metadata only (mode, owner, times, ...), reported when asked for
    T  type changed (a file became a symlink, ...)

Trees are content addressed, so two directories with the same subtree id are identical down
to the last byte: the comparison never loads them. On a server where a night changes a few
hundred files, a diff reads only the trees along the changed paths.

Byte totals follow restic: the blobs referenced by the compared part of the first snapshot
and not by that of the second are "removed", the reverse "added", each counted once at its
uncompressed size. Because identical subtrees are skipped, a blob that only an *unchanged*
directory shares with a changed file (a file copied out of an untouched directory) counts as
added; restic walks the unchanged directories too to discount it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from .packs import BLOB_DATA, BLOB_TREE
from .tree import Node, file_blobs
from .walker import join, load_tree

# Keys compared for "U". atime is left out (reading a file changes it, which is not a change
# anyone wants reported) and so is dev (device numbers of some filesystems change at mount).
META_KEYS = ("mode", "uid", "gid", "user", "group", "size", "mtime", "ctime", "inode",
             "links", "rdev", "target", "xattrs")


@dataclass
class DiffStat:
    files: int = 0
    dirs: int = 0
    others: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    bytes: int = 0

    def count(self, node: Node) -> None:
        kind = node["type"]
        if kind == "file":
            self.files += 1
        elif kind == "dir":
            self.dirs += 1
        else:
            self.others += 1

    def to_json(self) -> dict[str, int]:
        return {"files": self.files, "dirs": self.dirs, "others": self.others,
                "data_blobs": self.data_blobs, "tree_blobs": self.tree_blobs,
                "bytes": self.bytes}


@dataclass(frozen=True)
class Change:
    path: bytes  # directories end in "/", as restic prints them
    modifier: str  # "+", "-", "M", "U", "T" or a combination such as "TM"
    before: Node | None
    after: Node | None


@dataclass
class DiffResult:
    changed_files: int = 0
    added: DiffStat = field(default_factory=DiffStat)
    removed: DiffStat = field(default_factory=DiffStat)


def metadata_differs(a: Node, b: Node) -> bool:
    return any(a.get(k) != b.get(k) for k in META_KEYS)


def _add_blobs(blobs: set[tuple[int, bytes]], node: Node) -> None:
    if node["type"] == "file":
        blobs.update((BLOB_DATA, b) for b in file_blobs(node))
    elif node["type"] == "dir" and node.get("subtree") is not None:
        blobs.add((BLOB_TREE, node["subtree"]))


def _display(path: bytes, node: Node) -> bytes:
    return path + b"/" if node["type"] == "dir" else path


class TreeDiff:
    """Compare two trees. Iterate ``changes()`` first; then ``result`` holds the totals.

    ``metadata=True`` reports "U" for entries whose metadata alone changed (restic
    ``--metadata``).
    """

    def __init__(self, repo, metadata: bool = False) -> None:
        self.repo = repo
        self.metadata = metadata
        self.result = DiffResult()
        self._before: set[tuple[int, bytes]] = set()
        self._after: set[tuple[int, bytes]] = set()

    def changes(self, tree1: bytes, tree2: bytes, prefix: bytes = b"/") -> Iterator[Change]:
        yield from self._diff(prefix, tree1, tree2)
        self._count_blobs()

    # ------------------------------------------------------------------ walking
    def _diff(self, prefix: bytes, id1: bytes, id2: bytes) -> Iterator[Change]:
        if id1 == id2:
            return
        nodes1 = load_tree(self.repo, id1)
        nodes2 = load_tree(self.repo, id2)
        i = j = 0
        # Both lists are sorted by name bytes (the tree encoding guarantees it): a merge join.
        while i < len(nodes1) or j < len(nodes2):
            n1 = nodes1[i] if i < len(nodes1) else None
            n2 = nodes2[j] if j < len(nodes2) else None
            if n2 is None or (n1 is not None and n1["name"] < n2["name"]):
                i += 1
                yield from self._one_side(join(prefix, n1["name"]), n1, "-")
            elif n1 is None or n2["name"] < n1["name"]:
                j += 1
                yield from self._one_side(join(prefix, n2["name"]), n2, "+")
            else:
                i += 1
                j += 1
                yield from self._both(join(prefix, n1["name"]), n1, n2)

    def _both(self, path: bytes, n1: Node, n2: Node) -> Iterator[Change]:
        _add_blobs(self._before, n1)
        _add_blobs(self._after, n2)
        mod = ""
        t1, t2 = n1["type"], n2["type"]
        if t1 != t2:
            mod += "T"
        if t1 == "file" and t2 == "file" and n1.get("content") != n2.get("content"):
            mod += "M"
            self.result.changed_files += 1
        elif self.metadata and metadata_differs(n1, n2):
            mod += "U"
        if mod:
            yield Change(_display(path, n2), mod, n1, n2)
        if t1 == "dir" and t2 == "dir":
            yield from self._diff(path, n1["subtree"], n2["subtree"])
        elif t1 == "dir":  # a directory replaced by something else: its contents are gone
            yield from self._listing(path, n1["subtree"], "-")
        elif t2 == "dir":
            yield from self._listing(path, n2["subtree"], "+")

    def _one_side(self, path: bytes, node: Node, mod: str) -> Iterator[Change]:
        stat, blobs = self._side(mod)
        stat.count(node)
        _add_blobs(blobs, node)
        yield Change(_display(path, node), mod, node if mod == "-" else None,
                     node if mod == "+" else None)
        if node["type"] == "dir" and node.get("subtree") is not None:
            yield from self._listing(path, node["subtree"], mod)

    def _listing(self, prefix: bytes, tree_id: bytes, mod: str) -> Iterator[Change]:
        for node in load_tree(self.repo, tree_id):
            yield from self._one_side(join(prefix, node["name"]), node, mod)

    def _side(self, mod: str) -> tuple[DiffStat, set[tuple[int, bytes]]]:
        if mod == "+":
            return self.result.added, self._after
        return self.result.removed, self._before

    # ------------------------------------------------------------------ totals
    def _count_blobs(self) -> None:
        both = self._before & self._after
        for blobs, stat in ((self._before - both, self.result.removed),
                            (self._after - both, self.result.added)):
            for blob_type, blob_id in blobs:
                if blob_type == BLOB_DATA:
                    stat.data_blobs += 1
                else:
                    stat.tree_blobs += 1
                loc = self.repo.index.lookup(blob_id, blob_type)
                if loc is not None:  # a missing blob is check's business, not diff's
                    stat.bytes += loc.raw_length
        self._before.clear()
        self._after.clear()
