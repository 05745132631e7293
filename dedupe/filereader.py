"""Random access to the content of file nodes, blob by blob, for ``mount`` (and anyone who
needs ``pread`` semantics on a file in a snapshot).

A file's content is a list of items: 32-byte blob ids, or ints (runs of that many zero bytes,
holes). ``FileContent`` turns the list into cumulative start offsets once (blob lengths come
from the index), so a read at any offset is a bisection plus the blobs that overlap the
range: nothing before the offset is fetched.

Decrypted blobs live in a bounded LRU shared by every reader. Loads are single-flight: two
readers (or a reader and the prefetcher) asking for the same blob wait for one fetch. When a
reader's offsets are sequential, the next blobs are fetched in background threads while the
current one is being copied out; on S3 the next request is then already in flight.
"""

from __future__ import annotations

import signal
import threading
from bisect import bisect_right
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Hashable, TypeVar

from .errors import IntegrityError
from .packs import BLOB_DATA
from .tree import Node

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Reads that land within this distance of where the previous read ended count as sequential:
# the kernel issues read-ahead requests on several threads, so they arrive slightly shuffled.
SEQUENTIAL_WINDOW = 1 << 20
_ZEROS = bytes(1 << 20)


class LoadingLRU(Generic[K, V]):
    """A thread-safe LRU of computed values, bounded by total weight, with single-flight loads.

    ``get(key)`` returns the cached value or runs ``load(key)`` once, however many threads ask
    at the same time; a failed load is not cached (every waiter sees the exception). The most
    recent value is kept even if it alone exceeds the capacity, so one huge directory or blob
    is not decoded again for every lookup.
    """

    def __init__(self, load: Callable[[K], V], capacity: int,
                 weigh: Callable[[V], int] = lambda v: 1) -> None:
        self._load = load
        self._weigh = weigh
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._weight = 0
        self._inflight: dict[K, Future] = {}

    def get(self, key: K) -> V:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit[0]
            fut = self._inflight.get(key)
            owner = fut is None
            if owner:
                fut = self._inflight[key] = Future()
        if not owner:
            return fut.result()
        try:
            value = self._load(key)
        except BaseException as exc:
            with self._lock:
                del self._inflight[key]
            fut.set_exception(exc)
            raise
        with self._lock:
            del self._inflight[key]
            self._put_locked(key, value)
        fut.set_result(value)
        return value

    def _put_locked(self, key: K, value: V) -> None:
        w = self._weigh(value)
        self._items[key] = (value, w)
        self._weight += w
        while self._weight > self.capacity and len(self._items) > 1:
            _, (_, old) = self._items.popitem(last=False)
            self._weight -= old

    def present(self, key: K) -> bool:
        """Cached or being loaded right now (the prefetcher's "nothing to do" test)."""
        with self._lock:
            return key in self._items or key in self._inflight

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weight = 0

    @property
    def weight(self) -> int:
        return self._weight

    def __len__(self) -> int:
        return len(self._items)


class FileContent:
    """A file node's content items with their start offsets."""

    __slots__ = ("items", "starts", "size")

    def __init__(self, index, content) -> None:
        items = list(content)
        starts = [0] * (len(items) + 1)
        pos = 0
        for i, item in enumerate(items):
            starts[i] = pos
            if isinstance(item, int):
                if item < 0:
                    raise IntegrityError("file content has a negative hole")
                pos += item
            else:
                loc = index.lookup(item, BLOB_DATA)
                if loc is None:
                    raise IntegrityError(f"data blob {item.hex()} is not in the index")
                pos += loc.raw_length
        starts[len(items)] = pos
        self.items = items
        self.starts = starts
        # The content decides what can be read; a node whose recorded size disagrees is
        # damaged, and reading what the content really holds beats inventing bytes.
        self.size = pos


class ReadCursor:
    """Per-open-file state: where the last read ended, and how far prefetch has been queued.

    Updated without a lock on purpose: a race only costs a redundant or missed prefetch, never
    a wrong byte.
    """

    __slots__ = ("next_offset", "queued")

    def __init__(self) -> None:
        self.next_offset = 0
        self.queued = -1  # highest item index handed to the prefetcher


