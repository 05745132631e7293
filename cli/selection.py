"""Flags shared by commands that select snapshots (--host, --tag, --path) and SNAPSHOT[:PATH]."""

from __future__ import annotations

import os
from typing import Callable

import click

from dedupe.snapshot import SnapshotFilter


def filter_options(f: Callable) -> Callable:
    f = click.option("--path", "paths", multiple=True, metavar="PATH",
                     help="Only snapshots that include PATH (repeat for several).")(f)
    f = click.option("--tag", "tags", multiple=True, metavar="TAG[,TAG]",
                     help="Only snapshots with these tags (a,b: both; repeat: either).")(f)
    f = click.option("--host", "hosts", multiple=True, metavar="HOST",
                     help="Only snapshots of HOST (repeat for several).")(f)
    return f


def make_filter(hosts, tags, paths) -> SnapshotFilter:
    return SnapshotFilter(
        hosts=list(hosts),
        tags=[[t for t in group.split(",") if t] for group in tags],
        paths=[os.path.normpath(os.path.abspath(p)) for p in paths],
    )


def split_snapshot_arg(arg: str) -> tuple[str, str]:
    """``ID[:PATH]`` -> (ID, PATH); PATH defaults to the snapshot root."""
    ref, _, sub = arg.partition(":")
    return ref, sub or "/"
