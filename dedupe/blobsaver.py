"""Concurrent write path: blob -> compress + encrypt (worker threads) -> pack -> backend -> index.

Producers (the archiver's walker and file readers) hand over plaintext blobs with their ids.
An encoder compresses a blob (zstd releases the GIL), reserves a slot for it in the open pack
under the lock, and encrypts into the slot without the lock (for blobs from 64 KiB with the
GIL released too, see evp.py), so encoding runs on every core while the producers read and
chunk the next files; the last writer of a full pack ships it. A slot whose encryption failed
marks its pack broken: it is never written (the saver has failed by then anyway).
Finished packs are uploaded by a second pool; once a
pack is durable its blobs join the in-memory index, and every ``index_batch`` packs (and at
``flush``) an index file describing only durable packs is written. That order, packs before
index before snapshot, is what makes a crash at any instant harmless: a pack no index names is
garbage for prune, never a dangling reference.

Memory is bounded: at most ``max_encoding`` jobs (one large blob, or a batch of small ones
up to ``SMALL_BATCH_BYTES``; at most ``max_background`` of them background work) wait for or
undergo encoding, at most ``max_uploads`` finished
packs wait for or undergo upload, plus one open pack per blob type and one full pack whose
last slots are being filled.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .backends import is_local
from .backends.base import pack_name
from .chunker import Segment, anonymous as _anonymous
from .crypto import OVERHEAD
from .packs import BLOB_DATA, BLOB_TREE, HEADER_ROOM, BlobCodec, BlobEntry, PackBuilder


SMALL_BLOB = 64 * 1024  # blobs below this size are encoded in batches of ...
SMALL_BATCH = 64  # ... this many blobs
SMALL_BATCH_BYTES = 1024 * 1024  # ... or this many bytes

# The open packs: tree blobs, data blobs below SMALL_BLOB (small files), other data blobs.
# Small files' blobs stay apart from large files' chunks whatever order they come in (an
# initial backup reads its large files beside the small ones, earlyreads.py): a restore
# writes the packs of small blobs in a process of its own (restorechild.py), by their blobs'
# average size; mixed packs (67 of 72 for the 2 GB benchmark corpus) once left 4,320 of its
# 26k small files to the restore's threads, and cold restores took 7.6-9.1 s, not 4.1-4.9 s.
_SMALL_DATA = 2
_PACK_KINDS = {BLOB_DATA: BLOB_DATA, BLOB_TREE: BLOB_TREE, _SMALL_DATA: BLOB_DATA}


def _pack_kind(blob_type: int, raw_length: int) -> int:
    return _SMALL_DATA if blob_type == BLOB_DATA and raw_length < SMALL_BLOB else blob_type


def _kept_as_is(data: bytes | memoryview) -> bool:
    if isinstance(data, bytes):
        return True
    owner = data.obj if isinstance(data, memoryview) else None
    return isinstance(owner, bytes) or (isinstance(owner, Segment) and len(data) >= SMALL_BLOB)


class _Encoders:
    """The encoder threads. They take the producers' jobs before background ones: an initial
    backup's early reads (earlyreads.py) stream large files' chunks in bulk, and the walker,
    the backup's critical path, had waited behind them (its most common wait in a cold
    backup of the 2 GB benchmark corpus was for a slot taken by the lane's chunks)."""

    def __init__(self, workers: int, run: Callable[[tuple], None]) -> None:
        self._run = run
        self._cond = threading.Condition(threading.Lock())
        self._first: deque = deque()
        self._background: deque = deque()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"snap-encode_{i}",
                                          daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, job: tuple, background: bool) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the encoders have been shut down")
            (self._background if background else self._first).append(job)
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not (self._first or self._background or self._closed):
                    self._cond.wait()
                if self._first:
                    job = self._first.popleft()
                elif self._background:
                    job = self._background.popleft()
                else:
                    return  # closed, and nothing left
            self._run(job)
            del job  # its blobs may be views of a chunker window: let the window be reused

    def shutdown(self) -> None:
        """Finish the queued jobs, then end the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()


class BlobSaver:
    def __init__(
        self,
        repo,  # dedupe.repository.Repository (untyped to avoid an import cycle)
        *,
        workers: int = 2,
        max_encoding: int = 8,
        max_background: int = 3,
        max_uploads: int | None = None,
        upload_threads: int = 2,
        index_batch: int = 64,
        on_pack: Callable[[int, int], None] | None = None,
    ) -> None:
        self.repo = repo
        self.codec: BlobCodec = repo.codec
        self.pack_size: int = repo.config.pack_size
        self._encoders = _Encoders(workers, self._encode)
        self._upload_pool = ThreadPoolExecutor(upload_threads, thread_name_prefix="snap-upload")
        # Background jobs take a slot of their own too, so that they cannot hold every
        # slot. They pin chunker windows (12 MiB each) until encoded: with 3 such slots
        # rather than 6, cold backups of the 2 GB corpus peaked at 149-150 MiB of RSS
        # instead of 152-163, and took no longer (3 runs each).
        self._slots = threading.BoundedSemaphore(max_encoding)
        self._background_slots = threading.BoundedSemaphore(min(max_background, max_encoding))
        if max_uploads is None:
            # Finished packs queued or being stored. A local write takes milliseconds, and a
            # second queued pack only held 16 MiB more: 4 warm backups of the 2 GB corpus,
            # peak RSS 137-159 -> 139-145 MiB, no slower. A remote store wants two PUTs.
            max_uploads = 1 if is_local(repo.backend) else 2
        self._upload_slots = threading.BoundedSemaphore(max_uploads)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0  # encode jobs + uploads not yet finished
        # Pack buffers hold a full pack plus the largest chunk and the header's room, so a
        # slot never has to move.
        self._capacity = self.pack_size + repo.config.chunk_max + OVERHEAD + HEADER_ROOM
        self._builders = {k: self._new_builder(t) for k, t in _PACK_KINDS.items()}
        self._inflight: set[tuple[int, bytes]] = set()
        self._small: list = []  # small blobs waiting to be encoded as one batch
        self._small_bytes = 0
        self._durable: list[tuple[bytes, list[BlobEntry]]] = []
        self._index_lock = threading.Lock()
        self._index_batch = index_batch
        self._error: BaseException | None = None
        self._on_pack = on_pack
        self._owner = threading.get_ident()
        self.index_files: list[str] = []
        self.stats = {"blobs_added": 0, "bytes_added_raw": 0, "bytes_added_stored": 0,
                      "packs_written": 0}

    # -- producer side
    def known(self, blob_type: int, blob_id: bytes) -> bool:
        with self._lock:
            return (blob_type, blob_id) in self._inflight or self.repo.index.has(blob_id, blob_type)

    def save(self, blob_type: int, blob_id: bytes, data: bytes | memoryview,
             force: bool = False, background: bool = False) -> bool:
        """Queue a blob unless the repository has it already. Returns True if it was new.

        ``data`` may be a view of a buffer the caller reuses: it is copied only when new.
        A view of an immutable ``bytes`` object is kept as it is, and so is a large view of a
        chunker ``Segment`` (never written while viewed; a small one is copied, as it may wait
        in a batch and would keep a whole window from being reused).
        ``force`` stores it even if the index has a copy (prune's repacking moves blobs).
        ``background``: a large blob nobody waits for yet (an early read's), encoded after
        the others (a small one joins the next batch, which is not background work).
        """
        self._raise_error()
        key = (blob_type, blob_id)
        with self._lock:
            if key in self._inflight or (not force and self.repo.index.has(blob_id, blob_type)):
                return False
            self._inflight.add(key)
            self._busy += 1
            # Only in the thread that created the saver, under the lock the uploaders and
            # the other producers take: that thread is the only one reading the index without
            # the lock (the archiver's unchanged-file test), so nobody sees it half rebuilt.
            if threading.get_ident() == self._owner:
                self.repo.index.maybe_compact()
        if not _kept_as_is(data):
            data = bytes(data)  # a view of a buffer the caller will reuse
        if len(data) < SMALL_BLOB:
            # Small blobs (trees, small files) travel in batches: one job, one thread
            # wake-up and one slot for many of them.
            with self._lock:
                self._small.append((blob_type, blob_id, data))
                self._small_bytes += len(data)
                if len(self._small) < SMALL_BATCH and self._small_bytes < SMALL_BATCH_BYTES:
                    return True
                batch, self._small, self._small_bytes = self._small, [], 0
            self._submit(batch)
        else:
            self._submit([(blob_type, blob_id, data)], background)
        return True

    # -- workers
    def _done(self, n: int = 1) -> None:
        with self._lock:
            self._busy -= n
            if self._busy == 0:
                self._idle.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    def _submit(self, batch: list, background: bool = False) -> None:
        """Queue an encoder job; blocks while the slots (for ``background`` work: its own
        slots too) are taken."""
        slots = (self._background_slots, self._slots) if background else (self._slots,)
        for taken, sem in enumerate(slots):
            try:
                sem.acquire()
            except BaseException:
                for held in slots[:taken]:
                    held.release()
                raise
        try:
            self._encoders.submit((batch, slots), background)
        except BaseException:
            for sem in slots:
                sem.release()
            self._done(len(batch))
            raise

    def _encode(self, job: tuple[list, tuple]) -> None:
        batch, slots = job
        try:
            for blob_type, blob_id, data in batch:
                # (a view of this thread's buffer, valid until its next blob: sealed below)
                payload, comp = self.codec.compress_in_place(data)
                stored_length = len(payload) + OVERHEAD
                kind = _pack_kind(blob_type, len(data))
                with self._lock:
                    builder, full = self._builder_for(kind, stored_length)
                    offset = builder.reserve(blob_id, stored_length, len(data), comp)
                    builder.writers += 1
                    self.stats["blobs_added"] += 1
                    self.stats["bytes_added_raw"] += len(data)
                    self.stats["bytes_added_stored"] += stored_length
                    if builder.size >= self.pack_size:
                        builder.closed = True
                        self._builders[kind] = self._new_builder(blob_type)
                if full is not None:
                    self._ship(full)
                filled = False
                try:  # outside the lock: encoders fill their slots of one pack in parallel
                    self.codec.seal_into(builder.buf, offset, blob_type, blob_id, payload)
                    filled = True
                finally:
                    with self._lock:
                        builder.writers -= 1
                        builder.broken |= not filled
                        ready = builder.closed and builder.writers == 0
                if ready:  # the last writer of a closed pack ships it
                    self._ship(builder)
        except BaseException as exc:  # surfaced to the producer by _raise_error/flush
            self._fail(exc)
        finally:
            for sem in slots:
                sem.release()
            self._done(len(batch))

    def _new_builder(self, blob_type: int, stored_length: int = 0) -> PackBuilder:
        """A pack buffer: an anonymous mapping with huge pages, so pages cost memory only once
        written (a bytearray would be zero-filled whole) and filling it costs a page fault
        per 2 MiB. (Keeping a finished buffer for the next pack saved page faults with 4 KiB
        pages; with huge pages it bought no time and cost ~10 MiB of peak RSS.)"""
        return PackBuilder(blob_type, buf=_anonymous(max(self._capacity,
                                                         stored_length + HEADER_ROOM)))

    def _builder_for(self, kind: int,
                     stored_length: int) -> tuple[PackBuilder, PackBuilder | None]:
        """(the open pack of ``kind`` (``_pack_kind``) with room for the blob, a pack closed
        for lack of room or None). Called under the lock."""
        builder = self._builders[kind]
        if builder.room(stored_length):
            return builder, None
        builder.closed = True
        new = self._builders[kind] = self._new_builder(_PACK_KINDS[kind], stored_length)
        return new, (builder if builder.writers == 0 and len(builder) else None)

    def _ship(self, builder: PackBuilder) -> None:
        """Seal the pack and hand it to the upload pool (blocks while too many are queued)."""
        if builder.broken:
            return  # a slot was never filled; the saver has failed already
        pack_id_hex, data, entries = builder.finish(self.repo.key)
        self._upload_slots.acquire()
        with self._lock:
            self._busy += 1
        try:
            self._upload_pool.submit(self._upload, builder.blob_type, pack_id_hex, data, entries)
        except BaseException:
            self._upload_slots.release()
            self._done()
            raise

    def _upload(self, blob_type: int, pack_id_hex: str, data: memoryview,
                entries: list[BlobEntry]) -> None:
        try:
            name = pack_name(pack_id_hex)
            self.repo.backend.put(name, data, bulk=(blob_type == BLOB_DATA))
            if blob_type == BLOB_TREE:
                self.repo.cache_put(name, data)
            pack_id = bytes.fromhex(pack_id_hex)
            with self._lock:
                self.repo.index.add_pack(pack_id, entries)
                for e in entries:
                    self._inflight.discard((blob_type, e.id))
                self._durable.append((pack_id, entries))
                self.stats["packs_written"] += 1
                batch_ready = len(self._durable) >= self._index_batch
            if self._on_pack:
                self._on_pack(blob_type, len(data))
            if batch_ready:
                self._write_index()
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._upload_slots.release()
            self._done()

    def _write_index(self) -> None:
        with self._index_lock:
            with self._lock:
                batch, self._durable = self._durable, []
            if batch:
                try:
                    self.index_files.append(self.repo.write_index(batch))
                except BaseException:
                    with self._lock:  # still unindexed: close() must know
                        self._durable = batch + self._durable
                    raise

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # -- completion
    def _wait_idle(self) -> None:
        with self._lock:
            while self._busy:
                self._idle.wait()

    def flush(self) -> None:
        """Write every queued blob, the open packs and their index. Raises the first error."""
        with self._lock:
            batch, self._small, self._small_bytes = self._small, [], 0
        if batch:
            self._submit(batch)
        self._wait_idle()
        self._raise_error()
        for kind, blob_type in _PACK_KINDS.items():
            with self._lock:
                builder = self._builders[kind]
                self._builders[kind] = self._new_builder(blob_type)
            if len(builder):
                self._ship(builder)
        self._wait_idle()
        self._raise_error()
        self._write_index()

    def close(self) -> None:
        self._encoders.shutdown()
        self._upload_pool.shutdown(wait=True)
        if self._error is not None or self._durable:
            # Packs of this session may sit in the in-memory index with no index file naming
            # them; a later session of this process must not deduplicate against them.
            self.repo.invalidate_index()

    def __enter__(self) -> "BlobSaver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
