"""Restore, phase 2: write the planned blobs into their files, pack by pack, on a thread pool.

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
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .backends.base import pack_name
from .index import BlobLocation

_COALESCE_GAP = 256 * 1024
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
                 lock: threading.Lock) -> None:
        self.repo, self._locs, self.progress = repo, locs, progress
        self.workers, self.max_read, self.sparse = workers, max_read, sparse
        self._warn, self._lock = warn, lock

    def fill(self, by_pack: dict[bytes, dict[bytes, list]]) -> None:
        packs = list(by_pack.items())
        if not packs:
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="snap-restore")
        try:
            for fut in [pool.submit(self._fill_pack, pid, blobs) for pid, blobs in packs]:
                fut.result()
        finally:
            # On an error or Ctrl-C, packs not yet started are dropped: the with-statement's
            # shutdown would fetch every one of them before the exception got through.
            pool.shutdown(wait=True, cancel_futures=True)

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
            with self._lock:
                item.remaining -= 1
                self.progress.bytes_done += len(plain)
                if item.remaining == 0:
                    self.progress.files_done += 1
