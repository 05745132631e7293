"""Stat-ahead for incremental backups: warm the kernel's inode cache before the walker asks.

An incremental backup of a mostly unchanged tree is bound by metadata: the walker lists each
directory and ``lstat``s each entry, one at a time, and on a cold cache every inode is a disk
read. A helper *process* walks the same trees a little ahead with two threads and throws the
results away; the walker then finds the inodes in memory (a cold unchanged re-backup of the
2 GB benchmark corpus: 1.28 s -> 0.93 s). It is a process, not threads, because threads here
would fight the walker for the GIL: stat-ahead threads made the same backup ~30% slower.

Everything about it is a hint. It never crosses a file system boundary (a network mount that
the backup excludes must not be walked), stops after ``limit`` entries (excluded subtrees are
walked too, so the lead is bounded by the size of the last snapshot), exits when its parent
is gone, and is killed when the backup ends. It runs in its own session so that a Ctrl-C
meant for snap does not print a traceback from it. If it cannot start, nothing changes.

Run as a script (``python -I -S statahead.py LIMIT ROOT...``) it imports the standard library
only, which keeps its start-up at ~15 ms.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading

_THREADS = 2  # measured: 1 thread 0.52 s, 2 threads 0.42 s, 8 threads 0.60 s (kernel contention)


class StatAhead:
    """Start the helper process for ``roots``; ``close`` ends it. Safe to close twice."""

    def __init__(self, roots: list[str], limit: int) -> None:
        self._proc: subprocess.Popen | None = None
        if not sys.executable:
            return
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(limit),
                 *(os.fsencode(r) for r in roots)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except (OSError, ValueError):
            self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def __enter__(self) -> "StatAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def walk(roots: list[bytes], limit: int, threads: int = _THREADS) -> int:
    """``lstat`` every entry below ``roots`` (same file system only), depth first in name
    order like the walker, until ``limit`` entries were seen. Returns the number seen."""
    parent = os.getppid()
    todo: queue.LifoQueue = queue.LifoQueue()
    state = {"pending": 0, "seen": 0}
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
            n = 0
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        n += 1
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if entry.is_dir(follow_symlinks=False) and st.st_dev == dev:
                            subdirs.append(entry.name)
            except OSError:
                pass
            subdirs.sort(reverse=True)  # LIFO: the first name comes out first
            with lock:
                state["seen"] += n
                over = state["seen"] >= limit or os.getppid() != parent
            if not over:
                for name in subdirs:
                    add(os.path.join(path, name), dev)
            with lock:
                state["pending"] -= 1
                if over or state["pending"] == 0:
                    finished.set()

    for root in roots:
        try:
            add(root, os.lstat(root).st_dev)
        except OSError:
            continue
    if state["pending"]:
        for _ in range(threads):
            threading.Thread(target=work, daemon=True).start()
        finished.wait()
    return state["seen"]


if __name__ == "__main__":
    walk([os.fsencode(a) for a in sys.argv[2:]], int(sys.argv[1]))
