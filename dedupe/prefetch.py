"""Read-ahead for backups: keep the disk busy while the walker and the readers work.

The walker (small files) and each reader thread (larger ones) read one file at a time. On a
cold page cache that serialises metadata lookups and file reads behind Python's work. When the walker has listed a directory it hands
the prefetcher the files it will have to read (new, or their size, mtime, ctime or inode
differ from the parent snapshot); a helper process opens each (bringing in its inode) and
asks for its contents with ``posix_fadvise(WILLNEED)``: asynchronous reads. Everything here is
a hint: errors are ignored, and hints the helper is too far behind to take are dropped.

The hints are given in a process, not in threads, for the same reason as statahead.py's
walk: an open, an fadvise and a close per file are three short system calls, and each one
that a thread of ours made handed the GIL to another thread and back. Hinting threads made a
warm backup of 31k small files (the benchmark corpus's /etc, /home and /srv) spend half its
context switches on them and take 4.7 s; without hints it took 3.8 s.

The walker writes ``SIZE PATH\\0`` records to the helper's stdin without blocking: when the
pipe is full, what did not fit waits for the next directory, and that directory's hints are
dropped. That bounds how far ahead of the reading the hints run, and the memory they take.

**Walking ahead.** Hints given as the walker lists a directory come just in time: the walker
reads the directory's first files before the disk has them, and a cold initial backup's
walker waited for the disk 11-24% of its time. When every file will be read (no parent
snapshot, or ``--force``), ``walk`` has the helper walk the sources itself, in the walker's
order, and hint every regular file of up to ``WHOLE_FILE_MAX`` bytes (the early reads take
the larger ones, earlyreads.py), at most ``WALK_AHEAD`` bytes past the walker. The walker
reports its position (``passed``: a path, every file before which it is done with) each
``POSITION_EVERY`` bytes of files. Files and whole subtrees it is past are skipped; so an
excluded subtree, which the helper cannot know of, costs at most ``WALK_AHEAD`` bytes of
hints. The walker's own per-directory hints then stop: one pipe write per directory less.

Run as a script (``python -I -S prefetch.py``, or ``prefetch.py walk AHEAD LARGE ROOT...``)
it imports the standard library only.
"""

from __future__ import annotations

import os
import queue
import stat
import subprocess
import threading
from collections import deque

if __name__ != "__main__":  # (run as a script, the helper needs none of snap)
    from . import helperproc

_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)
_O_NOATIME = getattr(os, "O_NOATIME", 0)
_MAX_AHEAD = 64 * 1024 * 1024  # bytes of one file hinted; sequential readahead does the rest
_THREADS = 2  # opens in flight in the helper (each waits for an inode on a cold cache)
_PIPE_SIZE = 1024 * 1024  # asked for: ~10k hints queued (Linux's default is 64 KiB)
_F_SETPIPE_SZ = 1031
WALK_AHEAD = 64 * 1024 * 1024  # bytes of files a walk hints past the walker's position
POSITION_EVERY = 1024 * 1024  # bytes of files the walker goes through between positions


def _hint_file(path: bytes, size: int) -> None:
    try:
        # (O_NONBLOCK: a FIFO put where the file was would block an open for reading.)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                     | _O_NOATIME)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, min(size, _MAX_AHEAD), _WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


class Prefetcher:
    """Hints files to the kernel through a helper process, started at the first hint. For one
    thread (the walker's)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._fd = -1
        self._pending = b""  # records a full pipe did not take
        self._usable = _WILLNEED is not None
        self.walking = False  # the helper walks the sources (``walk``)

    def ahead(self, files: list[tuple[bytes, int]]) -> None:
        """``files``: (path, size) of a directory's files about to be read."""
        if not files or not self._usable or self.walking:
            return
        if self._proc is None and not self._start():
            return
        if self._pending and not self._write(self._pending):
            return  # the helper is behind: these hints would come too late
        self._write(b"".join(b"%d %s\0" % (size, path) for path, size in files))

    def _write(self, data: bytes) -> bool:
        """Write what the pipe takes; keep the rest for later. True if all was written."""
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError:  # the helper is gone
            self._usable = False
            n = len(data)
        self._pending = data[n:]
        return not self._pending

    def walk(self, roots: list[bytes], large: int, ahead: int = WALK_AHEAD) -> bool:
        """Have the helper hint every regular file of up to ``large`` bytes below ``roots``
        (same file system), in the walker's order, at most ``ahead`` bytes past the position
        ``passed`` reports; ``ahead`` hints nothing from then on. For a backup that reads
        every file. False if the helper is already running or cannot start."""
        if not self._usable or self._proc is not None:
            return False
        if self._start(["walk", str(ahead), str(large), *roots]):
            self.walking = True
        return self.walking

    def passed(self, path: bytes) -> None:
        """(Walking.) The walker is done with every file before ``path``, in its order. Not
        to be called with a path holding a NUL byte (no file's path does)."""
        if not self.walking or not self._usable:
            return
        if self._pending and not self._write(self._pending):
            return  # the helper is behind: a later position will do
        self._write(path + b"\0")

    def _spawn(self, args: list) -> subprocess.Popen | None:
        return helperproc.spawn(__file__, args)

    def _start(self, args: list | None = None) -> bool:
        self._proc = self._spawn(args or [])
        if self._proc is None:
            self._usable = False
            return False
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        os.set_blocking(self._fd, False)
        try:
            import fcntl
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except (ImportError, OSError):
            pass  # the default size: fewer hints queued
        return True

    def close(self) -> None:
        """End the helper: hints still queued are of no use once the backup is over."""
        proc, self._proc = self._proc, None
        self._usable = False
        if proc is not None:
            helperproc.end(proc)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(fd: int, threads: int = _THREADS, wait: bool = False) -> None:
    """Hint the ``SIZE PATH\\0`` records read from ``fd`` until its end; ``wait``: until the
    hints queued by then are given, too."""
    todo: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        while (item := todo.get()) is not None:
            _hint_file(*item)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    pending = b""
    while chunk := os.read(fd, 65536):
        *records, pending = (pending + chunk).split(b"\0")
        for record in records:
            size, _, path = record.partition(b" ")
            try:
                todo.put((path, int(size)))
            except ValueError:
                continue
    for t in workers:
        todo.put(None)
    if wait:
        for t in workers:
            t.join()


