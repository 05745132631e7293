"""snap repair index | packs | snapshots: recover from lost index files, damaged packs, lost
blobs."""

from __future__ import annotations

import re
import sys

import click

from dedupe.repair import SnapshotRepair, repair_index, repair_snapshots
from dedupe.repairpacks import repair_packs, resolve_packs

from .app import App, UsageError, pass_app
from .progress import LiveLine
from .selection import filter_options, make_filter, select_snapshots


@click.group("repair")
def command() -> None:
    """Repair a damaged repository (run 'snap check' first; see each subcommand)."""


@command.command("index")
@click.option("--workers", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Pack headers read concurrently.")
@pass_app
def index_command(app: App, workers) -> None:
    """Rebuild the index from the headers of all packs.

    Writes new index files that supersede every existing one, then deletes the old ones.
    Needs exclusive access to the repository."""
    repo = app.open_repo()
    if not app.quiet and not app.json and sys.stderr.isatty():
        with LiveLine(app.err) as live:
            result = repair_index(repo, workers=workers, progress=lambda done, total: live.update(
                f"reading pack headers: {done}/{total}"))
    else:
        result = repair_index(repo, workers=workers)
    for w in result.warnings:
        app.warn(w)
    for name, reason in result.skipped:
        app.warn(f"{name}: {reason}; its blobs are not indexed (see 'snap repair snapshots')")
    if app.json:
        app.emit_json(result.to_json())
        return
    for name in result.from_old_index:
        app.verbose_info(f"{name}: header unreadable, entries kept from the old index")
    app.info(f"indexed {result.packs} packs with {result.blobs} blobs in "
             f"{len(result.written)} new index files; removed {len(result.removed)} old ones")


def _report(app: App, r: SnapshotRepair, dry_run: bool) -> None:
    if r.status == "ok":
        app.verbose_info(f"snapshot {r.original.short_id}: nothing lost")
        return
    app.info(f"snapshot {r.original.short_id} of {', '.join(r.original.paths)} at "
             f"{r.original.time.astimezone():%Y-%m-%d %H:%M:%S}")
    for path, change in r.changes:
        app.info(f"  {path.decode('utf-8', 'backslashreplace')}: {change}")
    if r.status == "unrepairable":
        app.warn(f"snapshot {r.original.short_id} cannot be repaired (its root directory is "
                 "lost)" + ("" if r.forgotten else "; remove it with 'snap forget' or --forget"))
    elif not dry_run:
        app.info(f"  saved new snapshot {r.new.short_id}")
    if r.forgotten:
        app.info(f"  {'would remove' if dry_run else 'removed'} snapshot {r.original.short_id}")


@command.command("snapshots")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--forget", is_flag=True, help="Remove the original snapshots once repaired.")
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be done.")
@filter_options
@pass_app
def snapshots_command(app: App, snapshot_ids, forget, dry_run, hosts, tags, paths) -> None:
    """Write new snapshots without the data that is lost.

    Files referencing lost blobs keep only their available content (restic's semantics);
    unreadable directories become empty. New snapshots are tagged 'repaired' and record
    the original's id; originals are kept unless --forget. Run 'snap repair index' first
    if index files or packs were lost."""
    repo = app.open_repo()
    snaps = select_snapshots(repo, snapshot_ids, make_filter(hosts, tags, paths))
    results = repair_snapshots(repo, snaps, forget=forget, dry_run=dry_run,
                               on_snapshot=None if app.json else lambda r: _report(app, r, dry_run))
    repaired = sum(r.status == "repaired" for r in results)
    if app.json:
        app.emit_json({"message_type": "summary", "dry_run": dry_run, "repaired": repaired,
                       "snapshots": [r.to_json() for r in results]})
        return
    if repaired:
        app.info(f"{'would modify' if dry_run else 'modified'} {repaired} snapshots")
    else:
        app.info("no snapshots were modified" if not dry_run else "no snapshots would be modified")


@command.command("packs")
@click.argument("pack_ids", nargs=-1, required=True, metavar="PACK...")
@pass_app
def packs_command(app: App, pack_ids) -> None:
    """Salvage the intact blobs of damaged packs into new packs, then delete the packs.

    PACK is a pack ID or a unique prefix of it (as 'snap check --read-data' names them).
    Blobs that cannot be salvaged are lost: run 'snap repair snapshots' afterwards (after a
    new backup, if the files still exist, so that it stores them again). Needs exclusive
    access to the repository."""
    bad = next((p for p in pack_ids if not re.fullmatch(r"[0-9a-fA-F]{4,64}", p)), None)
    if bad is not None:
        raise UsageError(f"{bad!r} is not a pack ID (4 to 64 hex digits)")
    repo = app.open_repo()
    packs = resolve_packs(repo, list(pack_ids))
    result = repair_packs(repo, packs, progress=lambda name: app.verbose_info(f"reading {name}"))
    for w in result.warnings:
        app.warn(w)
    if result.lost:
        lost = "1 blob is" if result.lost == 1 else f"{result.lost} blobs are"
        app.warn(f"{lost} lost: run 'snap repair snapshots' (after a new backup, if the files "
                 "still exist)")
    if app.json:
        app.emit_json(result.to_json())
        return
    for p in result.packs:
        app.info(f"{p.pack}: {p.salvaged} blobs salvaged, {len(p.lost)} lost, "
                 f"{p.copies} also stored elsewhere" + (f" ({p.note})" if p.note else ""))
        for blob_type, blob_id in p.lost:
            app.verbose_info(f"  lost {'tree' if blob_type else 'data'} blob {blob_id.hex()}")
    n = len(result.packs)
    app.info(f"removed {n} pack{'s' if n != 1 else ''} from the index and the repository")
