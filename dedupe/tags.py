"""Changing the tags of snapshots (``snap tag``), restic's way.

Stored objects are never modified, so a retagged snapshot is a new snapshot file with the
new tags and ``original`` pointing at the snapshot it was first created as; then the old file
is deleted. The new one is written first: a crash in between leaves both (a duplicate that
``forget`` treats like any other snapshot), never neither.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from .errors import SnapError
from .snapshot import Snapshot


def new_tags(tags: list[str], *, set_tags: list[str] | None = None, add: Iterable[str] = (),
             remove: Iterable[str] = ()) -> list[str]:
    """The tag list after the change. ``set_tags=[]`` clears all tags."""
    if set_tags is not None:
        out: list[str] = []
        for t in set_tags:
            if t and t not in out:
                out.append(t)
        return out
    out = list(tags)
    for t in add:
        if t and t not in out:
            out.append(t)
    drop = set(remove)
    return [t for t in out if t not in drop]


def retag(repo, snapshot: Snapshot, tags: list[str]) -> Snapshot | None:
    """Rewrite ``snapshot`` with ``tags``; returns the new snapshot, or None if unchanged."""
    if tags == snapshot.tags:
        return None
    fresh = dataclasses.replace(snapshot, tags=list(tags), id="",
                                original=snapshot.original or snapshot.id)
    repo.save_snapshot(fresh)  # first the new ...
    repo.delete_snapshot(snapshot.id)  # ... then the old: a crash leaves a duplicate, not a gap
    return fresh


def change_tags(repo, snapshots: Iterable[Snapshot], *, set_tags: list[str] | None = None,
                add: Iterable[str] = (), remove: Iterable[str] = (),
                on_error: Callable[[Snapshot, Exception], None] | None = None,
                ) -> list[tuple[Snapshot, Snapshot]]:
    """Apply the change to each snapshot; returns (old, new) for those that changed.

    With ``on_error``, a snapshot that cannot be rewritten is reported and the others are
    still done (restic's behaviour); without it the first error propagates.
    """
    add, remove = list(add), list(remove)
    changed = []
    for snap in snapshots:
        try:
            fresh = retag(repo, snap, new_tags(snap.tags, set_tags=set_tags, add=add,
                                               remove=remove))
        except SnapError as exc:
            if on_error is None:
                raise
            on_error(snap, exc)
            continue
        if fresh is not None:
            changed.append((snap, fresh))
    return changed
