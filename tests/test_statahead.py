"""Stat-ahead: the helper walk's bounds, its process, its reports, and when a backup starts it."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dedupe import archiver as archiver_mod
from dedupe import statahead
from dedupe.archiver import Archiver, BackupOptions
from dedupe.backends.local import LocalBackend
from dedupe.crypto import KdfParams
from dedupe.errors import SourceError
from dedupe.filesaver import WHOLE_FILE_MAX
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
    with statahead.StatAhead([str(tmp_path / "src")], count=True) as ahead:
        ahead.on_totals(lambda *r: got.append(r))
        deadline = time.monotonic() + 30
        while (not got or not got[-1][2]) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not ahead.running
    assert got[-1] == (25, 25, True)


def test_walk_reports_large_regular_files_with_one_link(tmp_path):
    src = tmp_path / "src"
    make_tree(src, 2, 2)
    (src / "d000" / "big").write_bytes(b"b" * 1001)
    (src / "edge").write_bytes(b"e" * 1000)  # not larger than the bound
    (src / "linked").write_bytes(b"l" * 2000)
    os.link(src / "linked", src / "d001" / "linked2")  # the walker's hard-link rules decide
    (src / "symlink").symlink_to("d000/big")
    got = []
    statahead.walk([os.fsencode(src)], large=1000, on_large=got.append)
    assert got == [os.fsencode(src / "d000" / "big")]
    got.clear()
    statahead.walk([os.fsencode(src)], on_large=got.append)  # large=0: none
    assert got == []


def test_helper_process_reports_large_files_once_the_backup_decides(tmp_path):
    """The reports wait (kept by the reader) until the backup decides; then every one
    arrives, odd names included. Told None, the reader drops them."""
    src = tmp_path / "src"
    names = [b"plain", b"with space", b"new\nline", b"\xff\xfe-not-utf8"]
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for name in names:
            with open(os.path.join(os.fsencode(src / f"d{d}"), name), "wb") as f:
                f.write(b"z" * 600)
    expected = {os.path.join(os.fsencode(src / f"d{d}"), n) for d in range(3) for n in names}
    got = []
    ahead = statahead.StatAhead([str(src)], large=500)
    deadline = time.monotonic() + 30
    while ahead.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == []  # nobody asked for them yet
    ahead.on_large(got.append)
    ahead.close()  # (the reader reads to the pipe's end first)
    assert set(got) == expected and len(got) == len(expected)
    dropped = statahead.StatAhead([str(src)], large=500)
    dropped.on_large(None)
    dropped.close()  # no hang: the reader dropped the reports


def test_reports_before_the_decision_do_not_pause_the_walk(tmp_path):
    """An incremental backup decides only once its parent is found; until then the walk,
    which warms the inode cache meanwhile, must not stop at a full pipe of reports."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2000):  # more reports than a pipe holds
        (src / f"f{i:04}").write_bytes(b"z" * 3)
    ahead = statahead.StatAhead([str(src)], large=1)
    deadline = time.monotonic() + 30
    while ahead.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ahead.running  # the walk ended before any decision
    got = []
    ahead.on_large(got.append)
    ahead.close()
    assert len(got) == 2000


def test_helper_close_without_a_decision_does_not_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(statahead, "_LARGE_WAITING", 10)  # then the reader waits
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2000):  # more reports than a pipe holds: the helper blocks writing
        (src / f"f{i:04}").write_bytes(b"z" * 3)
    ahead = statahead.StatAhead([str(src)], large=1)
    time.sleep(0.2)
    t0 = time.monotonic()
    ahead.close()
    assert time.monotonic() - t0 < 10 and not ahead.running


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
    ahead._large_decided = threading.Event()
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
        def __init__(self, roots, limit, count=False, large=0):
            started.append((roots, limit, large))
            super().__init__(roots, limit, count, large)

    monkeypatch.setattr(archiver_mod, "StatAhead", Recorder)
    monkeypatch.setattr(archiver_mod, "STAT_AHEAD_MIN_ENTRIES", entries)
    Archiver(repo).backup([str(src)])
    # no parent: every file is read; the helper reports the large ones (earlyreads.py)
    assert started == [([str(src)], 0, WHOLE_FILE_MAX)]
    Archiver(repo).backup([str(src)])
    assert len(started) == 2  # the parent's summary counts 16 files and 5 directories
    assert started[1] == ([str(src)], 2 * (16 + 5) + 10_000, 0)
    Archiver(repo, BackupOptions(force=True)).backup([str(src)])
    assert started[2] == ([str(src)], 0, WHOLE_FILE_MAX)  # --force reads every file
    monkeypatch.setattr(archiver_mod, "STAT_AHEAD_MIN_ENTRIES", 10_000)
    Archiver(repo).backup([str(src)])
    assert len(started) == 3  # too small to pay for a process


