"""Restore, phase 2: the packs of small files, written by a child process.

Why a process: a small file costs a few short system calls (open, write, close) and some
Python around its blob, so the thread writing packs of small files holds the GIL whenever it
is not in the kernel, and takes it back after every call. On the 2 GB benchmark corpus that
thread took 4.1 s for the 26k blobs of 31k small files, while two threads wrote every large
pack in 2.3 s and then waited; more threads on the small packs were slower, not faster. A
child process has a GIL of its own, so the small files are written beside the large ones.

The child is forked when the restore starts, before the index is loaded and the snapshot
planned, and waits. After the plan, the parent starts its threads on the large packs and
sends the child the small ones, one msgpack ``(pack id, blobs)`` per pack, each blob with its
location and places ``(path, mode, lazy, ref, offset)``; no packs (``close``) means no work.
The child writes them with the filler's own code and reports through a second pipe: msgpack
``[bytes, refs, warnings]`` at most every 50 ms (or 4096 refs), and last ``[..., error]``
(``"Type: message"`` if it failed, else None). A ref is ``id(item)`` of the parent's planned
item, mapped back through a dict the parent keeps while the child runs.

Memory: after a fork, each page either process writes is copied for it, and reading a
Python object writes to it (its reference count). Forked after the plan, a child walking
the plan's objects copied 26 MiB of the parent's pages, and the parent's own work copied
16 MiB more; forked before it, the child shares only the interpreter and the open
repository, and decodes its part of the plan into objects of its own. Collections are kept
from visiting the shared objects: they are frozen (``gc.freeze``) at the fork, in both
processes, until the child ends.

The child leaves the terminal's process group and ignores SIGINT (a Ctrl-C is the parent's
to handle: it kills the child), and ends when the parent stops reading its reports or closes
the work pipe. It never prints: its warnings go to the parent.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from typing import Callable, NamedTuple, NoReturn

import msgpack

from .backends import is_local
from .errors import SnapError
from .index import BlobLocation
from .mallopt import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt

_REPORT_EVERY = 0.05  # seconds
_REPORT_IDS = 4096
_PIPE_SIZE = 1024 * 1024  # asked for: the parent rarely waits for the child to take a pack
_F_SETPIPE_SZ = 1031
_SIGNALS = {signal.SIGINT, signal.SIGTERM}

# (bytes written, items that got a blob (once per blob), warnings), applied by the parent.
Report = Callable[[int, list, list], None]


def usable(backend) -> bool:
    """Whether a child can write from ``backend``: on Linux (fork without exec is unsafe on
    macOS), and a local directory under any wrappers (a remote store's client and its
    connections must not be shared with a child)."""
    return is_local(backend) and sys.platform.startswith("linux") and hasattr(os, "fork")


class _Place(NamedTuple):
    """The child's stand-in for a planned item: what the filler reads of one, and its ref."""

    path: bytes
    mode: int
    lazy: bool
    ref: int


def _encode(pack_id: bytes, blobs: dict, locs: dict) -> bytes:
    entries = []
    for bid, places in blobs.items():
        loc = locs[bid]
        entries.append((bid, loc.offset, loc.length, loc.raw_length, loc.type, loc.compression,
                        [(item.path, item.mode, item.lazy, id(item), at) for item, at in places]))
    return msgpack.packb((pack_id, entries))


