"""snap restore: recreate files from a snapshot."""

from __future__ import annotations

import sys

import click

from dedupe.filelists import collect_patterns
from dedupe.restorer import OVERWRITE_MODES, Restorer, RestoreOptions, RestoreProgress

from .app import App, UsageError, pass_app
from .errors import EXIT_ERROR
from .malloc import tune_malloc_for_reading
from .progress import LiveLine, Ticker
from .selection import filter_options, make_filter, split_snapshot_arg
from .sizes import format_size


def _group(plain, folded):
    try:
        group = collect_patterns(plain, (), folded, ())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return [group] if group else []


def _line(p: RestoreProgress) -> str:
    return (f"restoring: {p.files_done}/{p.files_total} files, "
            f"{format_size(p.bytes_done)} / {format_size(p.bytes_total)}")


@click.command("restore")
@click.argument("snapshot")
@click.option("-t", "--target", required=True, metavar="DIR", help="Directory to restore into.")
@click.option("-i", "--include", multiple=True, metavar="PATTERN", help="Restore only matching paths.")
@click.option("--iinclude", multiple=True, metavar="PATTERN", help="Like --include, ignoring case.")
@click.option("-e", "--exclude", multiple=True, metavar="PATTERN", help="Skip matching paths.")
@click.option("--iexclude", multiple=True, metavar="PATTERN", help="Like --exclude, ignoring case.")
@click.option("--verify", is_flag=True, help="Re-read restored files and check them.")
@click.option("--sparse", is_flag=True, help="Restore runs of zeros as holes.")
@click.option("--overwrite", type=click.Choice(OVERWRITE_MODES), default="always", show_default=True,
              help="What to do with files that exist in the target.")
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be restored.")
@filter_options
@pass_app
def command(app: App, snapshot, target, include, iinclude, exclude, iexclude, verify, sparse,
            overwrite, dry_run, hosts, tags, paths) -> int:
    """Restore SNAPSHOT[:PATH] (an id, a unique prefix or 'latest') into --target."""
    if (include or iinclude) and (exclude or iexclude):
        raise UsageError("--include and --exclude cannot be combined (as in restic)")
    ref, sub = split_snapshot_arg(snapshot)
    repo = app.open_repo()
    snap = repo.find_snapshot(ref, filter_fn=make_filter(hosts, tags, paths))
    opts = RestoreOptions(includes=_group(include, iinclude), excludes=_group(exclude, iexclude),
                          sparse=sparse, overwrite=overwrite, dry_run=dry_run, verify=verify)
    if app.is_remote:  # fewer, larger GETs and as many in flight as --s3-connections allows
        opts.workers = app.backend_options.get("connections", 5)
        opts.max_read = 128 * 1024 * 1024
        opts.small_pack_threads = 0
    else:  # not for S3: its reads of up to 128 MiB per connection would stay in the heap
        tune_malloc_for_reading()
    progress = RestoreProgress()
    restorer = Restorer(repo, opts, progress=progress, on_warning=app.warn)
    if not app.quiet and not app.json and sys.stderr.isatty() and not dry_run:
        with LiveLine(app.err) as live, Ticker(lambda final: live.update(_line(progress)), 0.25):
            restorer.restore(snap, target, sub)
    else:
        restorer.restore(snap, target, sub)
    p = progress
    if app.json:
        app.emit_json({"message_type": "summary", "snapshot_id": snap.id, "dry_run": dry_run,
                       "files_restored": p.files_done, "files_total": p.files_total,
                       "files_skipped": p.files_skipped, "bytes_restored": p.bytes_done,
                       "total_bytes": p.bytes_total, "errors": p.errors})
    elif dry_run:
        app.info(f"would restore {p.files_total} files, {format_size(p.bytes_total)} "
                 f"from snapshot {snap.short_id}")
    else:
        app.info(f"restored {p.files_done} files, {format_size(p.bytes_done)} from snapshot "
                 f"{snap.short_id} to {target}" +
                 (f" ({p.files_skipped} skipped)" if p.files_skipped else ""))
        if verify and not restorer.warnings:
            app.info("verified: restored files match the snapshot")
    return EXIT_ERROR if restorer.warnings else 0
