"""Repository statistics over snapshots (``snap stats``), in restic's counting modes.

restore-size       every entry counted, file sizes summed as a restore would write them
                   (a hard-linked inode counted once per snapshot)
files-by-contents  files counted once per distinct content (blob list)
blobs-per-file     distinct content, each file's distinct blobs counted by its path
raw-data           the distinct blobs the snapshots reference: count, uncompressed and
                   stored size, compression; plus the restore size, for the dedup ratio

restore-size and raw-data visit each distinct tree once, however many snapshots hold it: a
tree id names its exact contents, so its summary (entries, bytes, hard links) is memoized
and a hundred nightly snapshots of a mostly unchanged server cost little more than one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import IntegrityError
from .packs import BLOB_DATA, BLOB_TREE, COMP_NONE
from .tree import file_blobs
from .walker import join, load_tree

MODES = ("restore-size", "files-by-contents", "blobs-per-file", "raw-data")


@dataclass
class _TreeSummary:
    entries: int = 0
    size: int = 0  # bytes of files that are not hard linked
    links: dict[tuple[int, int], int] = field(default_factory=dict)  # (dev, inode) -> size


@dataclass
class Stats:
    mode: str
    snapshots_count: int = 0
    total_size: int = 0
    total_file_count: int = 0
    total_blob_count: int = 0
    # raw-data only
    total_uncompressed_size: int = 0
    compressed_blobs_size: int = 0  # stored size of the blobs that zstd made smaller
    compressed_blobs_uncompressed_size: int = 0
    data_blobs_uncompressed_size: int = 0
    restore_size: int = 0

    @property
    def compression_ratio(self) -> float:
        """restic's: how much the blobs that are compressed shrank (uncompressed / stored).
        Blobs zstd could not shrink are stored raw and left out; the space saving below
        covers everything."""
        if not self.compressed_blobs_size:
            return 0.0
        return self.compressed_blobs_uncompressed_size / self.compressed_blobs_size

    @property
    def compression_progress(self) -> float:
        """Percentage of the uncompressed bytes that sit in compressed blobs."""
        if not self.total_uncompressed_size:
            return 0.0
        return 100.0 * self.compressed_blobs_uncompressed_size / self.total_uncompressed_size

    @property
    def compression_space_saving(self) -> float:
        """Percentage of the uncompressed size that storage saves (negative when the
        encryption overhead outweighs compression, as with incompressible data)."""
        if not self.total_uncompressed_size:
            return 0.0
        return 100.0 * (1 - self.total_size / self.total_uncompressed_size)

    @property
    def deduplication_ratio(self) -> float:
        """Restore size per byte of distinct file content (data blobs, uncompressed)."""
        if not self.data_blobs_uncompressed_size:
            return 0.0
        return self.restore_size / self.data_blobs_uncompressed_size

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"total_size": self.total_size,
                               "total_file_count": self.total_file_count,
                               "snapshots_count": self.snapshots_count}
        if self.mode in ("raw-data", "blobs-per-file"):
            out["total_blob_count"] = self.total_blob_count
        if self.mode == "raw-data":
            out.update({
                "total_uncompressed_size": self.total_uncompressed_size,
                "compression_ratio": self.compression_ratio,
                "compression_progress": self.compression_progress,
                "compression_space_saving": self.compression_space_saving,
                "restore_size": self.restore_size,
                "unique_data_size": self.data_blobs_uncompressed_size,
                "deduplication_ratio": self.deduplication_ratio,
            })
        return out


class StatsCollector:
    """Feed roots (``add(tree_id)``, one per snapshot or ``ID:PATH``), then read ``stats``."""

    def __init__(self, repo, mode: str = "restore-size") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        self.repo = repo
        self.stats = Stats(mode)
        self._summaries: dict[bytes, _TreeSummary] = {}
        self._blobs: set[tuple[int, bytes]] = set()
        self._contents: set[tuple] = set()
        self._file_blobs: dict[bytes, set[bytes]] = {}

    def add(self, root: bytes) -> None:
        s = self.stats
        s.snapshots_count += 1
        if s.mode in ("restore-size", "raw-data"):
            summary = self._summary(root)
            size = summary.size + sum(summary.links.values())
            if s.mode == "restore-size":
                s.total_file_count += summary.entries
                s.total_size += size
            else:
                s.restore_size += size
        else:
            self._by_contents(root, b"/")

    def finish(self) -> Stats:
        """Size the collected blobs (raw-data); call once after the last ``add``."""
        s = self.stats
        if s.mode != "raw-data":
            return s
        index = self.repo.index
        for blob_type, blob_id in self._blobs:
            loc = index.lookup(blob_id, blob_type)
            if loc is None:
                raise IntegrityError(f"blob {blob_id.hex()} is referenced but not in the index",
                                     blob_id.hex())
            s.total_blob_count += 1
            s.total_size += loc.length
            s.total_uncompressed_size += loc.raw_length
            if blob_type == BLOB_DATA:
                s.data_blobs_uncompressed_size += loc.raw_length
            if loc.compression != COMP_NONE:
                s.compressed_blobs_size += loc.length
                s.compressed_blobs_uncompressed_size += loc.raw_length
        self._blobs.clear()
        return s

    # ------------------------------------------------------------------ restore-size, raw-data
    def _summary(self, tree_id: bytes) -> _TreeSummary:
        cached = self._summaries.get(tree_id)
        if cached is not None:
            return cached
        collect = self.stats.mode == "raw-data"
        if collect:
            self._blobs.add((BLOB_TREE, tree_id))
        out = _TreeSummary()
        for node in load_tree(self.repo, tree_id):
            out.entries += 1
            kind = node["type"]
            if kind == "file":
                if collect:
                    self._blobs.update((BLOB_DATA, b) for b in file_blobs(node))
                size = node.get("size", 0)
                if node.get("links", 1) > 1 and node.get("inode"):
                    out.links[(node.get("dev", 0), node["inode"])] = size
                else:
                    out.size += size
            elif kind == "dir" and node.get("subtree") is not None:
                sub = self._summary(node["subtree"])
                out.entries += sub.entries
                out.size += sub.size
                out.links.update(sub.links)
        self._summaries[tree_id] = out
        return out

    # ------------------------------------------------------------------ by contents
    def _by_contents(self, tree_id: bytes, prefix: bytes) -> None:
        s = self.stats
        per_file = s.mode == "blobs-per-file"
        for node in load_tree(self.repo, tree_id):
            path = join(prefix, node["name"])
            if node["type"] == "dir" and node.get("subtree") is not None:
                self._by_contents(node["subtree"], path)
                continue
            if node["type"] != "file":
                continue
            key = tuple(node.get("content") or ())
            if key in self._contents:
                continue
            self._contents.add(key)
            if not per_file:
                s.total_file_count += 1
                s.total_size += node.get("size", 0)
                continue
            seen = self._file_blobs.get(path)
            if seen is None:
                seen = self._file_blobs[path] = set()
                s.total_file_count += 1
            for blob_id in file_blobs(node):
                if blob_id in seen:
                    continue
                seen.add(blob_id)
                loc = self.repo.index.lookup(blob_id, BLOB_DATA)
                if loc is None:
                    raise IntegrityError(f"blob {blob_id.hex()} of {path!r} is not in the index",
                                         blob_id.hex())
                s.total_size += loc.raw_length
                s.total_blob_count += 1


def collect_stats(repo, roots: Iterable[bytes], mode: str = "restore-size") -> Stats:
    collector = StatsCollector(repo, mode)
    for root in roots:
        collector.add(root)
    return collector.finish()