def _decode(pack_id: bytes, entries) -> tuple[dict, dict]:
    """(blob id -> location, blob id -> places) of one pack sent to the child."""
    locs, blobs = {}, {}
    for bid, offset, length, raw_length, btype, comp, places in entries:
        locs[bid] = BlobLocation(pack_id, offset, length, raw_length, btype, comp)
        blobs[bid] = [(_Place(path, mode, lazy, ref), at) for path, mode, lazy, ref, at in places]
    return locs, blobs


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Reporter:
    """In the child: the filler's ``_done`` and ``_warn``, batched into messages."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._bytes = 0
        self._ids: list[int] = []
        self._warnings: list[str] = []
        self._last = time.monotonic()

    def done(self, place: _Place, size: int) -> None:
        self._ids.append(place.ref)
        self._bytes += size
        if len(self._ids) >= _REPORT_IDS or time.monotonic() - self._last >= _REPORT_EVERY:
            self.send()

    def warn(self, message: str) -> None:
        self._warnings.append(message)

    def send(self, *final: str | None) -> None:
        _write_all(self._fd, msgpack.packb([self._bytes, self._ids, self._warnings, *final]))
        self._bytes, self._ids, self._warnings = 0, [], []
        self._last = time.monotonic()


def _give_back_freed_memory() -> None:
    """In the child: let glibc return freed memory to the system, and serve reads from
    fresh mappings, rather than keep them in a heap whose pages the parent shares (the
    restore CLI tunes malloc to keep freed memory, for its own reads). The child's peak
    memory on the 2 GB corpus: 36 -> 27 MiB (PSS), with 1 MiB reads (see _child_filler)."""
    mallopt((M_TRIM_THRESHOLD, 128 * 1024), (M_MMAP_THRESHOLD, 256 * 1024))


def _child(make_filler: Callable, work: int, reports: int, mask) -> NoReturn:
    code = 1
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _give_back_freed_memory()
        reporter = _Reporter(reports)
        filler = make_filler(reporter.warn)
        filler._done = reporter.done
        error = None
        try:
            unpacker = msgpack.Unpacker(use_list=False, max_buffer_size=256 * 1024 * 1024)
            while chunk := os.read(work, 1 << 20):
                unpacker.feed(chunk)
                for pack_id, entries in unpacker:
                    filler._locs, blobs = _decode(pack_id, entries)
                    filler._fill_pack(pack_id, blobs)
        except BaseException as exc:  # reported; the parent raises it as a SnapError
            error = f"{type(exc).__name__}: {exc}"
        reporter.send(error)
        code = 0 if error is None else 1
    finally:
        os._exit(code)  # never the parent's atexit handlers, nor its buffered output


class SmallPackWriter:
    """A forked child that writes the packs ``send`` gives it. ``make_filler(warn)`` builds
    its PackFiller (called in the child). ``finish`` or ``kill`` it, then ``raise_error``."""

    def __init__(self, make_filler: Callable) -> None:
        self._items: dict[int, object] = {}
        self._error: str | None = None
        self._status: int | None = None
        self._reader: threading.Thread | None = None
        work_r, self._work = os.pipe()
        reports, reports_w = os.pipe()
        gc.freeze()
        # Ctrl-C and SIGTERM wait until the child has its own handling (see _child): a
        # handler raising in the child before that would run the parent's code on in it.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            self.pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            gc.unfreeze()
            for fd in (work_r, self._work, reports, reports_w):
                os.close(fd)
            raise
        if self.pid == 0:
            try:
                os.close(self._work)
                os.close(reports)
                _child(make_filler, work_r, reports_w, blocked)
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(work_r)
        os.close(reports_w)
        self._reports = reports
        try:
            import fcntl
            fcntl.fcntl(self._work, _F_SETPIPE_SZ, _PIPE_SIZE)
        except (ImportError, OSError):
            pass  # the default size: the parent waits for the child more often

    def start(self, report: Report) -> None:
        """Deliver the child's reports to ``report`` (from a thread) from now on."""
        self._reader = threading.Thread(target=self._read, args=(report,),
                                        name="snap-restore-child", daemon=True)
        self._reader.start()

    def send(self, packs: list, locs: dict) -> None:
        """Give the child ``packs`` ((pack id, blob id -> places), as the filler's) to write;
        ``locs``: blob id -> location. Blocks while the child is a pipe's worth behind."""
        for pack_id, blobs in packs:
            for places in blobs.values():
                for item, _ in places:
                    self._items[id(item)] = item
            try:
                _write_all(self._work, _encode(pack_id, blobs, locs))
            except BrokenPipeError:
                return  # the child has ended: raise_error says why

    def _read(self, report: Report) -> None:
        unpacker = msgpack.Unpacker()
        items = self._items
        try:
            while chunk := os.read(self._reports, 1 << 16):
                unpacker.feed(chunk)
                for nbytes, ids, warnings, *final in unpacker:
                    report(nbytes, [items[i] for i in ids], warnings)
                    if final:
                        self._error = final[0]
        finally:
            os.close(self._reports)

    def finish(self) -> None:
        """No more packs: wait until the child has written what it got and ended."""
        self._close_work()
        if self._reader is not None:
            self._reader.join()
        self._reap()

    def kill(self) -> None:
        """Stop the child now and reap it (safe to call more than once)."""
        self._close_work()
        if self._status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reap()
        if self._reader is not None:
            self._reader.join()

    def _close_work(self) -> None:
        if self._work >= 0:
            os.close(self._work)
            self._work = -1

    def _reap(self) -> None:
        if self._status is None:
            self._status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            gc.unfreeze()
            if self._reader is None:  # never started: nobody else closes the reports
                os.close(self._reports)

    def raise_error(self) -> None:
        """Raise if the child failed (it stops at an unexpected error, as the threads do)."""
        if self._error is not None:
            raise SnapError(f"writing the packs of small files failed: {self._error}")
        if self._status:
            raise SnapError("the process writing the packs of small files ended with "
                            f"status {self._status}")
