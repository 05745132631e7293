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

Run as a script (``python -I -S prefetch.py``) it imports the standard library only.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading

if __name__ != "__main__":  # (run as a script, the helper needs none of snap)
    from . import helperproc

_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)
_O_NOATIME = getattr(os, "O_NOATIME", 0)
_MAX_AHEAD = 64 * 1024 * 1024  # bytes of one file hinted; sequential readahead does the rest
_THREADS = 2  # opens in flight in the helper (each waits for an inode on a cold cache)
_PIPE_SIZE = 1024 * 1024  # asked for: ~10k hints queued (Linux's default is 64 KiB)
_F_SETPIPE_SZ = 1031


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

    def ahead(self, files: list[tuple[bytes, int]]) -> None:
        """``files``: (path, size) of a directory's files about to be read."""
        if not files or not self._usable:
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

    def _spawn(self) -> subprocess.Popen | None:
        return helperproc.spawn(__file__, [])

    def _start(self) -> bool:
        self._proc = self._spawn()
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


if __name__ == "__main__":
    serve(0)
    os._exit(0)  # the end of the input is the end of the backup: queued hints are moot
