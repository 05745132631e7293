"""Restore, phase 2: write the planned blobs into their files, pack by pack, on ``workers``
threads, of which at most ``small_threads`` write packs of small files at a time; or, where
a child process can be forked, the packs of small files are written by a child
(restorechild.py) and the others by ``workers - 1`` threads.

For each pack the planner grouped the blobs it needs; neighbouring ones are coalesced into one
ranged read, each blob is decrypted, verified and ``pwrite``-n to every place it goes to. A
file made only of blobs is created by the first one written (``lazy`` items). Decryption,
decompression, file creation and writes release the GIL, so this scales across cores.

A place is ``(item, offset)``; an item is the planner's record of a file, of which this module
uses ``path``, ``mode``, ``lazy`` and ``remaining`` (blobs still to write, counted down here).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Callable

from . import restorechild
from .backends.base import pack_name
from .index import BlobLocation

_COALESCE_GAP = 256 * 1024
# A pack whose blobs average less than this holds small files: see PackFiller.small_threads.
_SMALL_BLOBS = 64 * 1024
# A range larger than this (remote stores read whole packs) is decoded as its body arrives.
_STREAM_ABOVE = 8 * 1024 * 1024

# Opening a planned file to write a blob: never through a symlink put there since the plan.
REOPEN = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE = REOPEN | os.O_CREAT


def _affected(places) -> str:
    """'affected: a, b, c and N more' for (item, offset) places, each file named once."""
    paths = list(dict.fromkeys(os.fsdecode(item.path) for item, _ in places))
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return "affected: " + ", ".join(paths[:3]) + more


class PackFiller:
    """Writes ``by_pack`` (pack id -> blob id -> places) using ``locs`` (blob id -> location).
    Problems with one pack or blob are reported through ``warn`` and the rest goes on."""

    def __init__(self, repo, locs: dict[bytes, BlobLocation], progress, *, workers: int,
                 max_read: int, sparse: bool, warn: Callable[[str], None],
                 lock: threading.Lock, small_threads: int = 0) -> None:
        """``small_threads``: threads of the ``workers`` that write the packs of small blobs
        (0: any thread writes any pack). Small files written by several threads at once
        cost more than one thread writing them: their creations in the same directories
        contend in the kernel, and their short system calls hand the GIL back and forth. The
        other threads write packs of large blobs meanwhile. With one such thread of three, 4
        alternating cold restores of the 2 GB corpus: 4.75 -> 4.42 s, system time 3.8 -> 2.5 s
        (31k small files alone, one thread for all: 3.0 -> 2.85 s, system time 1.8 -> 1.0 s)."""
        self.repo, self._locs, self.progress = repo, locs, progress
        self.workers, self.max_read, self.sparse = workers, max_read, sparse
        self._warn, self._lock = warn, lock
        self.small_threads = small_threads if small_threads < workers else 0

    def _small(self, blobs: dict[bytes, list]) -> bool:
        locs = self._locs
        return sum(locs[b].length for b in blobs) < _SMALL_BLOBS * len(blobs)

    def fill(self, by_pack: dict[bytes, dict[bytes, list]],
             child: restorechild.SmallPackWriter | None = None) -> None:
        """Write every pack on ``workers`` threads; raises the first unexpected error. On an
        error or Ctrl-C, packs not yet started are dropped, the ones being written finish.

        ``child``: a forked writer (restorechild.py) for the packs of small blobs, when
        there are both kinds; the others then go to ``workers - 1`` threads. It is finished
        here (or killed, on an error)."""
        packs, small = list(by_pack.items()), []
        if child is not None:
            ids = {pack[0] for pack in packs if self._small(pack[1])}
            if ids and len(ids) < len(packs):
                small = [pack for pack in packs if pack[0] in ids]
                packs = [pack for pack in packs if pack[0] not in ids]
        workers = max(1, self.workers - 1) if small else self.workers
        handout = _Packs(packs, self._small if self.small_threads and not small else None,
                         self.small_threads)
        try:
            if small:
                child.start(self._reported)
            self._run(handout, workers, lambda: child.send(small, self._locs) if small else None)
        except BaseException:
            if child is not None:
                child.kill()
            raise
        if child is not None:
            child.finish()
            child.raise_error()

    def _run(self, handout: "_Packs", workers: int, meanwhile: Callable[[], None]) -> None:
        """The threads on ``handout``; ``meanwhile`` runs on this thread once they started."""
        threads = [threading.Thread(target=handout.work, args=(self._fill_pack,),
                                    name=f"snap-restore_{i}") for i in range(workers)]
        for t in threads:
            t.start()
        try:
            meanwhile()
            for t in threads:
                t.join()
        finally:
            handout.stop()
            for t in threads:
                t.join()
        handout.raise_error()

    def _reported(self, nbytes: int, items: list, warnings: list) -> None:
        """What the child process wrote (see restorechild.py)."""
        for message in warnings:
            self._warn(message)
        with self._lock:
            self.progress.bytes_done += nbytes
            for item in items:
                self._count(item)

    def _fill_pack(self, pack_id: bytes, blobs: dict[bytes, list]) -> None:
        name = pack_name(pack_id.hex())
        order = sorted(blobs, key=lambda b: self._locs[b].offset)
        groups: list[list[bytes]] = []
        for bid in order:
            loc = self._locs[bid]
            if groups:
                last = self._locs[groups[-1][-1]]
                first = self._locs[groups[-1][0]]
                if (loc.offset - (last.offset + last.length) <= _COALESCE_GAP
                        and loc.offset + loc.length - first.offset <= self.max_read):
                    groups[-1].append(bid)
                    continue
            groups.append([bid])
        for group in groups:
            start, end = self._span(group)
            if end - start > _STREAM_ABOVE:
                self._fill_streamed(name, group, blobs)
            else:
                self._fill_group(name, group, blobs)

    def _span(self, group: list[bytes]) -> tuple[int, int]:
        """(start, end) of the pack's bytes a group of blobs (in offset order) covers."""
        last = self._locs[group[-1]]
        return self._locs[group[0]].offset, last.offset + last.length

    def _unreadable(self, name: str, exc: Exception, group: list[bytes],
                    blobs: dict[bytes, list]) -> None:
        self._warn(f"cannot read {name}: {exc}; "
                   + _affected(place for b in group for place in blobs[b]))

    def _fill_group(self, name: str, group: list[bytes], blobs: dict[bytes, list]) -> None:
        """Blobs of one pack close together: one ranged read, then each blob."""
        start, end = self._span(group)
        try:
            data = self.repo.backend.get(name, start, end - start)
        except Exception as exc:
            self._unreadable(name, exc, group, blobs)
            return
        view = memoryview(data)
        for bid in group:
            loc = self._locs[bid]
            self._decode_and_write(name, bid, view[loc.offset - start:loc.offset - start + loc.length],
                                   blobs[bid])

    def _fill_streamed(self, name: str, group: list[bytes], blobs: dict[bytes, list]) -> None:
        """A large range (a remote pack, read whole): one request whose body is decoded blob
        by blob as it arrives, so memory holds a blob rather than the range. If the body
        breaks off, the rest is read with one (retried) ranged get."""
        start, end = self._span(group)
        done = 0
        try:
            stream = self.repo.backend.get_stream(name, start, end - start)
        except Exception as exc:
            self._unreadable(name, exc, group, blobs)
            return
        try:
            pos = start
            for bid in group:
                loc = self._locs[bid]
                while pos < loc.offset:  # a gap of unneeded blobs (at most _COALESCE_GAP)
                    pos += len(stream.read(min(loc.offset - pos, 1 << 20)))
                stored = stream.read(loc.length)
                pos += loc.length
                done += 1
                self._decode_and_write(name, bid, stored, blobs[bid])
        except Exception:
            if done < len(group):
                self._fill_group(name, group[done:], blobs)
        finally:
            stream.close()

    def _decode_and_write(self, name: str, bid: bytes, stored, places: list) -> None:
        loc = self._locs[bid]
        try:
            plain = self.repo.codec.decode(loc.entry(bid), stored, f"blob {bid.hex()[:16]} in {name}")
        except Exception as exc:
            self._warn(f"{exc}; " + _affected(places))
            return
        self._write_blob(plain, places)

    def _write_blob(self, plain: bytes, places: list) -> None:
        skip_zeros = self.sparse and plain.count(0) == len(plain)  # (strip would copy)
        for item, offset in places:
            if not skip_zeros:
                try:
                    fd = os.open(item.path, CREATE if item.lazy else REOPEN, item.mode)
                    try:
                        os.pwrite(fd, plain, offset)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    self._warn(f"{os.fsdecode(item.path)}: {exc.strerror}")
            self._done(item, len(plain))

    def _done(self, item, size: int) -> None:
        """A blob of ``size`` bytes was written to ``item`` (or failed to be)."""
        with self._lock:
            self.progress.bytes_done += size
            self._count(item)

    def _count(self, item) -> None:
        """One blob of ``item`` less to write (under the lock)."""
        item.remaining -= 1
        if item.remaining == 0:
            self.progress.files_done += 1