def _block_signals() -> None:
    # Prefetch threads must never be the ones that take SIGINT/SIGTERM: the main thread
    # turns those into an orderly unmount.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class ContentReader:
    """Reads byte ranges of files through a shared cache of decrypted blobs."""

    def __init__(self, repo, *, cache_bytes: int = 64 << 20, readahead: int = 4,
                 prefetch_threads: int = 4) -> None:
        # Four blobs (~4 MiB) ahead keeps about as many S3 requests in flight: enough for
        # 200 MB/s at typical first-byte latencies, small against the cache bound.
        self.repo = repo
        self.readahead = readahead
        self.blobs: LoadingLRU[bytes, bytes] = LoadingLRU(self._load_blob, cache_bytes, len)
        self._pool = ThreadPoolExecutor(prefetch_threads, thread_name_prefix="snap-prefetch",
                                        initializer=_block_signals) if readahead > 0 else None
        self._closed = False

    def _load_blob(self, blob_id: bytes) -> bytes:
        return self.repo.load_blob(BLOB_DATA, blob_id)

    def content(self, node: Node) -> FileContent:
        return FileContent(self.repo.index, node.get("content") or ())

    def read(self, fc: FileContent, offset: int, size: int,
             cursor: ReadCursor | None = None) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer only at the end of the file).

        Raises the repository's errors (``IntegrityError`` for a blob that fails
        verification, ``BackendError`` for storage failures): never returns wrong bytes.
        """
        segs = self.segments(fc, offset, size, cursor)
        if len(segs) == 1:
            data, lo, hi = segs[0]
            if data is not None and lo == 0 and hi == len(data):
                return data
        return b"".join(_ZEROS[:hi - lo] if data is None and hi - lo <= len(_ZEROS)
                        else bytes(hi - lo) if data is None else memoryview(data)[lo:hi]
                        for data, lo, hi in segs)

    def segments(self, fc: FileContent, offset: int, size: int,
                 cursor: ReadCursor | None = None) -> list[tuple[bytes | None, int, int]]:
        """``read`` without the copy: [(blob, lo, hi)] whose ``blob[lo:hi]`` concatenated are
        the bytes; ``None`` for a run of ``hi - lo`` zeros (a hole)."""
        end = min(offset + size, fc.size)
        if offset >= end:
            return []
        starts, items = fc.starts, fc.items
        i = bisect_right(starts, offset) - 1
        segs: list[tuple[bytes | None, int, int]] = []
        pos = offset
        while pos < end:
            lo = pos - starts[i]
            hi = min(end, starts[i + 1]) - starts[i]
            item = items[i]
            segs.append((None if isinstance(item, int) else self.blobs.get(item), lo, hi))
            pos = starts[i] + hi
            i += 1
        if cursor is not None:
            sequential = abs(offset - cursor.next_offset) <= SEQUENTIAL_WINDOW
            cursor.next_offset = end
            if sequential:
                self._prefetch(fc, i, cursor)
            else:  # a seek: read-ahead starts over from here once reads are sequential again
                cursor.queued = i - 1
        return segs

    def _prefetch(self, fc: FileContent, first: int, cursor: ReadCursor) -> None:
        """Queue the blobs of items ``first .. first+readahead-1`` not yet cached or queued."""
        if self._pool is None or self._closed:
            return
        last = min(first + self.readahead, len(fc.items)) - 1
        for k in range(max(first, cursor.queued + 1), last + 1):
            item = fc.items[k]
            if isinstance(item, bytes) and not self.blobs.present(item):
                try:
                    self._pool.submit(self._prefetch_one, item)
                except RuntimeError:  # pool shut down while we were queueing
                    return
        cursor.queued = max(cursor.queued, last)

    def _prefetch_one(self, blob_id: bytes) -> None:
        try:
            self.blobs.get(blob_id)
        except Exception:
            # The reader that needs this blob fetches it again and reports the error there.
            pass

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
