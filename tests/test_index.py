"""MasterIndex: the in-memory map blob id -> (pack, offset, length, raw length)."""

from __future__ import annotations

import gc
import os
import tracemalloc

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dedupe.index import BlobLocation, MasterIndex
from dedupe.packs import BLOB_DATA, BLOB_TREE, COMP_NONE, COMP_ZSTD, RECORD_SIZE, BlobEntry, encode_records


def bid(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


def pid(n: int) -> bytes:
    return bytes([n]) * 32


def entry(blob: bytes, offset=0, length=100, raw=90, type_=BLOB_DATA, comp=COMP_NONE):
    return BlobEntry(blob, offset, length, raw, type_, comp)


def loc_of(pack: bytes, e: BlobEntry) -> BlobLocation:
    return BlobLocation(pack, e.offset, e.length, e.raw_length, e.type, e.compression)


def test_empty_index():
    idx = MasterIndex()
    assert idx.lookup(bid(1)) is None
    assert not idx.has(bid(1), BLOB_DATA)
    assert len(idx) == 0
    idx.compact()
    assert idx.lookup(bid(1)) is None
    assert list(idx.iter_blobs()) == []


def test_add_pack_is_visible_before_and_after_compact():
    idx = MasterIndex()
    entries = [entry(bid(i), offset=i * 100, raw=i, comp=COMP_ZSTD) for i in range(10)]
    idx.add_pack(pid(1), entries)
    for e in entries:  # pending
        assert idx.lookup(e.id) == loc_of(pid(1), e)
    idx.compact()
    for e in entries:  # sorted arrays
        assert idx.lookup(e.id) == loc_of(pid(1), e)
        assert idx.lookup(e.id, BLOB_DATA) == loc_of(pid(1), e)
        assert idx.lookup(e.id, BLOB_TREE) is None
    assert idx.lookup(bid(99)) is None
    assert len(idx) == 10
    assert idx.packs() == [pid(1)]


def test_staged_records_from_index_files():
    idx = MasterIndex()
    a = [entry(bid(i), offset=i) for i in range(5)]
    b = [entry(bid(i), offset=i, type_=BLOB_TREE) for i in range(100, 103)]
    idx.add_pack_records(pid(1), encode_records(a))
    idx.add_pack_records(pid(2), encode_records(b))
    assert len(idx) == 8
    # lookup sorts the staged records in on first use
    for e in a:
        assert idx.lookup(e.id) == loc_of(pid(1), e)
    for e in b:
        assert idx.lookup(e.id, BLOB_TREE) == loc_of(pid(2), e)
        assert idx.lookup(e.id, BLOB_DATA) is None


def test_several_compactions_merge():
    idx = MasterIndex()
    everything = {}
    for round_ in range(5):
        es = [entry(bid(round_ * 1000 + i), offset=i) for i in range(50)]
        if round_ % 2:
            idx.add_pack(pid(round_), es)
        else:
            idx.add_pack_records(pid(round_), encode_records(es))
        everything.update({e.id: loc_of(pid(round_), e) for e in es})
        idx.compact()
        for k, v in everything.items():
            assert idx.lookup(k) == v
    assert len(idx) == 250
    assert dict(idx.iter_blobs()) == everything


def test_duplicate_blob_in_two_packs():
    idx = MasterIndex()
    e1, e2 = entry(bid(7), offset=0), entry(bid(7), offset=500)
    idx.add_pack(pid(1), [e1])
    idx.add_pack_records(pid(2), encode_records([e2]))
    idx.compact()
    assert idx.lookup(bid(7)) in (loc_of(pid(1), e1), loc_of(pid(2), e2))
    assert sorted((l.pack_id, l.offset) for _, l in idx.iter_blobs()) == [(pid(1), 0), (pid(2), 500)]
    assert len(idx) == 2


def test_same_id_as_data_and_tree_is_type_aware():
    idx = MasterIndex()
    d = entry(bid(5), offset=1, type_=BLOB_DATA)
    t = entry(bid(5), offset=2, type_=BLOB_TREE)
    idx.add_pack(pid(1), [d])
    idx.add_pack(pid(2), [t])
    for _ in range(2):  # pending, then compacted
        assert idx.lookup(bid(5), BLOB_DATA) == loc_of(pid(1), d)
        assert idx.lookup(bid(5), BLOB_TREE) == loc_of(pid(2), t)
        idx.compact()


def test_pending_of_other_type_falls_through_to_arrays():
    idx = MasterIndex()
    t = entry(bid(5), type_=BLOB_TREE)
    idx.add_pack_records(pid(1), encode_records([t]))
    idx.compact()
    idx.add_pack(pid(2), [entry(bid(5), type_=BLOB_DATA)])
    assert idx.lookup(bid(5), BLOB_TREE) == loc_of(pid(1), t)


def test_ids_sharing_a_long_prefix():
    # Same first 8 bytes (the sorted key) and same 16-bit bucket: the full id decides.
    idx = MasterIndex()
    base = b"\xab\xcd" + b"\x11" * 6
    es = [entry(base + bytes([i]) * 24, offset=i) for i in range(20)]
    idx.add_pack_records(pid(1), encode_records(es[::2]))
    idx.add_pack(pid(2), es[1::2])
    idx.compact()
    for i, e in enumerate(es):
        assert idx.lookup(e.id) == loc_of(pid(1 + i % 2), e)
    assert idx.lookup(base + b"\xff" * 24) is None


def test_extreme_ids_and_u32_values():
    idx = MasterIndex()
    es = [entry(b"\0" * 32, offset=2**32 - 1, length=2**32 - 1, raw=2**32 - 1),
          entry(b"\xff" * 32, offset=0, length=0, raw=0, type_=BLOB_TREE, comp=COMP_ZSTD)]
    idx.add_pack_records(pid(9), encode_records(es))
    idx.compact()
    for e in es:
        assert idx.lookup(e.id) == loc_of(pid(9), e)


# ------------------------------------------------------------------------- model check


class IndexModel(RuleBasedStateMachine):
    """The index must behave like a dict (id, type) -> set of locations."""

    @initialize()
    def setup(self):
        self.idx = MasterIndex()
        self.model: dict[tuple[bytes, int], set[BlobLocation]] = {}
        self.count = 0
        self.next_pack = 0

    # A small id pool forces duplicates, type clashes and shared prefixes.
    ids = st.sampled_from([bid(i) for i in range(6)]
                          + [b"\x12\x34" + b"\0" * 6 + bytes([i]) * 24 for i in range(4)]
                          + [b"\0" * 32, b"\xff" * 32])
    entries = st.lists(st.builds(entry, ids, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                                 st.integers(0, 2**32 - 1), st.sampled_from([BLOB_DATA, BLOB_TREE]),
                                 st.sampled_from([COMP_NONE, COMP_ZSTD])), max_size=6)

    def _record(self, pack, es):
        self.next_pack += 1
        for e in es:
            self.model.setdefault((e.id, e.type), set()).add(loc_of(pack, e))
        self.count += len(es)

    @rule(es=entries)
    def add_pack(self, es):
        pack = self.next_pack.to_bytes(32, "little")
        self.idx.add_pack(pack, es)
        self._record(pack, es)

    @rule(es=entries)
    def add_records(self, es):
        pack = self.next_pack.to_bytes(32, "little")
        self.idx.add_pack_records(pack, encode_records(es))
        self._record(pack, es)

    @rule()
    def compact(self):
        self.idx.compact()

    @rule(blob=ids, type_=st.sampled_from([BLOB_DATA, BLOB_TREE, None]))
    def lookup(self, blob, type_):
        got = self.idx.lookup(blob, type_)
        types = [BLOB_DATA, BLOB_TREE] if type_ is None else [type_]
        allowed = set().union(*(self.model.get((blob, t), set()) for t in types))
        if allowed:
            assert got in allowed
        else:
            assert got is None

    @invariant()
    def length(self):
        assert len(self.idx) == self.count

    def teardown(self):
        if hasattr(self, "idx"):
            got = {}
            for blob, loc in self.idx.iter_blobs():
                got.setdefault((blob, loc.type), set()).add(loc)
            assert got == self.model


IndexModel.TestCase.settings = settings(max_examples=80, stateful_step_count=25, deadline=None)
TestIndexModel = IndexModel.TestCase


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=300, unique=True))
def test_random_ids_all_found(ids):
    idx = MasterIndex()
    half = len(ids) // 2
    idx.add_pack_records(pid(1), encode_records(entry(b, offset=i) for i, b in enumerate(ids[:half])))
    idx.add_pack(pid(2), [entry(b, offset=i) for i, b in enumerate(ids[half:])])
    idx.compact()
    for i, b in enumerate(ids):
        loc = idx.lookup(b)
        assert loc is not None and loc.pack_id == (pid(1) if i < half else pid(2))
        assert loc.offset == (i if i < half else i - half)
        flipped = bytes([b[0]]) + bytes([b[1] ^ 1]) + b[2:]
        if flipped not in ids:
            assert idx.lookup(flipped) is None


