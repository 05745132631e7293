"""The virtual directories of a mounted repository, built from the snapshot list alone.

    /snapshots/<time>/...        every snapshot, named by its local time (2024-05-01T03:00:00)
    /snapshots/latest            symlink to the newest one
    /ids/<short id>/...
    /hosts/<host>/<time>/...     plus hosts/<host>/latest
    /tags/<tag>/<time>/...       plus tags/<tag>/latest

As in restic, snapshots with equal times get "-1", "-2"... suffixes, in (time, id) order, so the
names are stable as long as no snapshot with an equal time and a smaller id appears. Building the
layout reads no trees; a snapshot's tree is only loaded when its directory is entered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Union

from .snapshot import Snapshot

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
LATEST = "latest"


@dataclass(frozen=True, eq=False)
class Link:
    """A symlink of the layout (``latest``); ``target`` is relative to its directory."""
    target: str
    mtime: int  # ns since the epoch


@dataclass(eq=False)
class VDir:
    """A directory of the layout. Children are directories, snapshots (whose contents are
    their trees) or links."""
    children: dict[str, Union["VDir", Snapshot, Link]] = field(default_factory=dict)
    mtime: int = 0
    subdirs: int = 0  # children that are directories, for st_nlink


Entry = Union[VDir, Snapshot, Link]


def time_ns(snap: Snapshot) -> int:
    return (snap.time - _EPOCH) // timedelta(microseconds=1) * 1000


def time_name(snap: Snapshot) -> str:
    return snap.time.astimezone().strftime(TIME_FORMAT)


def _safe_name(name: str) -> str | None:
    """A host or tag as a file name: no "/" or NUL, not "." or ".." or empty."""
    name = name.replace("/", "_").replace("\0", "_")
    return None if name in ("", ".", "..") else name


def _finish(d: VDir) -> VDir:
    d.subdirs = sum(1 for c in d.children.values() if not isinstance(c, Link))
    return d


def dated_dir(snaps: list[Snapshot]) -> VDir:
    """Snapshots (sorted oldest first) named by time, plus ``latest``."""
    d = VDir()
    name = ""
    for s in snaps:
        base = name = time_name(s)
        n = 0
        while name in d.children or name == LATEST:
            n += 1
            name = f"{base}-{n}"
        d.children[name] = s
    if snaps:
        d.mtime = time_ns(snaps[-1])
        d.children[LATEST] = Link(name, d.mtime)
    return _finish(d)


def _grouped(snaps: list[Snapshot], keys) -> VDir:
    groups: dict[str, list[Snapshot]] = {}
    for s in snaps:
        for k in keys(s):
            k = _safe_name(k)
            if k is not None:
                groups.setdefault(k, []).append(s)
    d = VDir({k: dated_dir(v) for k, v in sorted(groups.items())})
    d.mtime = max((c.mtime for c in d.children.values()), default=0)
    return _finish(d)


def _ids_dir(snaps: list[Snapshot]) -> VDir:
    counts: dict[str, int] = {}
    for s in snaps:
        counts[s.short_id] = counts.get(s.short_id, 0) + 1
    # Short ids that collide (rare below millions of snapshots) are shown in full instead.
    d = VDir({(s.short_id if counts[s.short_id] == 1 else s.id): s for s in snaps})
    d.mtime = time_ns(snaps[-1]) if snaps else 0
    return _finish(d)


def build_layout(snaps: list[Snapshot], empty_mtime: int = 0) -> VDir:
    """The root directory for ``snaps`` (any order; sorted here by time, then id)."""
    snaps = sorted(snaps, key=lambda s: (s.time, s.id))
    root = VDir({
        "snapshots": dated_dir(snaps),
        "ids": _ids_dir(snaps),
        "hosts": _grouped(snaps, lambda s: [s.hostname]),
        "tags": _grouped(snaps, lambda s: s.tags),
    })
    root.mtime = time_ns(snaps[-1]) if snaps else empty_mtime
    for child in root.children.values():
        if not child.mtime:
            child.mtime = root.mtime
    return _finish(root)
