"""snap unlock: remove stale locks left by killed processes."""

from __future__ import annotations

import click

from dedupe.locks import remove_stale_locks

from .app import App, pass_app


@click.command("unlock")
@click.option("--remove-all", is_flag=True, help="Remove all locks, even ones that look active.")
@pass_app
def command(app: App, remove_all: bool) -> None:
    """Remove stale locks (a lock is stale when its process is gone or it was not refreshed
    for 30 minutes). Prune's delete markers are not locks and are kept."""
    removed = remove_stale_locks(app.open_repo(), remove_all=remove_all)
    if app.json:
        app.emit_json({"removed": [lk.id for lk in removed]})
        return
    for lk in removed:
        app.info(f"removed {lk.describe()}")
    app.info(f"{len(removed)} locks removed")
