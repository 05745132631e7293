"""snap ls: list the files of a snapshot."""

from __future__ import annotations

import os
from typing import Callable, Iterable

import click

from dedupe.browse import check_dirs_exist, clean_absolute, list_tree, subtree_root
from dedupe.tree import Node

from .app import App, UsageError, pass_app
from .nodeview import emit, emit_json, long_line, node_json, snapshot_json, snapshot_time
from .selection import filter_options, make_filter, split_snapshot_arg


def _extension(path: bytes, node: Node) -> bytes:
    return os.path.splitext(node["name"])[1]


# restic's --sort fields. Ties keep the tree order (the sort is stable), as does "name".
_SORT_KEYS: dict[str, Callable[[bytes, Node], object] | None] = {
    "name": None,
    "size": lambda path, node: node.get("size", 0),
    "time": lambda path, node: node.get("mtime", 0),
    "mtime": lambda path, node: node.get("mtime", 0),
    "atime": lambda path, node: node.get("atime", node.get("mtime", 0)),
    "ctime": lambda path, node: node.get("ctime", 0),
    "extension": _extension,
}


def _sorted(listing: Iterable[tuple[bytes, Node]], sort_by: str, reverse: bool
            ) -> list[tuple[bytes, Node]]:
    items = list(listing)
    key = _SORT_KEYS[sort_by]
    if key is not None:
        items.sort(key=lambda item: key(*item))
    if reverse:
        items.reverse()
    return items


@click.command("ls")
@click.argument("snapshot")
@click.argument("dirs", nargs=-1, metavar="[DIR]...")
@click.option("-l", "--long", "long_", is_flag=True,
              help="Long listing: mode, owner, group, size, mtime.")
@click.option("--recursive", is_flag=True,
              help="With DIRs: list everything below them, not only their direct entries.")
@click.option("--human-readable", is_flag=True, help="Sizes like 1.234 MiB (with -l).")
@click.option("--sort", "sort_by", type=click.Choice(sorted(_SORT_KEYS)), default="name",
              show_default=True,
              help="Order of the listing (time is mtime; all but name hold it in memory).")
@click.option("--reverse", is_flag=True, help="Reverse the order.")
@filter_options
@pass_app
def command(app: App, snapshot, dirs, long_, recursive, human_readable, sort_by, reverse, hosts,
            tags, paths) -> None:
    """List the files of SNAPSHOT[:PATH] (an id, a unique prefix or 'latest').

    Without DIR, the whole tree is listed. With DIRs (absolute paths inside the snapshot),
    each DIR and its direct entries; with --recursive, everything below them.
    With --json: a snapshot object, then one node object per line.
    """
    ref, sub = split_snapshot_arg(snapshot)
    try:
        wanted = [clean_absolute(d) for d in dirs]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    repo = app.open_repo()
    snap = repo.find_snapshot(ref, filter_fn=make_filter(hosts, tags, paths))
    root = snap.tree if sub == "/" else subtree_root(repo, snap.tree, sub)
    check_dirs_exist(repo, root, wanted)
    if app.json:
        emit_json(snapshot_json(snap))
    elif not app.quiet:
        where = f"[{' '.join(snap.paths)}]" + (f":{sub}" if sub != "/" else "")
        filtered = f" filtered by [{' '.join(os.fsdecode(d) for d in wanted)}]" if wanted else ""
        emit(f"snapshot {snap.short_id} of {where}{filtered} at {snapshot_time(snap)}:")
    listing = list_tree(repo, root, wanted, recursive)
    if sort_by != "name" or reverse:
        listing = _sorted(listing, sort_by, reverse)
    for path, node in listing:
        if app.json:
            emit_json(node_json(path, node))
        elif long_:
            emit(long_line(path, node, human_readable))
        else:
            emit(path)
