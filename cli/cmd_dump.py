"""snap dump: a file's bytes, or a directory as a tar or zip archive, to stdout or a file."""

from __future__ import annotations

import os
import sys

import click

from dedupe.browse import subtree_root
from dedupe.dump import ARCHIVE_FORMATS, Dumper
from dedupe.walker import find_node, split_path

from .app import App, UsageError, pass_app
from .selection import filter_options, make_filter, split_snapshot_arg


@click.command("dump")
@click.argument("snapshot", metavar="SNAPSHOT[:PATH]")
@click.argument("path")
@click.option("-a", "--archive", type=click.Choice(ARCHIVE_FORMATS), default="tar",
              show_default=True, help="Archive format for directories.")
@click.option("-t", "--target", metavar="FILE", help="Write to FILE instead of stdout.")
@filter_options
@pass_app
def command(app: App, snapshot, path, archive, target, hosts, tags, paths) -> None:
    """Write PATH of SNAPSHOT to stdout: a file as its bytes, a directory (or "/") as an
    archive of everything below it, with names relative to the snapshot root."""
    ref, sub = split_snapshot_arg(snapshot)
    if target is None and sys.stdout.isatty():
        raise UsageError("stdout is a terminal: redirect the output or use --target FILE")
    repo = app.open_repo()
    snap = repo.find_snapshot(ref, filter_fn=make_filter(hosts, tags, paths))
    root = snap.tree if sub == "/" else subtree_root(repo, snap.tree, sub)
    node = find_node(repo, root, path)
    if node["type"] not in ("file", "dir"):
        raise UsageError(f"{path} is a {node['type']}: only files and directories can be dumped")
    comps = split_path(path)
    prefix = b"/" + b"/".join(comps) if comps else b"/"
    out = open(target, "wb") if target else sys.stdout.buffer
    try:
        with Dumper(repo, out) as dumper:
            if node["type"] == "file":
                dumper.write_file(node)
            else:
                counts = dumper.write_archive(archive, node["subtree"], prefix)
                if counts.skipped:
                    app.warn(f"{counts.skipped} entries (sockets, or devices and FIFOs in zip) "
                             f"cannot be stored in a {archive} archive and were left out")
        out.flush()
    finally:
        if target:
            out.close()
    if target:
        app.verbose_info(f"wrote {os.fsdecode(prefix)} to {target}")
