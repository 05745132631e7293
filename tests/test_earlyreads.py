"""Early reads (earlyreads.py): the lane's order, hand-over, bounds and stop, and an initial
backup that reads its large files ahead without reading anything the walker would not."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedupe import archiver as archiver_mod
from dedupe import earlyreads
from dedupe.archiver import Archiver, BackupOptions
from dedupe.backends.local import LocalBackend
from dedupe.crypto import KdfParams
from dedupe.earlyreads import Admission, EarlyReads, walk_order
from dedupe.errors import Interrupted
from dedupe.exclusions import Exclusions
from dedupe.filesaver import WHOLE_FILE_MAX, FileContent, FileSaver
from dedupe.filters import PatternList
from dedupe.repository import Repository
from dedupe.walker import walk

BIG = WHOLE_FILE_MAX + 4096


# ----------------------------------------------------------------------------- the lane alone

names = st.sampled_from([b"a", b"a-b", b"a.b", b"ab", b"b", b"A", b"a0", b"\xff"])


@settings(max_examples=200, deadline=None)
@given(st.sets(st.lists(names, min_size=1, max_size=4).map(tuple), min_size=1, max_size=30))
def test_walk_order_is_the_walkers_order(paths):
    """Depth first, each directory's entries by name: what Archiver._dir does. (A plain sort
    of the paths is not: b"a-b/x" < b"a/x", but the walker enters "a" first.)"""
    tree: dict = {}
    for parts in paths:
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if node is None:
                break
        else:
            node.setdefault(parts[-1], None)
    order = []

    def visit(prefix: bytes, node: dict) -> None:
        for name in sorted(node):
            path = prefix + b"/" + name
            order.append(path)
            if node[name] is not None:
                visit(path, node[name])

    visit(b"", tree)
    assert sorted(order, key=walk_order) == order


def st_of(size: int = BIG, ino: int = 1, mtime: int = 5):
    return os.stat_result((0o100644, ino, 1, 1, 0, 0, size, 0, mtime, mtime),
                          {"st_mtime_ns": mtime * 10**9, "st_ctime_ns": mtime * 10**9})


class FakeSaver:
    """Reads that record their order and can be held, and a stop flag like FileSaver's."""

    def __init__(self) -> None:
        self.read_paths: list[bytes] = []
        self.hold: dict[bytes, threading.Event] = {}
        self.stopped = False

    def read(self, path: bytes, st) -> FileContent:
        self.read_paths.append(path)
        if path in self.hold:
            deadline = time.monotonic() + 10  # (a test fails, not hangs, if stop is lost)
            while not self.hold[path].wait(0.01) and time.monotonic() < deadline:
                if self.stopped:
                    raise Interrupted("stopped")
        return FileContent([path], st.st_size, False)

    def stop(self) -> None:
        self.stopped = True


def lane_with(paths, admit=None):
    saver = FakeSaver()
    lane = EarlyReads(admit or (lambda p: st_of()), saver.read, saver.stop)
    for p in paths:
        lane.offer(p)
    return lane, saver


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_lane_reads_in_walk_order_and_hands_over_results():
    paths = [b"/s/b/x", b"/s/a-b/y", b"/s/a/z", b"/s/a/b/w"]
    lane, saver = lane_with(paths)
    lane.start()
    try:
        wait_for(lambda: lane.files_read == 4)
        assert saver.read_paths == sorted(paths, key=walk_order)
        for p in sorted(paths, key=walk_order):
            slot = lane.take(p, st_of())
            assert isinstance(slot, Future) and slot.result().content == [p]
    finally:
        lane.close()


def test_take_refuses_a_changed_file_or_one_never_reported():
    lane, saver = lane_with([b"/s/a", b"/s/b", b"/s/c", b"/s/d"])
    saver.hold[b"/s/a"] = threading.Event()
    lane.start()
    try:
        wait_for(lambda: saver.read_paths == [b"/s/a"])
        held = lane.take(b"/s/a", st_of())
        assert held is not None and not held.done()  # in progress: the walker will wait
        assert lane.take(b"/s/a0", st_of()) is None  # never reported: the walker reads it
        saver.hold[b"/s/a"].set()
        assert held.result().content == [b"/s/a"]
        wait_for(lambda: lane.files_read == 4)
        assert lane.take(b"/s/c", st_of(mtime=6)) is None  # changed since the lane read it
        assert saver.read_paths == [b"/s/a", b"/s/b", b"/s/c", b"/s/d"]
        assert lane.take(b"/s/d", st_of(ino=2)) is None  # another file under that name
    finally:
        lane.close()


