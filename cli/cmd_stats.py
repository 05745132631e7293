"""snap stats: sizes, counts, deduplication and compression over snapshots."""

from __future__ import annotations

import click

from dedupe.browse import subtree_root
from dedupe.stats import MODES, StatsCollector

from .app import App, pass_app
from .nodeview import emit, emit_json
from .selection import filter_options, make_filter, split_snapshot_arg
from .sizes import format_size


@click.command("stats")
@click.argument("snapshots", nargs=-1, metavar="[SNAPSHOT[:PATH]]...")
@click.option("--mode", type=click.Choice(MODES), default="restore-size", show_default=True,
              help="Counting mode.")
@filter_options
@pass_app
def command(app: App, snapshots, mode, hosts, tags, paths) -> None:
    """Count what the snapshots hold; with no SNAPSHOT, all snapshots (after --host, --tag
    and --path).

    \b
    restore-size       entries and bytes a restore would write
    files-by-contents  files with distinct contents and their bytes
    blobs-per-file     distinct blobs per distinct file
    raw-data           distinct blobs: count, uncompressed and stored size, compression
                       ratio, and the deduplication ratio (restore size / distinct content)
    """
    repo = app.open_repo()
    filt = make_filter(hosts, tags, paths)
    everything = repo.list_snapshots()
    collector = StatsCollector(repo, mode)
    if snapshots:
        for arg in snapshots:
            ref, sub = split_snapshot_arg(arg)
            snap = repo.find_snapshot(ref, everything, filter_fn=filt if ref == "latest" else None)
            collector.add(snap.tree if sub == "/" else subtree_root(repo, snap.tree, sub))
    else:
        for snap in filt.apply(everything):
            collector.add(snap.tree)
    s = collector.finish()
    if app.json:
        emit_json(s.to_json())
        return
    rows = [("Snapshots processed", str(s.snapshots_count))]
    if mode == "raw-data":
        rows += [
            ("Total Blob Count", str(s.total_blob_count)),
            ("Total Uncompressed Size", format_size(s.total_uncompressed_size)),
            ("Total Size", format_size(s.total_size)),
            ("Compression Progress", f"{s.compression_progress:.2f}%"),
            ("Compression Ratio", f"{s.compression_ratio:.2f}x"),
            ("Compression Space Saving", f"{s.compression_space_saving:.2f}%"),
            ("Restore Size", format_size(s.restore_size)),
            ("Unique Content Size", format_size(s.data_blobs_uncompressed_size)),
            ("Deduplication Ratio", f"{s.deduplication_ratio:.2f}x"),
        ]
    else:
        if mode == "blobs-per-file":
            rows.append(("Total Blob Count", str(s.total_blob_count)))
        rows += [("Total File Count", str(s.total_file_count)),
                 ("Total Size", format_size(s.total_size))]
    emit(f"Stats in {mode} mode:")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        emit(f"{key:>{width}}:  {value}")
