"""Grouping and filtering snapshots as restic's ``forget`` does (``--group-by``, ``--host``,
``--tag``, ``--path``), and the newest-first order its policies walk.

The rules are part of the retention specification in ``dedupe/forget.py`` (sections
Grouping, Order and ``keep_tags``). Pure: no repository, no output.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final, Iterable, Protocol, Sequence, TypeVar

GROUP_BY_FIELDS: Final = frozenset({"host", "paths", "tags"})
DEFAULT_GROUP_BY: Final = frozenset({"host", "paths"})


class SnapshotLike(Protocol):
    """What the policy reads from a snapshot; ``dedupe.snapshot.Snapshot`` fits."""

    @property
    def id(self) -> str: ...
    @property
    def time(self) -> datetime: ...  # timezone-aware
    @property
    def hostname(self) -> str: ...
    @property
    def paths(self) -> Sequence[str]: ...
    @property
    def tags(self) -> Sequence[str]: ...


S = TypeVar("S", bound=SnapshotLike)


def parse_tag_list(text: str) -> tuple[str, ...]:
    """Parse ``a,b`` into ``("a", "b")`` (whitespace around tags stripped); ``""`` -> ``("",)``."""
    return tuple(tag.strip() for tag in text.split(","))


def has_tags(snapshot_tags: Iterable[str], tag_list: Sequence[str]) -> bool:
    """True if the snapshot has every tag of ``tag_list``; ``""`` requires no tags at all."""
    tags = set(snapshot_tags)
    return all((not tags) if tag == "" else (tag in tags) for tag in tag_list)


def parse_group_by(text: str) -> frozenset[str]:
    """Parse ``--group-by`` ("host,paths"; singular forms accepted; "" = no grouping)."""
    aliases = {"host": "host", "hosts": "host", "path": "paths", "paths": "paths"}
    aliases |= {"tag": "tags", "tags": "tags"}
    fields = set()
    for option in text.split(","):
        option = option.strip()
        if option == "":
            continue
        if option not in aliases:
            raise ValueError(
                f"unknown grouping option {option!r} (use host, paths, tags or '' for none)"
            )
        fields.add(aliases[option])
    return frozenset(fields)


@dataclass(frozen=True)
class GroupKey:
    """What a group has in common; a field is None when snapshots are not grouped by it."""

    hostname: str | None = None
    paths: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None

    def sort_key(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        return (self.hostname or "", self.paths or (), self.tags or ())

    def __str__(self) -> str:
        parts = []
        if self.hostname is not None:
            parts.append(f"host {self.hostname}")
        if self.paths is not None:
            parts.append(f"paths [{', '.join(self.paths)}]")
        if self.tags is not None:
            parts.append(f"tags [{', '.join(self.tags)}]")
        return ", ".join(parts) if parts else "all snapshots"

    def to_dict(self) -> dict[str, Any]:
        """restic's JSON names for a forget group: host, paths, tags (null if not grouped)."""
        return {
            "host": self.hostname,
            "paths": None if self.paths is None else list(self.paths),
            "tags": None if self.tags is None else list(self.tags),
        }


def group_key(snapshot: SnapshotLike, group_by: frozenset[str] | set[str]) -> GroupKey:
    return GroupKey(
        hostname=snapshot.hostname if "host" in group_by else None,
        paths=tuple(sorted(snapshot.paths)) if "paths" in group_by else None,
        tags=tuple(sorted(snapshot.tags)) if "tags" in group_by else None,
    )


def group_snapshots(
    snapshots: Iterable[S], group_by: frozenset[str] | set[str] = DEFAULT_GROUP_BY
) -> list[tuple[GroupKey, list[S]]]:
    """Split snapshots into groups, ordered by key; each group newest first."""
    unknown = set(group_by) - GROUP_BY_FIELDS
    if unknown:
        raise ValueError(f"unknown grouping fields: {', '.join(sorted(unknown))}")
    groups: dict[GroupKey, list[S]] = {}
    for snap in snapshots:
        groups.setdefault(group_key(snap, group_by), []).append(snap)
    keys = sorted(groups, key=GroupKey.sort_key)
    return [(key, sort_newest_first(groups[key])) for key in keys]


def filter_snapshots(
    snapshots: Iterable[S],
    *,
    hosts: Iterable[str] = (),
    tag_lists: Iterable[Sequence[str]] = (),
    paths: Iterable[str] = (),
) -> list[S]:
    """restic's snapshot filter: host is one of ``hosts``; the snapshot has all tags of at
    least one of ``tag_lists``; it has every one of ``paths``. An empty filter passes all."""
    host_set, lists, wanted = set(hosts), [tuple(t) for t in tag_lists], set(paths)
    return [
        s
        for s in snapshots
        if (not host_set or s.hostname in host_set)
        and (not lists or any(has_tags(s.tags, tl) for tl in lists))
        and wanted <= set(s.paths)
    ]


def utc_instant(moment: datetime) -> datetime:
    # Compare instants in UTC: Python's == is False across zones for a wall time in a DST
    # fold (PEP 495), so two snapshots taken at the same instant could otherwise differ.
    return moment.astimezone(timezone.utc)


def sort_newest_first(snapshots: Iterable[S]) -> list[S]:
    """Newest first; equal instants ordered by id ascending (deterministic ties)."""
    by_id = sorted(snapshots, key=lambda s: s.id)
    return sorted(by_id, key=lambda s: utc_instant(s.time), reverse=True)  # stable sort