# ------------------------------------------------------------------------- memory


def _random_records(n: int) -> bytes:
    rec = np.frombuffer(os.urandom(n * RECORD_SIZE), dtype=np.uint8).reshape(n, RECORD_SIZE).copy()
    rec[:, 44] &= 1  # valid blob type
    rec[:, 45] &= 1  # valid compression
    rec[:, 46:] = 0
    return rec.tobytes()


def test_memory_per_blob_is_small():
    n, per_pack = 200_000, 1000
    raw = _random_records(n)
    chunks = [raw[i:i + per_pack * RECORD_SIZE] for i in range(0, len(raw), per_pack * RECORD_SIZE)]
    del raw
    gc.collect()
    tracemalloc.start()
    try:
        idx = MasterIndex()
        for i, c in enumerate(chunks):
            idx.add_pack_records(i.to_bytes(32, "big"), c)
        idx.compact()
        gc.collect()
        retained, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(idx) == n
    assert idx.memory_bytes() / n < 64
    # What the process really keeps (numpy reports its buffers to tracemalloc): the design
    # allows at most 100 bytes per indexed blob.
    assert retained / n < 100, retained / n
    # and the index still answers correctly
    first = chunks[3][:RECORD_SIZE]
    assert idx.lookup(first[:32]).pack_id == (3).to_bytes(32, "big")


def test_session_blobs_are_folded_into_the_arrays():
    """New blobs leave the per-blob dict once they are many (memory), and stay findable."""
    import os as _os
    from dedupe.index import MasterIndex as _MI
    from dedupe.packs import BlobEntry as _BE

    idx = _MI()
    ids = [_os.urandom(32) for _ in range(100_001)]
    idx.add_pack(b"p" * 32, [_BE(b, i * 10, 10, 7, 0, 1) for i, b in enumerate(ids)])
    assert idx._pending  # still a dict
    idx.maybe_compact()
    assert not idx._pending and len(idx) == len(ids)
    for i in (0, 5000, 100_000):
        loc = idx.lookup(ids[i])
        assert loc is not None and loc.offset == i * 10 and loc.pack_id == b"p" * 32
    idx.add_pack(b"q" * 32, [_BE(ids[0], 0, 10, 7, 0, 1)])
    idx.maybe_compact()  # below the threshold now: kept pending, still found in both packs
    assert idx._pending and idx.has(ids[0])
