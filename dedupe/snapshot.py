"""Snapshot manifests: what was backed up, when, from where, and the root tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgpack

from .crypto import AAD_SNAPSHOT, MasterKey
from .errors import IntegrityError, UnsupportedVersion
from .snapgroups import has_tags

SNAPSHOT_VERSION = 1


@dataclass
class Snapshot:
    time: datetime  # timezone-aware; stored as ISO 8601 with offset
    tree: bytes  # root tree blob id
    paths: list[str]
    hostname: str
    username: str = ""
    uid: int = 0
    gid: int = 0
    tags: list[str] = field(default_factory=list)
    parent: str | None = None  # hex id of the parent snapshot
    original: str | None = None  # hex id of the snapshot this one was rewritten from
    program_version: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    id: str = ""  # hex storage id; set once saved or loaded, not part of the stored body

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def to_body(self) -> dict[str, Any]:
        return {
            "v": SNAPSHOT_VERSION,
            "time": self.time.isoformat(),
            "tree": self.tree,
            "paths": list(self.paths),
            "hostname": self.hostname,
            "username": self.username,
            "uid": self.uid,
            "gid": self.gid,
            "tags": list(self.tags),
            "parent": self.parent,
            "original": self.original,
            "program_version": self.program_version,
            "summary": self.summary,
        }

    def encode(self, key: MasterKey) -> bytes:
        return key.seal(msgpack.packb(self.to_body()), AAD_SNAPSHOT)

    @classmethod
    def decode(cls, key: MasterKey, raw: bytes, snapshot_id: str) -> "Snapshot":
        name = f"snapshots/{snapshot_id}"
        plain = key.open(raw, AAD_SNAPSHOT, name)
        try:
            d = msgpack.unpackb(plain)
            if d["v"] != SNAPSHOT_VERSION:
                raise UnsupportedVersion(f"{name}: snapshot version {d['v']} is not supported")
            snap = cls(
                time=datetime.fromisoformat(d["time"]),
                tree=d["tree"],
                paths=list(d["paths"]),
                hostname=d["hostname"],
                username=d.get("username", ""),
                uid=d.get("uid", 0),
                gid=d.get("gid", 0),
                tags=list(d.get("tags", [])),
                parent=d.get("parent"),
                original=d.get("original"),
                program_version=d.get("program_version", ""),
                summary=d.get("summary", {}),
                id=snapshot_id,
            )
        except UnsupportedVersion:
            raise
        except Exception:
            raise IntegrityError(f"{name}: malformed snapshot", name) from None
        if not isinstance(snap.tree, bytes) or len(snap.tree) != 32 or snap.time.tzinfo is None:
            raise IntegrityError(f"{name}: malformed snapshot", name)
        return snap

    def to_json(self) -> dict[str, Any]:
        """The JSON shape `snap snapshots --json` prints (restic-compatible names)."""
        return {
            "id": self.id,
            "short_id": self.short_id,
            "time": self.time.isoformat(),
            "tree": self.tree.hex(),
            "paths": self.paths,
            "hostname": self.hostname,
            "username": self.username,
            "uid": self.uid,
            "gid": self.gid,
            "tags": self.tags,
            "parent": self.parent,
            "original": self.original,
            "program_version": self.program_version,
            "summary": self.summary,
        }


@dataclass
class SnapshotFilter:
    """restic's selection rules, shared by every command (forget included): any of
    ``hosts``; every path of ``paths``; for ``tags``, a snapshot matches when it has all tags
    of at least one of the tag sets, where the tag "" means "has no tags"."""

    hosts: list[str] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def __call__(self, snap: Snapshot) -> bool:
        if self.hosts and snap.hostname not in self.hosts:
            return False
        if self.paths and not set(self.paths) <= set(snap.paths):
            return False
        if self.tags and not any(has_tags(snap.tags, ts) for ts in self.tags):
            return False
        return True

    def apply(self, snaps: list[Snapshot]) -> list[Snapshot]:
        return [s for s in snaps if self(s)]
