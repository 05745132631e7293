"""What ``check`` reports: findings, progress counters and the result (all JSON-ready).

Finding kinds. Errors (the repository is damaged; ``check`` exits 1):

    index_damaged     index/<id> cannot be read, authenticated or parsed
    index_conflict    two index files describe the same pack differently
    snapshot_damaged  snapshots/<id> cannot be read, authenticated or parsed
    state_damaged     state/<id> (verification state) is damaged; the next run replaces it
    blob_missing      a tree references a blob no index lists (tree blobs: contents unchecked)
    tree_damaged      a tree blob fails to decrypt, decompress, match its id or parse
    tree_unreadable   a tree's pack could not be read (backend error)
    pack_missing      an indexed pack is not in the data/ listing
    pack_size         a pack's size differs from the size its index records imply
    pack_header       a pack header cannot be read or authenticated, or disagrees with the index
    pack_name         a pack's BLAKE3 does not match its name (--read-data)
    pack_unreadable   a pack could not be downloaded (backend error after retries)
    blob_damaged      a blob fails to decrypt, decompress or hash to its id (--read-data)

Information (nothing is lost; ``check`` still succeeds):

    packs_unindexed   packs no index lists (an interrupted backup, or a lost index file)
    blobs_unused      indexed blobs no snapshot references (prune removes them)
    blobs_duplicate   blobs stored in more than one place
    index_superseded  index files superseded by others but not yet deleted
    packs_pruned      unused packs a prune had marked, deleted while the check ran
    objects_unexpected  names under data/ that are not packs

Damage to a pack or blob lists what depends on it in ``affected``: (snapshot, path, blob)
triples, at most ``max_affected`` per finding (``affected_total`` counts them all).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .packs import BLOB_TYPES

ERROR = "error"
INFO = "info"


def path_text(path: bytes) -> str:
    """A path for display and JSON: UTF-8, undecodable bytes as \\x escapes."""
    return path.decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class Affected:
    snapshot: str  # full snapshot id
    path: bytes  # path inside the snapshot ("/" for the root)
    blob: bytes  # the damaged or missing blob this path depends on

    def to_json(self) -> dict[str, str]:
        return {"snapshot": self.snapshot, "path": path_text(self.path), "blob": self.blob.hex()}


@dataclass
class Finding:
    kind: str
    severity: str
    message: str
    object: str | None = None  # repository object: "data/ab/<id>", "index/<id>", ...
    blob: bytes | None = None
    blob_type: int | None = None
    count: int = 0  # aggregated information: how many
    objects: list[str] = field(default_factory=list)  # aggregated information: which
    affected: list[Affected] = field(default_factory=list)
    affected_total: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "severity": self.severity,
                               "message": self.message}
        if self.object:
            out["object"] = self.object
        if self.blob is not None:
            out["blob"] = self.blob.hex()
            out["blob_type"] = BLOB_TYPES.get(self.blob_type, str(self.blob_type))
        if self.count:
            out["count"] = self.count
        if self.objects:
            out["objects"] = self.objects
        if self.affected_total:
            out["affected"] = [a.to_json() for a in self.affected]
            out["affected_total"] = self.affected_total
        return out


@dataclass
class CheckProgress:
    """Counters the checker updates; a UI samples them from another thread."""
    phase: str = "starting"  # index, snapshots, packs, trees, headers, read, affected, state, done
    snapshots: int = 0
    trees: int = 0
    packs_total: int = 0  # of the current phase (headers or read)
    packs_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class CheckResult:
    findings: list[Finding]
    snapshots: int = 0
    index_files: int = 0
    packs: int = 0  # indexed packs
    blobs: int = 0  # indexed blobs
    trees: int = 0  # distinct trees walked
    headers_read: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    subset: str | None = None  # what --read-data[-subset] selected
    selected_packs: int = 0
    state_object: str | None = None  # verification state written
    read_packs: list[str] = field(default_factory=list)  # packs read in full (not in JSON)
    warnings: list[str] = field(default_factory=list)
    duration: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "message_type": "summary", "ok": self.ok, "num_errors": len(self.errors),
            "snapshots": self.snapshots, "index_files": self.index_files, "packs": self.packs,
            "blobs": self.blobs, "trees": self.trees, "headers_read": self.headers_read,
            "packs_read": self.packs_read, "bytes_read": self.bytes_read, "subset": self.subset,
            "selected_packs": self.selected_packs, "state_object": self.state_object,
            "warnings": self.warnings, "duration": round(self.duration, 3),
            "errors": [f.to_json() for f in self.findings if f.severity == ERROR],
            "info": [f.to_json() for f in self.findings if f.severity == INFO],
        }
