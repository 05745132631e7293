"""snap snapshots: list snapshots."""

from __future__ import annotations

import click
from rich.table import Table

from .app import App, pass_app
from .selection import filter_options, make_filter
from .sizes import format_size


@click.command("snapshots")
@filter_options
@click.option("--latest", type=int, metavar="N", help="Only the latest N snapshots per host and paths.")
@pass_app
def command(app: App, hosts, tags, paths, latest) -> None:
    """List snapshots, oldest first."""
    repo = app.open_repo()
    snaps = make_filter(hosts, tags, paths).apply(repo.list_snapshots())
    if latest:
        groups: dict = {}
        for s in snaps:
            groups.setdefault((s.hostname, tuple(sorted(s.paths))), []).append(s)
        snaps = sorted((s for g in groups.values() for s in g[-latest:]), key=lambda s: (s.time, s.id))
    if app.json:
        app.emit_json([s.to_json() for s in snaps])
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "Time", "Host", "Tags", "Paths", "Size"):
        table.add_column(col)
    for s in snaps:
        table.add_row(s.short_id, s.time.astimezone().strftime("%Y-%m-%d %H:%M:%S"), s.hostname,
                      ",".join(s.tags), "\n".join(s.paths),
                      format_size(s.summary.get("total_bytes_processed", 0)))
    if not app.quiet:
        app.console.print(table)
        app.console.print(f"{len(snaps)} snapshots")
