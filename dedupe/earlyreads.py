"""Reading an initial backup's large files ahead of the walker, on one thread of their own.

A first backup of a server is two phases if its files are read where the walker meets them:
a long stretch of small files (configuration, source trees), bound by the walker's Python on
one core, then the large files (dumps, images), bound by zstd on both. The stat-ahead helper
(statahead.py) lists the tree in a fraction of a second and reports its large files; this
lane reads them (chunks, hashes, and hands the new blobs to the encoders) in the walker's
order while the walker is still among the small files, so the other core compresses
meanwhile. When the walker meets a large file, ``take`` gives it the lane's result, or the
lane's reading in progress, if the file's stat is still the one the lane read with; else
None, and the walker reads the file itself as it always did. A file reported but not
started yet when the walker meets it (the walker has caught up) is claimed: the lane reads
it next, with the walker's stat. Were the walker to read it instead, a reader thread would
stream it beside the lane: two large files' chunker windows and chunks in memory at once.

What the lane reads must be what the walker would read: ``Admission`` stats a reported path
and applies the backup's exclusions (exclusions.py) to it and to every directory between it
and its source. A file the walker then never takes (deleted, renamed or changed in between)
cost a read whose blobs nothing references until prune removes them.

The lane's blobs are background work for the encoders (blobsaver.py) until the walker gets
to them: the archiver asks ``on_lane`` which thread saves a blob.

Bounds: the lane reads one file at a time (files larger than ``WHOLE_FILE_MAX`` stream through
the chunker's windows one at a time anyway, see filesaver.py), holds at most ``MAX_QUEUED``
reported paths (``offer`` blocks, and so the helper's pipe, until there is room) and runs at
most ``MAX_LEAD`` files ahead of the walker.
"""

from __future__ import annotations

import heapq
import os
import stat
import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable

from .exclusions import Exclusions
from .filesaver import WHOLE_FILE_MAX, FileContent
from .prefetch import walk_order

MAX_QUEUED = 1024  # reported paths waiting for the lane
MAX_LEAD = 256  # files read (or being read) that the walker has not taken yet

#: stats a reported path: its stat if the walker will read this file, else None (Admission)
Admit = Callable[[bytes], "os.stat_result | None"]
#: reads a file (FileSaver.read_or_error); raises Interrupted when stopped
Read = Callable[[bytes, os.stat_result], "FileContent | OSError"]


class _Lane(threading.local):
    on = False  # this thread is a lane


_LANE = _Lane()


def on_lane() -> bool:
    """The calling thread is an early-read lane's."""
    return _LANE.on


class Admission:
    """``admit`` for a backup of ``sources`` (absolute, as bytes) under ``exclusions``.

    Called with a path the stat-ahead helper reported, it returns the file's stat if the
    walker will read the file and find it large: a regular file with one link, larger than
    WHOLE_FILE_MAX, below a source, and neither it nor a directory between them excluded.
    Else None. For one thread (the lane's): it remembers the directories it has judged."""

    def __init__(self, exclusions: Exclusions, sources: list[bytes]) -> None:
        self.exclusions = exclusions
        self.sources = sorted(sources)
        self._dirs: dict[bytes, bool] = {}  # directory -> the walker enters it

    def __call__(self, path: bytes) -> os.stat_result | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size <= WHOLE_FILE_MAX
                or self.exclusions.entry(path, st)):
            return None
        # The walker's root is the outermost source: sources inside sources are walked once.
        root = next((r for r in self.sources if r == b"/" or path.startswith(r + b"/")), None)
        if root is None:
            return None
        parent = os.path.dirname(path)
        while len(parent) > len(root):
            entered = self._dirs.get(parent)
            if entered is None:  # as the walker decides for a directory it lists
                entered = not (self.exclusions.entry(parent, None)
                               or self.exclusions.marked(parent))
                self._dirs[parent] = entered
            if not entered:
                return None
            parent = os.path.dirname(parent)
        return st


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """The same file, not changed in between, as far as stat tells."""
    return (a.st_ino == b.st_ino and a.st_dev == b.st_dev and a.st_size == b.st_size
            and a.st_mtime_ns == b.st_mtime_ns and a.st_ctime_ns == b.st_ctime_ns)


