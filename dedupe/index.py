"""Index files and the in-memory index of every blob in the repository.

An index file maps packs to the blobs they hold (the same 48-byte records as pack headers), so
loading it is a ``numpy.frombuffer`` rather than millions of Python objects.

The in-memory ``MasterIndex`` keeps blobs in sorted, fixed-width arrays: a uint64 prefix of the
id (the first 8 bytes, big-endian), the full 32-byte ids in one ``bytes`` buffer, and uint32
columns for pack number, offset, length and raw length, plus type and compression bytes: 58
bytes per blob. A table of where each top-bits prefix starts (2^16 to 2^22 buckets, ~16 blobs
each) narrows each lookup to a handful of bisection steps. Blobs added during a session sit in a small dict until
``compact()`` folds them into the arrays.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Iterator, NamedTuple

import msgpack
from array import array

from .crypto import AAD_INDEX, MasterKey
from .errors import IntegrityError, UnsupportedVersion
from .packs import RECORD, RECORD_SIZE, BlobEntry, encode_records

INDEX_VERSION = 1

np = None  # numpy, imported on first need (see load_numpy)
_RECORD_DTYPE = None
# Repositories up to this many blobs keep their index in a dict and never import numpy:
# its import alone costs more start-up time than a small index's whole load.
SMALL = 100_000


def load_numpy():
    """Import numpy and build the record dtype on first use."""
    global np, _RECORD_DTYPE
    if np is None:
        import numpy

        np = numpy
        _RECORD_DTYPE = np.dtype({  # one record; "prefix" overlays the id's first 8 bytes
            "names": ["prefix", "id", "offset", "length", "raw", "type", "comp"],
            "formats": [">u8", "V32", "<u4", "<u4", "<u4", "u1", "u1"],
            "offsets": [0, 0, 32, 36, 40, 44, 45],
            "itemsize": RECORD_SIZE,
        })
    return np


class BlobLocation(NamedTuple):
    """Where a blob is stored. A NamedTuple: built on every lookup, so it must be cheap."""

    pack_id: bytes
    offset: int
    length: int
    raw_length: int
    type: int
    compression: int

    def entry(self, blob_id: bytes) -> BlobEntry:
        return BlobEntry(blob_id, self.offset, self.length, self.raw_length, self.type,
                         self.compression)


# --- index files ---------------------------------------------------------------------------


def encode_index_file(key: MasterKey, packs: Iterable[tuple[bytes, list[BlobEntry]]],
                      supersedes: Iterable[bytes] = ()) -> bytes:
    body = {
        "v": INDEX_VERSION,
        "packs": [{"id": pid, "blobs": encode_records(entries)} for pid, entries in packs],
        "supersedes": list(supersedes),
    }
    return key.seal(msgpack.packb(body), AAD_INDEX)


def decode_index_file(key: MasterKey, raw: bytes, name: str) -> dict:
    """Return ``{"packs": [(pack_id, records bytes)], "supersedes": [ids]}``."""
    plain = key.open(raw, AAD_INDEX, name)
    try:
        body = msgpack.unpackb(plain)
        if body["v"] != INDEX_VERSION:
            raise UnsupportedVersion(f"{name}: index version {body['v']} is not supported")
        packs = []
        for p in body["packs"]:
            pid, blobs = p["id"], p["blobs"]
            if not isinstance(pid, bytes) or len(pid) != 32 or len(blobs) % RECORD_SIZE:
                raise ValueError("bad pack entry")
            packs.append((pid, blobs))
        return {"packs": packs, "supersedes": list(body.get("supersedes", []))}
    except UnsupportedVersion:
        raise
    except Exception:
        raise IntegrityError(f"{name}: malformed index file", name) from None


# --- in-memory index ------------------------------------------------------------------------


class MasterIndex:
    def __init__(self, expected_blobs: int = 0) -> None:
        """``expected_blobs``: how many records the index files about to be added hold; a
        large index goes straight into arrays (a detour through the dict fragments memory)."""
        self._small = expected_blobs <= SMALL
        self._pack_ids: list[bytes] = []
        self._pack_no: dict[bytes, int] = {}
        self._n = 0
        # Empty stand-ins with the arrays' buffer formats until the first compact().
        self._prefix = array("Q")
        self._prefix_view = memoryview(self._prefix)
        self._ids = b""
        self._pack, self._offset, self._length, self._raw = (array("I") for _ in range(4))
        self._type, self._comp = array("B"), array("B")
        self._shift = 63
        self._table_arr = array("q", [0, 0, 0])
        self._table = memoryview(self._table_arr)
        self._cols = self._column_views()
        # Arrays of records not yet sorted in (from loaded index files), and single new blobs.
        self._staged: list[tuple] = []  # (record array, pack number array)
        self._pending: dict[bytes, list[BlobLocation]] = {}
        self._pending_count = 0

    def _column_views(self) -> tuple[memoryview, ...]:
        """Indexing a memoryview yields a plain int, several times faster than a numpy scalar."""
        return tuple(memoryview(a) for a in (self._pack, self._offset, self._length, self._raw,
                                             self._type, self._comp))

    # -- adding
    def _pack_number(self, pack_id: bytes) -> int:
        no = self._pack_no.get(pack_id)
        if no is None:
            no = self._pack_no[pack_id] = len(self._pack_ids)
            self._pack_ids.append(pack_id)
        return no

    def add_pack_records(self, pack_id: bytes, records: bytes) -> None:
        """Add a pack's raw records (from an index file): into the dict while the index is
        small, else staged as an array that ``compact()`` sorts in."""
        count = len(records) // RECORD_SIZE
        if self._small and not self._n and not self._staged and \
                self._pending_count + count <= SMALL:
            self._pack_number(pack_id)
            pending = self._pending
            for bid, off, length, raw, typ, comp, _ in RECORD.iter_unpack(records):
                loc = BlobLocation(pack_id, off, length, raw, typ, comp)
                locs = pending.get(bid)
                if locs is None:
                    pending[bid] = [loc]
                else:
                    locs.append(loc)
            self._pending_count += count
            return
        np = load_numpy()
        arr = np.frombuffer(records, dtype=_RECORD_DTYPE)
        packs = np.full(len(arr), self._pack_number(pack_id), dtype=np.uint32)
        self._staged.append((arr, packs))

    def add_pack(self, pack_id: bytes, entries: list[BlobEntry]) -> None:
        """Add the blobs of a freshly written pack; visible to lookups at once."""
        self._pack_number(pack_id)
        for e in entries:
            loc = BlobLocation(pack_id, e.offset, e.length, e.raw_length, e.type, e.compression)
            self._pending.setdefault(e.id, []).append(loc)
        self._pending_count += len(entries)

    def compact(self) -> None:
        """Sort staged and pending blobs into the arrays."""
        if not self._staged and not self._pending:
            return
        np = load_numpy()
        parts = list(self._staged)
        if self._pending:
            recs, packs = [], []
            for bid, locs in self._pending.items():
                for loc in locs:
                    recs.append(loc.entry(bid).pack())
                    packs.append(self._pack_no[loc.pack_id])
            parts.append((np.frombuffer(b"".join(recs), dtype=_RECORD_DTYPE),
                          np.array(packs, dtype=np.uint32)))
        new = np.concatenate([p[0] for p in parts]) if parts else None
        new_packs = np.concatenate([p[1] for p in parts])
        prefix = np.concatenate([np.asarray(self._prefix, dtype=np.uint64),
                                 new["prefix"].astype(np.uint64)])
        order = np.argsort(prefix, kind="stable")
        old_ids = np.frombuffer(self._ids, dtype="V32")
        ids = np.concatenate([old_ids, new["id"]])[order]

        def merged(old, add, dtype):
            return np.concatenate([np.asarray(old, dtype=dtype), add.astype(dtype)])[order]

        self._pack = merged(self._pack, new_packs, np.uint32)
        self._offset = merged(self._offset, new["offset"], np.uint32)
        self._length = merged(self._length, new["length"], np.uint32)
        self._raw = merged(self._raw, new["raw"], np.uint32)
        self._type = merged(self._type, new["type"], np.uint8)
        self._comp = merged(self._comp, new["comp"], np.uint8)
        self._prefix = prefix[order]
        self._ids = ids.tobytes()
        self._n = len(self._prefix)
        self._prefix_view = memoryview(self._prefix)
        self._cols = self._column_views()
        # A bucket table over the top bits of the prefix, sized for ~16 blobs a bucket
        # (2^16..2^22 buckets, 8 bytes each), so a lookup bisects only a few entries.
        bits = min(22, max(16, (self._n // 16).bit_length()))
        self._shift = 64 - bits
        top = (self._prefix >> np.uint64(self._shift)).astype(np.int64)
        self._table_arr = np.searchsorted(top, np.arange((1 << bits) + 1)).astype(np.int64)
        self._table = memoryview(self._table_arr)
        self._staged = []
        self._pending = {}
        self._pending_count = 0

    def maybe_compact(self) -> None:
        """Fold new blobs into the arrays once they are many: a dict entry costs ~220 bytes,
        an array row 58. The threshold grows with the index, so the sorting work over a
        session stays O(n log n) in total."""
        if self._staged or self._pending_count > max(SMALL, self._n // 2):
            self.compact()

    # -- lookups
    def set_avoided_packs(self, packs: set[bytes]) -> None:
        """Packs marked for deletion by prune: lookups prefer other copies, and ``has`` (the
        backup's dedup test) ignores them, so no new snapshot comes to depend on them."""
        self._avoid = set(packs)

    _avoid: set[bytes] = set()

    def lookup(self, blob_id: bytes, blob_type: int | None = None, *,
               strict: bool = False) -> BlobLocation | None:
        """A location of the blob; copies in avoided packs only as a last resort (never if
        ``strict``). This is the backup's hot path: no generators, no numpy scalars."""
        fallback = None
        avoid = self._avoid
        for loc in self._pending.get(blob_id, ()):
            if blob_type is None or loc.type == blob_type:
                if loc.pack_id not in avoid:
                    return loc
                fallback = fallback or loc
        if self._staged:
            self.compact()
        p = int.from_bytes(blob_id[:8], "big")
        top = p >> self._shift
        view = self._prefix_view
        i = bisect_left(view, p, self._table[top], self._table[top + 1])
        n = self._n
        while i < n and view[i] == p:
            if self._ids[i * 32:i * 32 + 32] == blob_id:
                c = self._cols
                if blob_type is None or c[4][i] == blob_type:
                    loc = BlobLocation(self._pack_ids[c[0][i]], c[1][i], c[2][i], c[3][i],
                                       c[4][i], c[5][i])
                    if loc.pack_id not in avoid:
                        return loc
                    fallback = fallback or loc
            i += 1
        return None if strict else fallback

    def has(self, blob_id: bytes, blob_type: int | None = None) -> bool:
        """True if a copy exists outside the avoided packs (the backup's dedup test)."""
        if self._avoid or blob_id in self._pending or self._staged:
            return self.lookup(blob_id, blob_type, strict=True) is not None
        p = int.from_bytes(blob_id[:8], "big")
        top = p >> self._shift
        view = self._prefix_view
        i = bisect_left(view, p, self._table[top], self._table[top + 1])
        n = self._n
        types = self._cols[4]
        while i < n and view[i] == p:
            if self._ids[i * 32:i * 32 + 32] == blob_id and (blob_type is None or types[i] == blob_type):
                return True
            i += 1
        return False

    def __len__(self) -> int:
        staged = sum(len(a) for a, _ in self._staged)
        return self._n + staged + sum(len(v) for v in self._pending.values())

    # -- whole-index views (check, prune, stats)
    def packs(self) -> list[bytes]:
        return list(self._pack_ids)

    def iter_blobs(self) -> Iterator[tuple[bytes, BlobLocation]]:
        """Every (blob id, location), including duplicates stored in several packs."""
        self.compact()
        for i in range(self._n):
            yield self._ids[i * 32:i * 32 + 32], BlobLocation(
                self._pack_ids[self._pack[i]], int(self._offset[i]), int(self._length[i]),
                int(self._raw[i]), int(self._type[i]), int(self._comp[i]))

    def memory_bytes(self) -> int:
        arrays = (self._prefix, self._pack, self._offset, self._length, self._raw, self._type,
                  self._comp)
        return sum(memoryview(a).nbytes for a in arrays) + len(self._ids) + memoryview(self._table_arr).nbytes