class _Packs:
    """The packs to write, handed out to the worker threads: those ``small`` says hold small
    blobs to at most ``small_threads`` threads at a time, the others to any thread, so that
    a thread kept from a small pack takes a large one instead of waiting."""

    def __init__(self, packs: list, small: Callable[[dict], bool] | None,
                 small_threads: int) -> None:
        self._small: deque = deque()
        self._large: deque = deque()
        for pack in packs:
            (self._small if small is not None and small(pack[1]) else self._large).append(pack)
        self._limit = small_threads
        self._busy = 0  # threads on a small pack
        self._lock = threading.Lock()
        self._stopped = False
        self._error: BaseException | None = None

    def _next(self, was_small: bool) -> tuple[tuple | None, bool]:
        with self._lock:
            self._busy -= was_small
            if self._stopped:
                return None, False
            if self._small and self._busy < self._limit:
                self._busy += 1
                return self._small.popleft(), True
            if self._large:
                return self._large.popleft(), False
            return None, False  # small packs left only: the threads on them finish them

    def work(self, fill: Callable[[bytes, dict], None]) -> None:
        was_small = False
        while True:
            pack, was_small = self._next(was_small)
            if pack is None:
                return
            try:
                fill(*pack)
            except BaseException as exc:
                with self._lock:
                    self._error = self._error or exc
                self.stop()
                return

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error