class EarlyReads:
    """Reads offered files in the walker's order, from ``start`` until ``close``; ``take``
    hands them over. ``offer`` may be called from any thread, before or after ``start``;
    ``take`` from the walker's thread only, in the walker's order. ``stop`` (FileSaver.stop)
    makes a read in progress raise Interrupted."""

    def __init__(self, admit: Admit, read: Read, stop: Callable[[], None]) -> None:
        self._admit = admit
        self._read = read
        self._stop_reads = stop
        self._cond = threading.Condition()
        self._queue: list[tuple[list[bytes], bytes]] = []  # heap of (walk_order, path)
        self._queued: set[bytes] = set()  # the paths in the heap
        self._claimed: deque = deque()  # (path, stat, Future): read these first
        self._started: dict[bytes, tuple[os.stat_result, Future]] = {}  # not taken yet
        self._passed: list[bytes] = []  # walk_order of the walker's latest take
        self._closed = False
        self._thread: threading.Thread | None = None
        self.files_read = 0  # files the lane read, taken or not

    def offer(self, path: bytes) -> None:
        """Queue a large file's path; blocks while ``MAX_QUEUED`` wait."""
        with self._cond:
            while len(self._queue) >= MAX_QUEUED and not self._closed:
                self._cond.wait()
            if not self._closed:
                heapq.heappush(self._queue, (walk_order(path), path))
                self._queued.add(path)
                self._cond.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="snap-early-read", daemon=True)
        self._thread.start()

    def _next(self) -> bytes | tuple[bytes, os.stat_result, Future] | None:
        """The next file the walker claimed, or else the next path to read once the lead
        allows; None once closed."""
        with self._cond:
            while True:
                while not self._closed:
                    if self._claimed:
                        return self._claimed.popleft()
                    if len(self._started) >= MAX_LEAD:
                        self._drop_passed()
                    if self._queue and len(self._started) < MAX_LEAD:
                        break
                    self._cond.wait()
                if self._closed:
                    return None
                key, path = heapq.heappop(self._queue)
                self._queued.discard(path)
                self._cond.notify_all()  # room for offers
                # Past it, the walker reads it itself (or claimed it); twice reported:
                # sources in sources.
                if key > self._passed and path not in self._started:
                    return path

    def _drop_passed(self) -> None:
        """Forget the files read that the walker went past without taking (deleted or
        renamed since, or in a directory it could not list): they no longer count as lead.
        Called under the lock."""
        for path in [p for p in self._started if walk_order(p) < self._passed]:
            del self._started[path]

    def _run(self) -> None:
        _LANE.on = True
        while (item := self._next()) is not None:
            if isinstance(item, tuple):  # claimed: the walker has stat-ed and admitted it
                self._read_into(*item)
                continue
            path = item
            try:
                st = self._admit(path)
            except Exception:  # (say, a path that cannot be encoded): the walker decides
                st = None
            if st is None:
                continue
            done: Future = Future()
            with self._cond:
                if self._closed or walk_order(path) <= self._passed:
                    continue
                self._started[path] = (st, done)
            self._read_into(path, st, done)

    def _read_into(self, path: bytes, st: os.stat_result, done: Future) -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            result = self._read(path, st)
        except BaseException as exc:  # Interrupted, or the saver's error: for the walker
            done.set_exception(exc)
        else:
            done.set_result(result)
        self.files_read += 1

    def take(self, path: bytes, st: os.stat_result) -> Future | None:
        """The lane's reading of ``path`` (done or in progress) if it read the file ``st``
        describes, or its coming reading if the file is reported but not started (claimed);
        else None, and the lane will not read it (the walker does)."""
        key = walk_order(path)
        with self._cond:
            self._passed = key
            entry = self._started.pop(path, None)
            if entry is not None:
                self._cond.notify_all()  # room in the lead
            elif path in self._queued and self._thread is not None and not self._closed:
                claimed: Future = Future()
                self._claimed.append((path, st, claimed))
                self._cond.notify_all()
                return claimed
        if entry is None or not same_file(entry[0], st):
            return None
        return entry[1]

    def close(self) -> None:
        """Stop, interrupting a read in progress (nobody waits for one any more), and let
        blocked ``offer`` calls return. Safe to call twice, or without ``start``."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._queued.clear()
            claimed, self._claimed = self._claimed, deque()
            self._cond.notify_all()
        for _, _, done in claimed:  # never started: nobody may wait for them forever
            done.cancel()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop_reads()
            thread.join()
        self._started.clear()