def test_lane_skips_what_the_walker_passed():
    lane, saver = lane_with([b"/s/a", b"/s/b", b"/s/c"])
    saver.hold[b"/s/a"] = threading.Event()
    lane.start()
    try:
        wait_for(lambda: saver.read_paths == [b"/s/a"])
        lane.take(b"/s/a", st_of())
        assert lane.take(b"/s/b1", st_of()) is None  # past /s/b, which it never took
        saver.hold[b"/s/a"].set()
        wait_for(lambda: lane.files_read == 2)
        time.sleep(0.05)
        assert saver.read_paths == [b"/s/a", b"/s/c"]
    finally:
        lane.close()


def test_a_file_the_walker_meets_before_the_lane_is_read_next_with_the_walkers_stat():
    """When the walker has caught up, the file it meets is claimed: the lane reads it next,
    not a reader thread at the same time as the lane's own (two large files in memory)."""
    paths = [b"/s/a", b"/s/b", b"/s/c", b"/s/d"]
    stats = []
    saver = FakeSaver()
    real_read = saver.read
    saver.read = lambda path, st: stats.append((path, st.st_ino)) or real_read(path, st)
    lane = EarlyReads(lambda p: st_of(), saver.read, saver.stop)
    for p in paths:
        lane.offer(p)
    saver.hold[b"/s/a"] = threading.Event()
    lane.start()
    try:
        wait_for(lambda: saver.read_paths == [b"/s/a"])
        first = lane.take(b"/s/a", st_of())
        claimed = lane.take(b"/s/c", st_of(ino=7))  # /s/b passed; /s/c not started
        assert isinstance(claimed, Future) and not claimed.done()
        saver.hold[b"/s/a"].set()
        assert claimed.result(10).content == [b"/s/c"]
        assert first.result(10).content == [b"/s/a"]
        wait_for(lambda: lane.files_read == 3)
        assert stats == [(b"/s/a", 1), (b"/s/c", 7), (b"/s/d", 1)]  # /s/c once, the walker's
    finally:
        lane.close()


def test_close_cancels_a_claim_the_lane_never_started():
    lane, saver = lane_with([b"/s/a", b"/s/b"])
    saver.hold[b"/s/a"] = threading.Event()  # never set: only close ends this read
    lane.start()
    wait_for(lambda: saver.read_paths == [b"/s/a"])
    claimed = lane.take(b"/s/b", st_of())
    assert claimed is not None and not claimed.done()
    lane.close()
    assert claimed.cancelled() and saver.read_paths == [b"/s/a"]


def test_lane_skips_what_admit_refuses_or_fails_on():
    def admit(path):
        if path.endswith(b"boom"):
            raise UnicodeError("cannot encode")
        return None if path.endswith(b"excluded") else st_of()

    lane, saver = lane_with([b"/s/1boom", b"/s/2excluded", b"/s/3ok"], admit)
    lane.start()
    try:
        wait_for(lambda: lane.files_read == 1)
        assert saver.read_paths == [b"/s/3ok"]
    finally:
        lane.close()


def test_close_interrupts_a_read_and_releases_a_blocked_offer(monkeypatch):
    monkeypatch.setattr(earlyreads, "MAX_QUEUED", 2)
    lane, saver = lane_with([b"/s/a"])
    saver.hold[b"/s/a"] = threading.Event()  # never set: only stop ends this read
    lane.start()
    wait_for(lambda: saver.read_paths == [b"/s/a"])
    slot = lane.take(b"/s/a", st_of())
    lane.offer(b"/s/b")
    lane.offer(b"/s/c")
    blocked = threading.Thread(target=lane.offer, args=(b"/s/d",))
    blocked.start()
    time.sleep(0.1)
    assert blocked.is_alive()  # the queue is full: the helper's pipe waits
    t0 = time.monotonic()
    lane.close()
    blocked.join(5)
    assert not blocked.is_alive() and time.monotonic() - t0 < 5
    with pytest.raises(Interrupted):
        slot.result()
    lane.close()  # twice is fine
    assert not any(t.name == "snap-early-read" for t in threading.enumerate())


def test_lane_runs_at_most_max_lead_files_ahead(monkeypatch):
    monkeypatch.setattr(earlyreads, "MAX_LEAD", 2)
    paths = [b"/s/%d" % i for i in range(5)]
    lane, saver = lane_with(paths)
    lane.start()
    try:
        wait_for(lambda: lane.files_read == 2)
        time.sleep(0.05)
        assert lane.files_read == 2
        assert lane.take(b"/s/0", st_of()) is not None
        wait_for(lambda: lane.files_read == 3)
        time.sleep(0.05)
        assert saver.read_paths == paths[:3]
        # The walker goes past /s/1 without taking it (gone since): no longer lead.
        assert lane.take(b"/s/2", st_of()) is not None
        wait_for(lambda: lane.files_read == 5)
    finally:
        lane.close()


