"""snap tag: add, remove or replace the tags of snapshots."""

from __future__ import annotations

import click

from dedupe.tags import change_tags

from .app import App, UsageError, pass_app
from .errors import EXIT_ERROR
from .nodeview import emit_json
from .selection import filter_options, make_filter, select_snapshots


def _flatten(values) -> list[str]:
    """restic's tag lists: each flag value may hold several tags, comma-separated."""
    return [t for v in values for t in v.split(",")]


@click.command("tag")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--add", "add_tags", multiple=True, metavar="TAG[,TAG]", help="Tags to add.")
@click.option("--remove", "remove_tags", multiple=True, metavar="TAG[,TAG]",
              help="Tags to remove.")
@click.option("--set", "set_tags", multiple=True, metavar="TAG[,TAG]",
              help="Replace all tags with these (--set '' removes all).")
@filter_options
@pass_app
def command(app: App, snapshot_ids, add_tags, remove_tags, set_tags, hosts, tags,
            paths) -> int:
    """Change the tags of the given snapshots, or of all snapshots matching --host, --tag
    and --path when no SNAPSHOT is given.

    Each changed snapshot is written anew (recording the id it was first created as in
    'original'), then the old one is deleted.
    """
    if not (add_tags or remove_tags or set_tags):
        raise UsageError("nothing to do: give --add, --remove or --set")
    if set_tags and (add_tags or remove_tags):
        raise UsageError("--set cannot be combined with --add or --remove")
    repo = app.open_repo()
    snaps = select_snapshots(repo, snapshot_ids, make_filter(hosts, tags, paths))
    failed = []

    def on_error(snap, exc) -> None:
        failed.append(snap)
        app.warn(f"cannot change the tags of snapshot {snap.short_id}: {exc}")

    changed = change_tags(repo, snaps, set_tags=_flatten(set_tags) if set_tags else None,
                          add=_flatten(add_tags), remove=_flatten(remove_tags),
                          on_error=on_error)
    if app.json:
        for old, new in changed:
            emit_json({"message_type": "changed", "old_snapshot_id": old.id,
                       "new_snapshot_id": new.id, "tags": new.tags})
        emit_json({"message_type": "summary", "changed_snapshot_count": len(changed),
                   "errors": len(failed)})
    elif changed:
        for old, new in changed:
            app.verbose_info(f"{old.short_id} -> {new.short_id}: tags {','.join(new.tags)}")
        app.info(f"modified tags on {len(changed)} snapshots")
    else:
        app.info("no snapshots were modified")
    return EXIT_ERROR if failed else 0
