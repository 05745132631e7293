"""A helper process that walks the backup's source trees beside the walker.

It serves two purposes, and costs the walker nothing, because it is a process: threads doing
the same would take the GIL from the walker (stat-ahead threads once made a cold unchanged
re-backup ~30% slower, and an in-process totals scan cost a 1 s backup 0.2-0.35 s).

- **Stat-ahead.** An incremental backup of a mostly unchanged tree is bound by metadata: the
  walker lists each directory and ``lstat``s each entry, one at a time, and on a cold cache
  every inode is a disk read. The helper lists and ``lstat``s the same trees a little ahead,
  with two threads, in the walker's order, so the walker finds the inodes in memory (a cold
  unchanged re-backup of the 2 GB benchmark corpus: 1.28 s -> 0.93 s).
- **Totals.** It counts regular files and their bytes and reports them (for a progress line's
  ETA, restic's "scanner"). Excluded paths are counted too: the totals are an estimate.
- **Large files.** It reports the paths of regular files larger than ``large`` bytes (with one
  link), so that an initial backup can read them ahead of the walker (earlyreads.py).

It never crosses a file system boundary (a network mount that the backup excludes must not be
walked), stops after ``limit`` entries when it only warms the cache (excluded subtrees are
walked too, so the lead is bounded by the size of the last snapshot), exits when its parent
is gone (its stdin ends), and is killed when the backup ends (see helperproc.py). If it cannot
start, nothing else changes.

Run as a script (``python -I -S statahead.py LIMIT COUNT LARGE ROOT...``; LIMIT 0 for none,
COUNT 1 to report totals, LARGE 0 for no large files) it imports the standard library only,
which keeps its start-up at ~15 ms. It then writes ``FILES BYTES`` lines to stdout every
0.25 s and ``FILES BYTES done`` last, and an ``F HEXPATH`` line for each large file.
Each line it reads on stdin is a new LIMIT (the backup knows it only once the parent snapshot
is found, and starts the helper before that); the end of stdin ends the walk.
"""

from __future__ import annotations

import os
import queue
import stat
import subprocess
import sys
import threading
from typing import Callable

if __name__ != "__main__":  # (run as a script, the helper needs none of snap)
    from . import helperproc

_THREADS = 2  # measured: 1 thread 0.52 s, 2 threads 0.42 s, 8 threads 0.60 s (kernel contention)
_REPORT_EVERY = 0.25  # seconds between totals lines
# Large files' paths the reader keeps until the backup decides what to do with them (it knows
# only once the parent snapshot is found); past this many it waits, and so does the walk.
_LARGE_WAITING = 16_384

Totals = Callable[[int, int, bool], None]  # (files, bytes, complete)
Large = Callable[[bytes], None]  # the path of a large file