# ------------------------------------------------------------------------------ in a backup


@pytest.fixture
def repo(tmp_path):
    return Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw",
                           kdf=KdfParams(1, 8 << 20), cache_root=str(tmp_path / "cache"))


def big(path: Path, seed: int, size: int = BIG) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (b"%d snap reads this file early. " % seed) * (size // 28 + 1)
    path.write_bytes(data[:size])
    return data[:size]


@pytest.fixture
def lane_reads(monkeypatch):
    """Paths FileSaver read on the lane's thread, recorded as each read starts."""
    seen: list[bytes] = []
    real = FileSaver.read_or_error

    def recording(self, path, st):
        if threading.current_thread().name == "snap-early-read":
            seen.append(path)
        return real(self, path, st)

    monkeypatch.setattr(FileSaver, "read_or_error", recording)
    return seen


def walker_waits_for_the_lane(monkeypatch, lane_reads, paths) -> None:
    """The walker meets each of ``paths`` only once the lane has started reading it (else a
    fast walker may pass a file before the lane gets to it, and read it itself)."""
    real_file = Archiver._file
    wanted = {os.fsencode(p) for p in paths}

    def waiting(self, path, st, *args):
        if path in wanted:
            wait_for(lambda: path in lane_reads)
        return real_file(self, path, st, *args)

    monkeypatch.setattr(Archiver, "_file", waiting)


def contents(repo, snapshot) -> dict[bytes, list]:
    return {p: n["content"] for p, n in walk(repo, snapshot.tree) if n["type"] == "file"}


def test_initial_backup_reads_large_files_early_and_stores_the_same_snapshot(
        tmp_path, repo, lane_reads, monkeypatch):
    src = tmp_path / "src"
    for d in range(20):
        for f in range(10):
            (src / f"a{d:02}").mkdir(parents=True, exist_ok=True)
            (src / f"a{d:02}" / f"f{f}").write_bytes(b"small %d %d" % (d, f))
    bigs = [src / "a05" / "big", src / "m" / "n" / "big", src / "z" / "big2"]
    for i, p in enumerate(bigs):
        big(p, i)
    walker_waits_for_the_lane(monkeypatch, lane_reads, bigs)
    early = archiver_mod.start_stat_ahead([str(src)], BackupOptions())
    first = Archiver(repo).backup([str(src)], early).snapshot
    assert sorted(lane_reads) == sorted(os.fsencode(p) for p in bigs)
    lane_reads.clear()
    monkeypatch.undo()
    monkeypatch.setattr(Admission, "__call__", lambda self, path: None)  # no early reads
    second = Archiver(repo, BackupOptions(no_parent=True)).backup([str(src)]).snapshot
    assert lane_reads == []
    src_node = lambda snap: next(n for p, n in walk(repo, snap.tree)  # noqa: E731
                                 if p == os.fsencode(src))
    # the same nodes, the same blob ids (above src, the repository's own directory changed)
    assert src_node(second)["subtree"] == src_node(first)["subtree"]


def test_the_lane_reads_nothing_the_walker_would_not(tmp_path, repo, lane_reads, monkeypatch):
    src = tmp_path / "src"
    wanted = [src / "keep" / "big", src / "keep" / "deeper" / "big"]
    big(wanted[0], 1)
    big(wanted[1], 2)
    big(src / "skipdir" / "big", 3)  # an excluded directory above it
    big(src / "keep" / "big.iso", 4)  # an excluded name
    big(src / "marked" / "sub" / "big", 5)  # a marker file two levels up
    (src / "marked" / ".nobackup").write_bytes(b"")
    big(src / "keep" / "huge", 6, size=3 * BIG)  # --exclude-larger-than
    big(src / "linked" / "big", 7)
    os.link(src / "linked" / "big", src / "linked" / "big.hardlink")  # two links
    opts = BackupOptions(excludes=[PatternList(["skipdir", "*.iso"])],
                         exclude_if_present=[(b".nobackup", None)],
                         exclude_larger_than=2 * BIG)
    # The rule itself, for every file (the lane may be closed before it gets to some):
    rules = Exclusions(opts.excludes, larger_than=opts.exclude_larger_than,
                       if_present=opts.exclude_if_present)
    judge = Admission(rules, [os.fsencode(src)])
    admitted = {p for d, _, fs in os.walk(os.fsencode(src)) for f in fs
                if judge(p := os.path.join(d, f)) is not None}
    assert admitted == {os.fsencode(p) for p in wanted}
    judge = Admission(rules, [os.fsencode(src / "keep" / "deeper")])
    assert judge(os.fsencode(wanted[0])) is None  # not below a source
    # ... and in a backup:
    walker_waits_for_the_lane(monkeypatch, lane_reads, wanted)
    snap = Archiver(repo, opts).backup([str(src)]).snapshot
    assert sorted(lane_reads) == sorted(os.fsencode(p) for p in wanted)
    stored = contents(repo, snap)
    assert os.fsencode(src / "linked" / "big") in stored  # read by the walker itself
    assert not any(b"skipdir" in p or b"marked/" in p or p.endswith((b".iso", b"huge"))
                   for p in stored)


def test_a_file_changed_after_the_lane_read_it_is_read_again(tmp_path, repo, lane_reads,
                                                              monkeypatch):
    src = tmp_path / "src"
    target = src / "b" / "big"
    big(target, 1)
    (src / "a").mkdir()
    (src / "a" / "small").write_bytes(b"s")
    changed = threading.Event()
    real_read = FileSaver.read_or_error

    def read_then_change(self, path, st):
        result = real_read(self, path, st)
        if threading.current_thread().name == "snap-early-read":
            time.sleep(0.01)  # (a visible mtime step on coarse clocks)
            big(target, 2)  # same size, new content and mtime
            changed.set()
        return result

    real_file = Archiver._file

    def file_after_change(self, path, st, *args):
        if path == os.fsencode(target):
            assert changed.wait(10)
            st = os.lstat(path)  # what the walker's listing would see now
        return real_file(self, path, st, *args)

    monkeypatch.setattr(FileSaver, "read_or_error", read_then_change)
    monkeypatch.setattr(Archiver, "_file", file_after_change)
    result = Archiver(repo).backup([str(src)])
    assert result.warnings == []
    node = next(n for p, n in walk(repo, result.snapshot.tree) if p == os.fsencode(target))
    stored = b"".join(repo.load_blob(0, b) for b in node["content"])
    assert stored == target.read_bytes() and stored.startswith(b"2 ")


def test_an_interrupted_backup_stops_the_lane(tmp_path, repo):
    src = tmp_path / "src"
    for i in range(4):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "big").write_bytes(os.urandom(8 * BIG))  # ~1 MiB chunks
    calls = {"n": 0}

    def cancelled() -> bool:  # checked per directory and per chunk
        calls["n"] += 1
        return calls["n"] > 10

    with pytest.raises(Interrupted):
        Archiver(repo, cancelled=cancelled).backup([str(src)])
    assert not any(t.name == "snap-early-read" for t in threading.enumerate())


