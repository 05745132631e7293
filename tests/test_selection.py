"""One snapshot filter for every command: restic's --host/--tag/--path semantics."""

from __future__ import annotations

from datetime import datetime, timezone

from cli.selection import make_filter
from dedupe.snapshot import Snapshot


def snap(host, tags, paths, sid):
    return Snapshot(time=datetime(2026, 1, 1, tzinfo=timezone.utc), tree=b"\0" * 32,
                    paths=paths, hostname=host, tags=tags, id=sid)


SNAPS = [snap("a", [], ["/etc"], "1"), snap("a", ["x"], ["/etc", "/srv"], "2"),
         snap("b", ["x", "y"], ["/srv"], "3")]


def ids(hosts=(), tags=(), paths=()):
    return [s.id for s in make_filter(hosts, tags, paths).apply(SNAPS)]


def test_empty_filter_passes_all():
    assert ids() == ["1", "2", "3"]


def test_tags_any_list_all_tags_in_a_list_and_empty_means_untagged():
    assert ids(tags=["x"]) == ["2", "3"]
    assert ids(tags=["x,y"]) == ["3"]
    assert ids(tags=["y", "x"]) == ["2", "3"]
    assert ids(tags=[""]) == ["1"]          # restic: --tag '' selects untagged snapshots
    assert ids(tags=[" x , y "]) == ["3"]   # whitespace around tags is ignored


def test_hosts_and_paths():
    assert ids(hosts=["b"]) == ["3"]
    assert ids(paths=["/etc"]) == ["1", "2"]
    assert ids(paths=["/etc", "/srv"]) == ["2"]
    assert ids(hosts=["a"], paths=["/srv"]) == ["2"]