def test_backup_counts_totals_when_asked(tmp_path, repo, monkeypatch):
    src = tmp_path / "src"
    make_tree(src, 2, 3)
    started = []

    class Recorder(statahead.StatAhead):
        def __init__(self, roots, limit=0, count=False, large=0):
            started.append((roots, limit, count, large))
            super().__init__(roots, limit, count, large)
            while self.running:  # let it finish so that the totals are complete
                time.sleep(0.01)

    monkeypatch.setattr(archiver_mod, "StatAhead", Recorder)
    archiver = Archiver(repo, BackupOptions(count_totals=True))
    archiver.backup([str(src)])
    assert started == [([str(src)], 0, True, WHOLE_FILE_MAX)]  # no parent, no limit
    p = archiver.progress
    assert (p.total_files, p.total_bytes, p.totals_done) == (6, 6, True)


def test_walk_takes_a_new_limit_and_ends_with_its_input(tmp_path):
    entries = make_tree(tmp_path / "src", 200, 10)  # ~10 ms: the limit arrives well before
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"30\n")  # the limit arrives; the input stays open
    seen = statahead.walk([os.fsencode(tmp_path / "src")], limits=statahead._lines(read_fd),
                          threads=1)
    os.close(write_fd)  # (the reader thread sees the end and stops)
    assert 30 <= seen < entries  # stopped after the directory that crossed 30 entries
    # the end of the input (the parent closed its end, or died) ends the walk at once
    assert statahead.walk([os.fsencode(tmp_path / "src")], limits=io.BytesIO(b"")) < entries
    assert statahead.walk([os.fsencode(tmp_path / "src")]) == entries


class Tracked(statahead.StatAhead):
    """A real helper that records what the backup does with it."""

    def __init__(self, roots, limit=0, count=False, large=0):
        self.calls = [("start", list(roots), limit, count, large)]
        super().__init__(roots, limit, count, large)

    def set_limit(self, limit):
        self.calls.append(("set_limit", limit))
        super().set_limit(limit)

    def on_totals(self, callback):
        self.calls.append(("on_totals",))
        super().on_totals(callback)

    def on_large(self, callback):
        self.calls.append(("on_large", callback is not None))
        super().on_large(callback)

    def close(self):
        if self._proc is not None:
            self.calls.append(("close",))
        super().close()


def test_an_early_helper_is_kept_only_where_the_backup_would_start_one(tmp_path, repo,
                                                                       monkeypatch):
    src = tmp_path / "src"
    make_tree(src, 4, 4)
    monkeypatch.setattr(archiver_mod, "StatAhead", Tracked)
    monkeypatch.setattr(archiver_mod, "STAT_AHEAD_MIN_ENTRIES", 5)
    opts = BackupOptions()
    start = ("start", [str(src)], 0, False, WHOLE_FILE_MAX)
    early = archiver_mod.start_stat_ahead([str(src)], opts)
    Archiver(repo, opts).backup([str(src)], early)
    assert early.calls == [start, ("on_large", True), ("close",)]  # no parent: early reads
    early = archiver_mod.start_stat_ahead([str(src) + "/"], opts)  # the same source
    Archiver(repo, opts).backup([str(src)], early)
    assert early.calls == [start, ("on_large", False),
                           ("set_limit", 2 * (16 + 5) + 10_000), ("close",)]
    monkeypatch.setattr(archiver_mod, "STAT_AHEAD_MIN_ENTRIES", 10_000)
    early = archiver_mod.start_stat_ahead([str(src)], opts)
    Archiver(repo, opts).backup([str(src)], early)
    assert early.calls == [start, ("close",)]  # a small parent: none wanted, closed at once
    assert archiver_mod.start_stat_ahead([str(tmp_path / "nothing")], opts) is None


def test_an_early_helper_counts_totals_for_the_backup(tmp_path, repo, monkeypatch):
    src = tmp_path / "src"
    make_tree(src, 2, 3)
    monkeypatch.setattr(archiver_mod, "StatAhead", Tracked)
    opts = BackupOptions(count_totals=True, force=True)  # totals are wanted even so
    early = archiver_mod.start_stat_ahead([str(src)], opts)
    while early.running:  # let it finish so that the totals are complete
        time.sleep(0.01)
    archiver = Archiver(repo, opts)
    archiver.backup([str(src)], early)
    assert early.calls == [("start", [str(src)], 0, True, WHOLE_FILE_MAX), ("on_totals",),
                           ("on_large", True), ("close",)]
    p = archiver.progress
    assert (p.total_files, p.total_bytes, p.totals_done) == (6, 6, True)


def test_an_early_helper_is_closed_when_the_backup_fails(tmp_path, repo, monkeypatch):
    monkeypatch.setattr(archiver_mod, "StatAhead", Tracked)
    (tmp_path / "src").mkdir()
    early = archiver_mod.start_stat_ahead([str(tmp_path / "src")], BackupOptions())
    with pytest.raises(SourceError):
        Archiver(repo).backup([str(tmp_path / "gone")], early)
    assert early.calls[-1] == ("close",) and not early.running