def test_an_initial_backup_has_the_prefetch_helper_walk_ahead_of_the_walker(
        tmp_path, repo, monkeypatch):
    """Every file is read: the helper hints them walking ahead (prefetch.py), told where the
    walker is; an incremental backup hints only the files it will read, per directory."""
    from dedupe import prefetch

    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(12):  # 3 MiB in all: a few positions
            (src / f"d{d}" / f"f{f:02}").write_bytes(os.urandom(64 * 1024))
    walks, positions = [], []

    def walk_(self, roots, large, ahead=prefetch.WALK_AHEAD):
        walks.append((list(roots), large))
        self.walking = True  # (no helper: the walker's side alone)
        return True

    monkeypatch.setattr(prefetch.Prefetcher, "walk", walk_)
    monkeypatch.setattr(prefetch.Prefetcher, "passed", lambda self, path: positions.append(path))
    first = Archiver(repo).backup([str(src)]).snapshot
    assert walks == [([os.fsencode(src)], WHOLE_FILE_MAX)]
    assert len(positions) >= 2 and positions == sorted(positions, key=walk_order)
    assert all(p.startswith(os.fsencode(src) + b"/") for p in positions)
    walks.clear()
    positions.clear()
    second = Archiver(repo).backup([str(src)]).snapshot
    assert second.parent == first.id and walks == [] and positions == []


def test_the_lanes_blobs_are_background_work_for_the_encoders(tmp_path, repo, lane_reads,
                                                             monkeypatch):
    from dedupe.blobsaver import BlobSaver

    src = tmp_path / "src"
    big(src / "a" / "big", 1)
    (src / "b").mkdir()
    (src / "b" / "small").write_bytes(os.urandom(100 * 1024))  # one blob, read by the walker
    walker_waits_for_the_lane(monkeypatch, lane_reads, [src / "a" / "big"])
    saves = []
    real_save = BlobSaver.save

    def recording(self, blob_type, blob_id, data, force=False, background=False):
        saves.append((threading.current_thread().name, blob_type, background))
        return real_save(self, blob_type, blob_id, data, force, background)

    monkeypatch.setattr(BlobSaver, "save", recording)
    Archiver(repo).backup([str(src)])
    lane = {b for name, _, b in saves if name == "snap-early-read"}
    others = {b for name, _, b in saves if name != "snap-early-read"}
    assert lane == {True} and others == {False}