def walk_order(path: bytes) -> list[bytes]:
    """A key that sorts paths in the order the walker meets them: depth first, the entries
    of a directory by name (bytes), so a directory's path comes before its contents'. (Here,
    not in earlyreads.py, which uses it too: this module runs as a script.)"""
    return path.split(b"/")


class WalkLead:
    """A walk's hints, in the walker's order, at most ``ahead`` bytes past its position."""

    def __init__(self, ahead: int) -> None:
        self.ahead = ahead
        self._cond = threading.Condition(threading.Lock())
        self._hinted: deque = deque()  # (order, size) of files hinted the walker is not past
        self._bytes = 0  # their sizes' sum
        self._position: list[bytes] = []  # the walker is done with every file before it
        self._closed = False

    def passed(self, path: bytes) -> None:
        key = walk_order(path)
        with self._cond:
            if key <= self._position:
                return
            self._position = key
            while self._hinted and self._hinted[0][0] < key:
                self._bytes -= self._hinted.popleft()[1]
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _hint(self, path: bytes, size: int) -> bool:
        """Hint one file once there is room (unless the walker is past it); False once
        closed."""
        key = walk_order(path)
        with self._cond:
            while self._bytes and self._bytes + size > self.ahead and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            if key < self._position:
                return True
        _hint_file(path, size)
        with self._cond:
            self._hinted.append((key, size))
            self._bytes += size
        return True

    def walk(self, roots: list[bytes], large: int) -> None:
        """Hint the regular files of 1 to ``large`` bytes below ``roots`` (or a root that is
        one); return when all are hinted or on ``close``. A root inside another is walked
        once."""
        done: list[bytes] = []
        for root in sorted(set(roots), key=walk_order):
            if any(r == b"/" or root.startswith(r + b"/") for r in done):
                continue
            done.append(root)
            try:
                st = os.lstat(root)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if not self._walk_dir(root, st.st_dev, large):
                    return
            elif stat.S_ISREG(st.st_mode) and 0 < st.st_size <= large:
                if not self._hint(root, st.st_size):
                    return

    def _walk_dir(self, path: bytes, dev: int, large: int) -> bool:
        key, position = walk_order(path), self._position
        if key < position and position[:len(key)] != key:
            return True  # the walker is past all of it
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return True
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                if 0 < st.st_size <= large and not self._hint(entry.path, st.st_size):
                    return False
            elif stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                if not self._walk_dir(entry.path, dev, large):
                    return False
        return True


def serve_walk(fd: int, ahead: int, large: int, roots: list[bytes]) -> None:
    """Walk ``roots``, hinting, while positions (``PATH\\0`` records) come from ``fd``;
    return when the walk is done or ``fd`` ends."""
    lead = WalkLead(ahead)

    def positions() -> None:
        pending = b""
        while chunk := os.read(fd, 65536):
            *records, pending = (pending + chunk).split(b"\0")
            if records:
                lead.passed(records[-1])  # the latest is all that counts
        lead.close()

    threading.Thread(target=positions, daemon=True).start()
    lead.walk(roots, large)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["walk"]:
        serve_walk(0, int(sys.argv[2]), int(sys.argv[3]), [os.fsencode(a) for a in sys.argv[4:]])
    else:
        serve(0)
    os._exit(0)  # the end of the input is the end of the backup: queued hints are moot
