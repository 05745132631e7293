"""Flags shared by commands that select snapshots (--host, --tag, --path) and SNAPSHOT[:PATH]."""

from __future__ import annotations

import os
from typing import Callable

import click

from dedupe.snapgroups import parse_tag_list
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
        tags=[list(parse_tag_list(group)) for group in tags],
        paths=[os.path.normpath(os.path.abspath(p)) for p in paths],
    )


def select_snapshots(repo, snapshot_ids, filt: SnapshotFilter) -> list:
    """The snapshots named by ``snapshot_ids`` (ids, unique prefixes, 'latest'), in the
    order given without repeats; with no ids, every snapshot ``filt`` matches.

    The filter narrows only 'latest' when ids are given: an explicit id is taken as meant.
    """
    everything = repo.list_snapshots()
    if not snapshot_ids:
        return filt.apply(everything)
    snaps = []
    for ref in snapshot_ids:
        snap = repo.find_snapshot(ref, everything, filter_fn=filt if ref == "latest" else None)
        if all(s.id != snap.id for s in snaps):
            snaps.append(snap)
    return snaps


def split_snapshot_arg(arg: str) -> tuple[str, str]:
    """``ID[:PATH]`` -> (ID, PATH); PATH defaults to the snapshot root."""
    ref, _, sub = arg.partition(":")
    return ref, sub or "/"