class StatAhead:
    """Start the helper process for ``roots``; ``close`` ends it. Safe to close twice.

    ``limit``: entries to walk at most (0: none until ``set_limit``). ``count``: the helper
    counts totals, which go to the callback ``on_totals`` sets (from a reader thread).
    ``large``: the helper reports regular files larger than this (0: none) to the callback
    ``on_large`` sets, from the reader thread. Until that decision the reader keeps up to
    ``_LARGE_WAITING`` of them, then waits for it (the helper's pipe fills, and its walk
    pauses) unless ``close`` comes first."""

    def __init__(self, roots: list[str], limit: int = 0, count: bool = False,
                 large: int = 0) -> None:
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._callback: Totals | None = None
        self._last: tuple[int, int, bool] | None = None
        self._large: Large | None = None
        self._large_decided = threading.Event()  # on_large was called, or close
        self._large_waiting: list[bytes] = []  # reported before the decision (reader's own)
        self._lock = threading.Lock()
        piped = count or large > 0
        self._proc = helperproc.spawn(__file__, [str(limit), "1" if count else "0", str(large),
                                                 *(os.fsencode(r) for r in roots)], stdout=piped)
        if self._proc is None:
            return
        if piped:
            self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,),
                                            name="snap-stat-ahead", daemon=True)
            self._reader.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def on_totals(self, callback: Totals) -> None:
        """Send the totals to ``callback`` from now on, starting with the latest report."""
        with self._lock:
            self._callback, last = callback, self._last
        if last is not None:
            callback(*last)

    def _deliver(self, files: int, size: int, complete: bool) -> None:
        with self._lock:
            self._last, callback = (files, size, complete), self._callback
        if callback is not None:
            callback(files, size, complete)

    def on_large(self, callback: Large | None) -> None:
        """Send the large files' paths to ``callback`` (None: drop them), those reported so
        far first. The reader thread calls it, and may block in it."""
        self._large = callback
        self._large_decided.set()

    def _deliver_large(self, path: bytes | None) -> None:
        """(Reader thread.) ``path``; None: the reports have ended."""
        if not self._large_decided.is_set():
            if path is not None and len(self._large_waiting) < _LARGE_WAITING:
                self._large_waiting.append(path)
                return
            self._large_decided.wait()
        waiting, self._large_waiting = self._large_waiting, []
        callback = self._large
        if callback is not None:
            for p in waiting:
                callback(p)
            if path is not None:
                callback(path)

    def _read(self, pipe) -> None:
        try:
            _read_reports(pipe, self._deliver, self._deliver_large)
        finally:
            self._deliver_large(None)  # those kept until now, once the decision comes

    def set_limit(self, limit: int) -> None:
        """Stop the walk after ``limit`` entries (for a helper started before it was known)."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(b"%d\n" % limit)
            proc.stdin.flush()
        except (OSError, ValueError):  # it has finished (or is finishing) already
            pass

    def close(self) -> None:
        """End the helper. A callback ``on_large`` set must not be blocked by then."""
        self._large_decided.set()  # (without a decision: drop the reports)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        helperproc.end(proc)
        if self._reader is not None:
            self._reader.join()  # ends at the pipe's end
            proc.stdout.close()

    def __enter__(self) -> "StatAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_reports(pipe, on_totals: Totals, on_large: Large) -> None:
    for line in pipe:
        parts = line.split()
        try:
            if parts[0] == b"F":
                on_large(bytes.fromhex(parts[1].decode()))
            else:
                on_totals(int(parts[0]), int(parts[1]), parts[2:] == [b"done"])
        except (IndexError, ValueError):
            return


def walk(roots: list[bytes], limit: int = 0, threads: int = _THREADS,
         report: Callable[[int, int, bool], None] | None = None, limits=None,
         large: int = 0, on_large: Large | None = None) -> int:
    """``lstat`` every entry below ``roots`` (same file system only), depth first in name
    order like the walker, until ``limit`` entries were seen (0: no limit). ``report(files,
    bytes, done)`` gets the regular files counted so far every 0.25 s and at the end.
    ``limits``: lines that each set a new limit; their end ends the walk. ``on_large(path)``
    gets each regular file with one link larger than ``large`` bytes (from any thread).
    Returns the number of entries seen."""
    todo: queue.LifoQueue = queue.LifoQueue()
    state = {"pending": 0, "seen": 0, "files": 0, "bytes": 0, "limit": limit}
    lock = threading.Lock()
    finished = threading.Event()

    def add(path: bytes, dev: int) -> None:
        with lock:
            state["pending"] += 1
        todo.put((path, dev))

    def work() -> None:
        while not finished.is_set():
            path, dev = todo.get()
            subdirs = []
            n = files = size = 0
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        n += 1
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if stat.S_ISREG(st.st_mode):
                            files += 1
                            size += st.st_size
                            if large and st.st_size > large and st.st_nlink == 1 and on_large:
                                on_large(entry.path)
                        elif stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                            subdirs.append(entry.name)
            except OSError:
                pass
            subdirs.sort(reverse=True)  # LIFO: the first name comes out first
            with lock:
                state["seen"] += n
                state["files"] += files
                state["bytes"] += size
                over = state["limit"] and state["seen"] >= state["limit"]
            if not over:
                for name in subdirs:
                    add(os.path.join(path, name), dev)
            with lock:
                state["pending"] -= 1
                if over or state["pending"] == 0:
                    finished.set()

    for root in roots:
        try:
            st = os.lstat(root)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            add(root, st.st_dev)
        elif stat.S_ISREG(st.st_mode):  # a file given as a source
            state["files"] += 1
            state["bytes"] += st.st_size
    if limits is not None:
        def read_limits() -> None:
            for line in limits:
                try:
                    value = int(line)
                except ValueError:
                    continue
                with lock:
                    state["limit"] = value
            finished.set()  # end of input: the parent closed its end or is gone

        threading.Thread(target=read_limits, daemon=True).start()
    if state["pending"]:
        for _ in range(threads):
            threading.Thread(target=work, daemon=True).start()
        while not finished.wait(_REPORT_EVERY):
            if report is not None:
                with lock:
                    files, size = state["files"], state["bytes"]
                report(files, size, False)
    if report is not None:
        report(state["files"], state["bytes"], True)
    return state["seen"]


_out_lock = threading.Lock()  # the walk's threads and its reporter share stdout


def _print_totals(files: int, size: int, done: bool) -> None:
    with _out_lock:
        sys.stdout.write(f"{files} {size}{' done' if done else ''}\n")
        sys.stdout.flush()


def _print_large(path: bytes) -> None:
    with _out_lock:
        sys.stdout.write(f"F {path.hex()}\n")
        sys.stdout.flush()


def _lines(fd: int):
    """Lines read from ``fd`` with plain ``os.read``: a thread blocked in a buffered stdin
    would hold its lock, and the interpreter could not shut down past it."""
    pending = b""
    while chunk := os.read(fd, 4096):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines


if __name__ == "__main__":
    try:
        walk([os.fsencode(a) for a in sys.argv[4:]], int(sys.argv[1]),
             report=_print_totals if sys.argv[2] == "1" else None, limits=_lines(0),
             large=int(sys.argv[3]), on_large=_print_large)
    except BrokenPipeError:  # the backup ended first
        pass
    os._exit(0)  # (the limits reader may still be blocked in its read)
