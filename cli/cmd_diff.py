"""snap diff: what changed between two snapshots."""

from __future__ import annotations

import os

import click

from dedupe.browse import subtree_root
from dedupe.diff import TreeDiff

from .app import App, pass_app
from .nodeview import emit, emit_json
from .selection import split_snapshot_arg
from .sizes import format_size


@click.command("diff")
@click.argument("first", metavar="SNAPSHOT1[:PATH]")
@click.argument("second", metavar="SNAPSHOT2[:PATH]")
@click.option("--metadata", is_flag=True,
              help="Also report entries whose metadata alone changed (U).")
@pass_app
def command(app: App, first, second, metadata) -> None:
    """Show how SNAPSHOT2 differs from SNAPSHOT1.

    \b
    +  added              -  removed
    M  content changed    T  type changed
    U  metadata changed (with --metadata)

    Directories whose content is identical (same tree id) are not read at all.
    """
    repo = app.open_repo()
    snaps = repo.list_snapshots()
    roots = []
    picked = []
    for arg in (first, second):
        ref, sub = split_snapshot_arg(arg)
        snap = repo.find_snapshot(ref, snaps)
        picked.append(snap)
        roots.append(snap.tree if sub == "/" else subtree_root(repo, snap.tree, sub))
    s1, s2 = picked
    if not app.json and not app.quiet:
        emit(f"comparing snapshot {s1.short_id} to {s2.short_id}:")
        emit("")
    differ = TreeDiff(repo, metadata=metadata)
    for change in differ.changes(roots[0], roots[1]):
        if app.json:
            emit_json({"message_type": "change", "path": os.fsdecode(change.path),
                       "modifier": change.modifier})
        else:
            emit(f"{change.modifier:<5}".encode() + change.path)
    r = differ.result
    if app.json:
        emit_json({"message_type": "statistics", "source_snapshot": s1.id,
                   "target_snapshot": s2.id, "changed_files": r.changed_files,
                   "added": r.added.to_json(), "removed": r.removed.to_json()})
        return
    a, d = r.added, r.removed
    emit("")
    emit(f"Files:       {a.files:5d} new, {d.files:5d} removed, {r.changed_files:5d} changed")
    emit(f"Dirs:        {a.dirs:5d} new, {d.dirs:5d} removed")
    emit(f"Others:      {a.others:5d} new, {d.others:5d} removed")
    emit(f"Data Blobs:  {a.data_blobs:5d} new, {d.data_blobs:5d} removed")
    emit(f"Tree Blobs:  {a.tree_blobs:5d} new, {d.tree_blobs:5d} removed")
    emit(f"  Added:   {format_size(a.bytes)}")
    emit(f"  Removed: {format_size(d.bytes)}")
