"""snap prune: delete unused data (safe while other hosts back up)."""

from __future__ import annotations

import click

from dedupe.prune import Pruner, PruneOptions, PruneResult

from .app import App, UsageError, pass_app
from .requests import request_summary
from .sizes import format_size, parse_size


def parse_max_unused(text: str) -> float:
    """restic's --max-unused: a percentage of the used size, or 'unlimited'."""
    t = text.strip().lower()
    if t == "unlimited":
        return float("inf")
    if t.endswith("%"):
        try:
            value = float(t[:-1])
        except ValueError:
            value = -1
        if value >= 0:
            return value / 100
    raise UsageError(f"invalid --max-unused {text!r}: use a percentage like 5% or 'unlimited'")


def prune_options(f):
    f = click.option("--max-repack-size", metavar="SIZE", help="Repack at most SIZE of packs.")(f)
    f = click.option("--max-unused", default="5%", show_default=True, metavar="PERCENT",
                     help="Unused space to tolerate, relative to the used size.")(f)
    return f


def run_prune(app: App, repo, max_unused: str, max_repack_size: str | None, dry_run: bool) -> PruneResult:
    try:
        repack_limit = parse_size(max_repack_size) if max_repack_size else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    opts = PruneOptions(max_unused=parse_max_unused(max_unused), max_repack_size=repack_limit,
                        dry_run=dry_run)
    result = Pruner(repo, opts, on_event=app.info).run()
    report(app, repo, result)
    return result


def report(app: App, repo, r: PruneResult) -> None:
    requests = request_summary(repo.backend)
    if app.json:
        app.emit_json({"message_type": "prune_summary", **r.__dict__, "requests": requests})
        return
    would = "would be " if r.mode == "dry-run" else ""
    app.info(f"{r.packs_total} packs, {r.snapshots} snapshots")
    app.info(f"packs {would}deleted: {r.packs_deleted}, {would}repacked: {r.packs_repacked} "
             f"({format_size(r.bytes_repacked)} copied), unused blobs {would}removed: "
             f"{r.blobs_removed}")
    if r.mode == "deferred":
        app.info(f"other clients are active: {r.packs_marked} packs marked for deletion by a "
                 f"later prune; {r.markers_processed} earlier markers processed "
                 f"({r.packs_kept_from_markers} marked packs were in use again and kept)")
    app.info(f"space {would}freed: {format_size(max(r.bytes_freed, 0))}")
    app.info("requests: " + (", ".join(f"{k} {v}" for k, v in requests.items()) or "none"))


@click.command("prune")
@prune_options
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be done.")
@pass_app
def command(app: App, max_unused, max_repack_size, dry_run) -> None:
    """Remove data that no snapshot references; repack mostly-unused packs."""
    run_prune(app, app.open_repo(), max_unused, max_repack_size, dry_run)
