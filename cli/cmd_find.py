"""snap find: search snapshots for paths matching patterns."""

from __future__ import annotations

import json
from datetime import datetime

import click

from dedupe.browse import find_in_tree
from dedupe.filters import PatternList

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
@filter_options
@pass_app
def command(app: App, patterns, snapshot_ids, ignore_case, long_, human_readable, oldest,
            newest, reverse, hosts, tags, paths) -> None:
    """Find files and directories whose path matches PATTERN (restic's rules: a glob
    matched against the whole path at any depth unless it starts with '/'; a matching
    directory matches everything below it).

    With --json: a JSON array of {"matches": [...], "hits": N, "snapshot": ID}.
    """
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

    first_group = True
    if app.json:
        emit("[")  # one array, streamed: results can be large
    for snap in snaps:
        hits = 0
        for path, node in find_in_tree(repo, snap.tree, matcher, oldest_ns=oldest_ns,
                                       newest_ns=newest_ns):
            if app.json:
                if hits == 0:
                    emit(("" if first_group else ",") + '{"matches":[')
                    first_group = False
                emit(("," if hits else "") + json.dumps(match_json(path, node)))
            else:
                if hits == 0 and not app.quiet:
                    if not first_group:
                        emit("")
                    emit(f"Found matching entries in snapshot {snap.short_id} from "
                         f"{snapshot_time(snap)}")
                    first_group = False
                emit(long_line(path, node, human_readable) if long_ else path)
            hits += 1
        if app.json and hits:
            emit(f'],"hits":{hits},"snapshot":{json.dumps(snap.id)}}}')
    if app.json:
        emit("]")
