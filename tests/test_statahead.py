"""Stat-ahead: the helper walk's bounds, its process, and when a backup starts it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from dedupe import archiver as archiver_mod
from dedupe import statahead
from dedupe.archiver import Archiver, BackupOptions
from dedupe.backends.local import LocalBackend
from dedupe.crypto import KdfParams
from dedupe.repository import Repository


def make_tree(root: Path, dirs: int, files: int) -> int:
    """``dirs`` directories of ``files`` files each; returns the number of entries."""
    for d in range(dirs):
        sub = root / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"f{f}").write_bytes(b"x")
    return dirs * (files + 1)


def test_walk_sees_every_entry(tmp_path):
    entries = make_tree(tmp_path / "src", 6, 5)
    (tmp_path / "src" / "link").symlink_to("d000")  # not followed
    assert statahead.walk([os.fsencode(tmp_path / "src")], limit=10_000) == entries + 1


def test_walk_stops_at_its_limit(tmp_path):
    make_tree(tmp_path / "src", 40, 20)
    seen = statahead.walk([os.fsencode(tmp_path / "src")], limit=100, threads=1)
    assert 100 <= seen < 200  # stops at the first directory that crosses the limit


def test_walk_reports_regular_files_and_their_bytes(tmp_path):
    src = tmp_path / "src"
    make_tree(src, 3, 4)  # 12 files of one byte
    (src / "big").write_bytes(b"y" * 5000)
    (src / "link").symlink_to("big")
    os.mkfifo(src / "fifo")
    reports = []
    statahead.walk([os.fsencode(src), os.fsencode(src / "big")],
                   report=lambda *r: reports.append(r))
    # "big" is counted twice (once as a source of its own): the totals are an estimate
    assert reports[-1] == (14, 12 + 2 * 5000, True)
    assert all(not done for *_, done in reports[:-1])


def test_helper_process_reports_totals(tmp_path):
    make_tree(tmp_path / "src", 5, 5)
    got = []
    with statahead.StatAhead([str(tmp_path / "src")], on_totals=lambda *r: got.append(r)) as ahead:
        deadline = time.monotonic() + 30
        while (not got or not got[-1][2]) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not ahead.running
    assert got[-1] == (25, 25, True)


def test_walk_skips_missing_roots(tmp_path):
    assert statahead.walk([os.fsencode(tmp_path / "nothing")], limit=100) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_walk_does_not_cross_into_other_file_systems(tmp_path):
    entries = make_tree(tmp_path / "src", 2, 3)
    mnt = tmp_path / "src" / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)], check=True)
    try:
        make_tree(mnt, 5, 5)
        # the mount point itself is an entry; nothing below it is
        assert statahead.walk([os.fsencode(tmp_path / "src")], limit=10_000) == entries + 1
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_helper_process_finishes_and_close_is_idempotent(tmp_path):
    make_tree(tmp_path / "src", 3, 3)
    ahead = statahead.StatAhead([str(tmp_path / "src")], limit=1000)
    deadline = time.monotonic() + 30
    while ahead.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ahead.running
    assert ahead._proc.returncode == 0  # the script ran to its end, no traceback
    ahead.close()
    ahead.close()


def test_close_kills_a_running_helper():
    ahead = statahead.StatAhead.__new__(statahead.StatAhead)  # a long-running stand-in
    ahead._proc, ahead._reader = subprocess.Popen(["sleep", "60"]), None
    assert ahead.running
    ahead.close()
    assert not ahead.running


@pytest.fixture
def repo(tmp_path):
    return Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw",
                           kdf=KdfParams(1, 8 << 20), cache_root=str(tmp_path / "cache"))


def test_backup_starts_stat_ahead_only_with_a_large_enough_parent(tmp_path, repo, monkeypatch):
    src = tmp_path / "src"
    entries = make_tree(src, 4, 4)  # 4 dirs + 16 files, plus src itself
    started = []

    class Recorder(statahead.StatAhead):
        def __init__(self, roots, limit):
            started.append((roots, limit))
            super().__init__(roots, limit)

    monkeypatch.setattr(archiver_mod, "StatAhead", Recorder)
    monkeypatch.setattr(archiver_mod, "STAT_AHEAD_MIN_ENTRIES", entries)
    Archiver(repo).backup([str(src)])
    assert started == []  # no parent: an initial backup reads data, not metadata
    Archiver(repo).backup([str(src)])
    assert len(started) == 1  # the parent's summary counts 16 files and 5 directories
    assert started[0] == ([str(src)], 2 * (16 + 5) + 10_000)
    Archiver(repo, BackupOptions(force=True)).backup([str(src)])
    assert len(started) == 1  # --force reads everything anyway
    monkeypatch.setattr(archiver_mod, "STAT_AHEAD_MIN_ENTRIES", 10_000)
    Archiver(repo).backup([str(src)])
    assert len(started) == 1  # too small to pay for a process


def test_backup_counts_totals_when_asked(tmp_path, repo, monkeypatch):
    src = tmp_path / "src"
    make_tree(src, 2, 3)
    started = []

    class Recorder(statahead.StatAhead):
        def __init__(self, roots, limit=0, on_totals=None):
            started.append((roots, limit, on_totals))
            super().__init__(roots, limit, on_totals)
            while self.running:  # let it finish so that the totals are complete
                time.sleep(0.01)

    monkeypatch.setattr(archiver_mod, "StatAhead", Recorder)
    archiver = Archiver(repo, BackupOptions(count_totals=True))
    archiver.backup([str(src)])
    assert [(r, lim) for r, lim, _ in started] == [([str(src)], 0)]  # no parent, no limit
    p = archiver.progress
    assert (p.total_files, p.total_bytes, p.totals_done) == (6, 6, True)
