"""snap check: verify the repository's structure and, optionally, its data."""

from __future__ import annotations

import time

import sys

import click

from dedupe.checker import CheckOptions, Checker
from dedupe.checkreport import ERROR, CheckProgress, CheckResult, Finding, path_text
from dedupe.subset import MAX_BUCKETS, SubsetSpec

from .app import App, UsageError, pass_app
from .errors import EXIT_ERROR
from .malloc import tune_malloc_for_reading
from .progress import LiveLine, Ticker
from .requests import request_summary
from .sizes import format_size, parse_size

SHOWN_AFFECTED = 10  # per finding without -v
SHOWN_OBJECTS = 5  # names per aggregated information without -v


def parse_subset(text: str) -> SubsetSpec:
    """restic's forms n/t, x% and SIZE, plus stale:x%."""
    t = text.strip().lower()
    try:
        if t.startswith("stale:"):
            pct = t[len("stale:"):]
            if not pct.endswith("%"):
                raise ValueError("stale: needs a percentage, e.g. stale:10%")
            return SubsetSpec("stale", percent=float(pct[:-1]))
        if "/" in t:
            n, _, total = t.partition("/")
            return SubsetSpec("bucket", n=int(n), t=int(total))
        if t.endswith("%"):
            return SubsetSpec("percent", percent=float(t[:-1]))
        return SubsetSpec("size", size=parse_size(t))
    except ValueError as exc:
        raise UsageError(f"invalid --read-data-subset {text!r}: {exc} (use n/t with t <= "
                         f"{MAX_BUCKETS}, x%, a size like 500M or 2G, or stale:x%)") from None


def _bar(done: int, total: int, width: int = 24) -> str:
    frac = done / total if total else 0.0
    full = int(frac * width)
    return "[" + "#" * full + "-" * (width - full) + f"] {frac * 100:5.1f}%"


def _line(p: CheckProgress) -> str:
    el = time.monotonic() - p.started
    head = f"[{int(el // 60)}:{int(el % 60):02d}] "
    errors = f", {p.errors} errors" if p.errors else ""
    if p.phase == "read":
        return (head + f"reading packs {_bar(p.bytes_done, p.bytes_total)} {p.packs_done}/"
                f"{p.packs_total} packs, {format_size(p.bytes_done)} / "
                f"{format_size(p.bytes_total)}{errors}")
    if p.phase == "headers":
        return head + f"pack headers {_bar(p.packs_done, p.packs_total)} " \
                      f"{p.packs_done}/{p.packs_total}{errors}"
    if p.phase == "trees":
        return head + f"walking trees: {p.trees} trees of {p.snapshots} snapshots{errors}"
    return head + {"index": "loading index files", "snapshots": "loading snapshots",
                   "packs": "listing packs", "affected": "finding affected files",
                   "state": "saving verification state"}.get(p.phase, p.phase) + errors


def _print_finding(app: App, f: Finding) -> None:
    out = app.err if f.severity == ERROR else app.console
    if f.severity != ERROR and (app.quiet or app.json):
        return
    out.print(f"{f.severity}: {f.message}", markup=False, soft_wrap=True, highlight=False)
    limit = None if app.verbose else SHOWN_OBJECTS
    for name in f.objects[:limit]:
        out.print(f"  {name}", markup=False, soft_wrap=True)
    if limit is not None and len(f.objects) > limit:
        out.print(f"  ... and {len(f.objects) - limit} more (-v lists all)", markup=False)
    if f.affected_total:
        groups: dict[tuple[str, bytes], list[bytes]] = {}
        for a in f.affected:
            groups.setdefault((a.snapshot, a.path), []).append(a.blob)
        more = "+" if len(f.affected) < f.affected_total else ""
        snaps = len({s for s, _ in groups})
        out.print(f"  affects {len(groups)}{more} paths in {snaps}{more} snapshots:",
                  markup=False, soft_wrap=True)
        items = list(groups.items())
        shown = items if app.verbose else items[:SHOWN_AFFECTED]
        for (snap_id, path), blobs in shown:
            ids = ", ".join(b.hex()[:16] for b in blobs)
            out.print(f"    snapshot {snap_id[:8]} {path_text(path)}  (blob{'s' if len(blobs) > 1 else ''} "
                      f"{ids})", markup=False, soft_wrap=True)
        if len(items) > len(shown) or more:
            out.print("    ... and more (" + ("--json lists up to 1000 per problem)" if app.verbose
                                               else "-v lists more)"), markup=False)


def _summary(app: App, r: CheckResult) -> None:
    app.info(f"{r.snapshots} snapshots, {r.index_files} index files, {r.packs} packs, "
             f"{r.blobs} blobs, {r.trees} trees checked")
    if r.headers_read:
        app.info(f"{r.headers_read} pack headers agree with the index" if r.ok else
                 f"{r.headers_read} pack headers read")
    if r.subset is not None:
        app.info(f"read {r.packs_read} packs ({format_size(r.bytes_read)}): {r.subset}")
    if r.state_object and app.verbose:
        app.info(f"verification state saved as {r.state_object}")


# Findings about a pack that is there but damaged: 'repair packs' salvages what is intact.
_DAMAGED_PACK = {"pack_name", "pack_header", "blob_damaged", "pack_size"}


@click.command("check")
@click.option("--read-data", is_flag=True,
              help="Download every pack and verify its name, header and every blob.")
@click.option("--read-data-subset", "subset", metavar="SUBSET",
              help="Verify only some packs: n/t (group n of t), x% (random), SIZE such as "
                   "500M (random, up to SIZE) or stale:x% (those verified longest ago).")
@click.option("--no-lock", is_flag=True, help="Do not lock the repository (read-only access).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Packs read concurrently (default 3; S3: --s3-connections).")
@pass_app
def command(app: App, read_data, subset, no_lock, workers) -> int:
    """Check the repository: snapshots, index, trees and packs; with --read-data or
    --read-data-subset also the stored data. Damage is listed with the snapshots and
    paths that depend on it; the exit code is 1 when anything is damaged."""
    spec = parse_subset(subset) if subset else None
    repo = app.open_repo()
    progress = CheckProgress()
    if workers is None:
        workers = app.backend_options.get("connections", 5) if app.is_remote else 3
    opts = CheckOptions(read_data=read_data, subset=spec, workers=workers, lock=not no_lock)
    if read_data or spec is not None:
        tune_malloc_for_reading()
    # Findings are printed at the end, once the paths depending on each are known.
    checker = Checker(repo, opts, progress=progress)
    if not app.quiet and not app.json and sys.stderr.isatty():
        with LiveLine(app.err) as live, Ticker(lambda final: live.update(_line(progress)), 0.25):
            result = checker.run()
    else:
        result = checker.run()
    if app.json:
        app.emit_json({**result.to_json(), "requests": request_summary(repo.backend)})
        return 0 if result.ok else EXIT_ERROR
    for w in result.warnings:
        app.warn(w)
    for f in result.findings:
        _print_finding(app, f)
    _summary(app, result)
    if result.ok:
        app.info("no errors were found")
        return 0
    app.err.print(f"{len(result.errors)} errors were found: the repository is damaged",
                  markup=False, soft_wrap=True)
    damaged = sorted({f.object.rsplit("/", 1)[1] for f in result.errors
                      if f.kind in _DAMAGED_PACK and f.object})
    if damaged:
        app.err.print("to keep what is intact in the damaged packs and drop the rest: snap "
                      "repair packs " + " ".join(damaged), markup=False, soft_wrap=True)
    return EXIT_ERROR
