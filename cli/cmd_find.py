"""snap find: search snapshots for paths matching patterns, or for the paths that use given
blobs, trees or packs (``--blob``, ``--tree``, ``--pack``: troubleshooting, as with restic)."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from typing import Any, Callable, Iterable

import click

from dedupe.affected import object_users, objects_by_id
from dedupe.browse import find_in_tree
from dedupe.filters import PatternList
from dedupe.packs import BLOB_DATA, BLOB_TREE
from dedupe.snapshot import Snapshot
from dedupe.walker import load_tree

from .app import App, UsageError, pass_app
from .nodeview import emit, long_line, match_json, snapshot_time
from .selection import filter_options, make_filter, select_snapshots

# restic's accepted forms for --oldest/--newest (local time).
_TIME_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%d.%m.%Y",
                 "%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S")


def _parse_time(text: str | None, flag: str) -> int | None:
    if not text:
        return None
    for fmt in _TIME_FORMATS:
        try:
            return int(datetime.strptime(text, fmt).astimezone().timestamp()) * 1_000_000_000
        except ValueError:
            continue
    raise UsageError(f"{flag}: cannot parse time {text!r} (use YYYY-MM-DD [HH:MM[:SS]])")


_ID = re.compile(r"[0-9a-f]{8,64}")
_KIND = {BLOB_DATA: "blob", BLOB_TREE: "tree"}


@click.command("find")
@click.argument("patterns", nargs=-1, required=True, metavar="PATTERN...")
@click.option("-s", "--snapshot", "snapshot_ids", multiple=True, metavar="ID",
              help="Search only this snapshot (repeat for several); default: all.")
@click.option("-i", "--ignore-case", is_flag=True, help="Ignore case in patterns.")
@click.option("-l", "--long", "long_", is_flag=True, help="Long listing format.")
@click.option("--human-readable", is_flag=True, help="Sizes like 1.234 MiB (with -l).")
@click.option("-O", "--oldest", metavar="TIME", help="Only entries modified at or after TIME.")
@click.option("-N", "--newest", metavar="TIME", help="Only entries modified at or before TIME.")
@click.option("-R", "--reverse", is_flag=True, help="Oldest snapshot first (default: newest).")
@click.option("--blob", is_flag=True,
              help="PATTERNs are data blob IDs (8 to 64 hex digits): the files holding them.")
@click.option("--tree", is_flag=True,
              help="PATTERNs are tree IDs: the directories whose contents they are.")
@click.option("--pack", is_flag=True,
              help="PATTERNs are pack IDs: what uses the blobs those packs hold.")
@click.option("--show-pack-id", is_flag=True,
              help="With --blob, --tree or --pack: the pack holding each object.")
@filter_options
@pass_app
def command(app: App, patterns, snapshot_ids, ignore_case, long_, human_readable, oldest,
            newest, reverse, blob, tree, pack, show_pack_id, hosts, tags, paths) -> None:
    """Find files and directories whose path matches PATTERN (restic's rules: a glob
    matched against the whole path at any depth unless it starts with '/'; a matching
    directory matches everything below it).

    With --blob, --tree or --pack, the PATTERNs are IDs (or their first 8 or more hex
    digits), and every snapshot that uses the objects is listed with the paths using them.

    With --json: a JSON array of {"matches": [...], "hits": N, "snapshot": ID}.
    """
    kinds = [k for k, on in (("blob", blob), ("tree", tree), ("pack", pack)) if on]
    if len(kinds) > 1:
        raise UsageError("--blob, --tree and --pack exclude one another")
    if kinds:
        if ignore_case or long_ or oldest or newest:
            raise UsageError("--ignore-case, --long, --oldest and --newest apply to path "
                             "patterns, not to IDs")
        return _find_ids(app, kinds[0], patterns, snapshot_ids, reverse, show_pack_id,
                         make_filter(hosts, tags, paths))
    if show_pack_id:
        raise UsageError("--show-pack-id needs --blob, --tree or --pack")
    try:
        matcher = PatternList(list(patterns), case_insensitive=ignore_case, negation=False)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not matcher:
        raise UsageError("no pattern given")
    oldest_ns, newest_ns = _parse_time(oldest, "--oldest"), _parse_time(newest, "--newest")
    repo = app.open_repo()
    snaps = select_snapshots(repo, snapshot_ids, make_filter(hosts, tags, paths))
    snaps.sort(key=lambda s: (s.time, s.id), reverse=not reverse)

    hits = ((snap, found) for snap in snaps
            for found in find_in_tree(repo, snap.tree, matcher, oldest_ns=oldest_ns,
                                      newest_ns=newest_ns))
    _stream(app, hits, "Found matching entries", lambda found: match_json(*found),
            lambda found: long_line(*found, human_readable) if long_ else found[0])


def _stream(app: App, hits: Iterable[tuple[Snapshot, Any]], heading: str,
            as_json: Callable[[Any], dict], as_text: Callable[[Any], str | bytes]) -> None:
    """Print ``hits`` (in snapshot order) grouped by snapshot: under a heading per snapshot
    for people, or as one JSON array of {"matches": [...], "hits": N, "snapshot": ID},
    streamed (results can be large). Snapshots without hits are not mentioned."""
    def end_group() -> None:
        if app.json and current is not None:
            emit(f'],"hits":{count},"snapshot":{json.dumps(current.id)}}}')

    if app.json:
        emit("[")
    current, count = None, 0
    for snap, item in hits:
        if current is None or snap.id != current.id:
            end_group()
            if app.json:
                emit(("" if current is None else ",") + '{"matches":[')
            elif not app.quiet:
                if current is not None:
                    emit("")
                emit(f"{heading} in snapshot {snap.short_id} from {snapshot_time(snap)}")
            current, count = snap, 0
        if app.json:
            emit(("," if count else "") + json.dumps(as_json(item)))
        else:
            emit(as_text(item))
        count += 1
    end_group()
    if app.json:
        emit("]")


def _find_ids(app: App, kind: str, patterns, snapshot_ids, reverse: bool, show_pack_id: bool,
              snapshot_filter) -> None:
    """``find --blob/--tree/--pack``: each snapshot using the objects, with its paths."""
    prefixes = [p.lower() for p in patterns]
    bad = next((p for p in prefixes if not _ID.fullmatch(p)), None)
    if bad is not None:
        raise UsageError(f"{bad!r} is not an ID (8 to 64 hex digits)")
    repo = app.open_repo()
    wanted, unknown = objects_by_id(repo.index, prefixes, kind)
    for p in unknown:
        app.warn(f"no {kind} {p} in the index")
    snaps = select_snapshots(repo, snapshot_ids, snapshot_filter)
    snaps.sort(key=lambda s: (s.time, s.id), reverse=not reverse)

    def as_json(use) -> dict:
        _, path, blob_type, blob_id = use
        match = {"path": os.fsdecode(path), "object_type": _KIND[blob_type], "id": blob_id.hex()}
        if show_pack_id:
            match["packs"] = [p.hex() for p in wanted[(blob_type, blob_id)]]
        return match

    def as_text(use) -> bytes:
        _, path, blob_type, blob_id = use
        line = path + f"  {_KIND[blob_type]} {blob_id.hex()}".encode()
        if show_pack_id:
            line += f"  pack {','.join(p.hex() for p in wanted[(blob_type, blob_id)])}".encode()
        return line

    uses = object_users(snaps, wanted, lambda t: load_tree(repo, t))
    _stream(app, ((use[0], use) for use in uses), "Found objects", as_json, as_text)
