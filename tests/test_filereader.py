"""Random-access reads of file content (dedupe/filereader.py), on a real local repository.

Properties: any (offset, size) read of any content layout (blobs of assorted sizes and holes)
returns exactly the reference bytes; the blob cache stays within its bound; concurrent loads of
one key run the loader once; a damaged blob raises IntegrityError rather than returning bytes.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedupe.backends import open_backend
from dedupe.backends.base import pack_name
from dedupe.crypto import KdfParams
from dedupe.errors import IntegrityError
from dedupe.filereader import ContentReader, FileContent, LoadingLRU, ReadCursor
from dedupe.packs import BLOB_DATA
from dedupe.repository import Repository

SIZES = [1, 7, 100, 4096, 65_536, 100_003, 300_000]


@pytest.fixture(scope="module")
def blob_pool(tmp_path_factory):
    """A repository holding one blob of each size in SIZES: (repo, [(id, data)])."""
    root = tmp_path_factory.mktemp("filereader")
    repo = Repository.init(open_backend(str(root / "repo")), b"pw", kdf=KdfParams(1, 8 << 20),
                           cache_root=str(root / "cache"))
    rng = random.Random(5)
    blobs = []
    with repo.new_saver() as saver:
        for size in SIZES:
            data = rng.randbytes(size)
            bid = repo.key.blob_id(data)
            saver.save(BLOB_DATA, bid, data)
            blobs.append((bid, data))
        saver.flush()
    repo.index.compact()
    return repo, blobs, root


layouts = st.lists(st.one_of(st.integers(0, len(SIZES) - 1).map(lambda i: ("blob", i)),
                             st.integers(1, 200_000).map(lambda n: ("hole", n))),
                   min_size=0, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts, reads=st.lists(st.tuples(st.floats(0, 1.1), st.integers(0, 700_000)),
                                      min_size=1, max_size=8), data=st.data())
def test_reads_match_reference(blob_pool, layout, reads, data):
    repo, blobs, _ = blob_pool
    content, ref = [], bytearray()
    for kind, v in layout:
        if kind == "blob":
            content.append(blobs[v][0])
            ref += blobs[v][1]
        else:
            content.append(v)
            ref += bytes(v)
    reader = ContentReader(repo, cache_bytes=256 << 10, readahead=data.draw(st.integers(0, 3)))
    try:
        fc = FileContent(repo.index, content)
        assert fc.size == len(ref)
        cursor = ReadCursor()
        for frac, size in reads:
            off = int(frac * len(ref))
            assert reader.read(fc, off, size, cursor) == bytes(ref[off:off + size])
        # A whole sequential pass with read-ahead running.
        pos, out = 0, bytearray()
        while chunk := reader.read(fc, pos, 131_072, cursor):
            out += chunk
            pos += len(chunk)
        assert out == ref
        assert reader.blobs.weight <= max(256 << 10, max(SIZES))
    finally:
        reader.close()


def test_unknown_blob_is_an_integrity_error(blob_pool):
    repo, _, _ = blob_pool
    with pytest.raises(IntegrityError):
        FileContent(repo.index, [b"\x01" * 32])


def test_damaged_blob_raises_and_is_not_cached(tmp_path):
    repo = Repository.init(open_backend(str(tmp_path / "repo")), b"pw", kdf=KdfParams(1, 8 << 20),
                           cache_root=str(tmp_path / "cache"))
    data = os.urandom(50_000)
    bid = repo.key.blob_id(data)
    with repo.new_saver() as saver:
        saver.save(BLOB_DATA, bid, data)
        saver.flush()
    loc = repo.index.lookup(bid, BLOB_DATA)
    pack = Path(tmp_path / "repo") / pack_name(loc.pack_id.hex())
    os.chmod(pack, 0o600)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + 100] ^= 1
    pack.write_bytes(bytes(raw))
    reader = ContentReader(repo, readahead=0)
    try:
        fc = FileContent(repo.index, [bid])
        for _ in range(2):  # the failure is not cached: each read tries again, and fails again
            with pytest.raises(IntegrityError):
                reader.read(fc, 0, 10)
        assert len(reader.blobs) == 0
    finally:
        reader.close()


def test_lru_single_flight_and_bound():
    calls = []
    gate = threading.Event()

    def load(key):
        calls.append(key)
        gate.wait(5)
        return b"x" * key

    lru = LoadingLRU(load, capacity=10, weigh=len)
    results = []
    threads = [threading.Thread(target=lambda: results.append(lru.get(4))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert lru.present(4)
    gate.set()
    for t in threads:
        t.join()
    assert calls == [4] and results == [b"xxxx"] * 8
    lru.get(5)
    lru.get(3)  # 4 + 5 + 3 > 10: the least recently used (4) goes
    assert not lru.present(4) and lru.present(5) and lru.present(3)
    assert lru.get(50) == b"x" * 50  # larger than the bound: kept alone, others evicted
    assert len(lru) == 1 and lru.weight == 50


def test_lru_failed_load_reaches_every_waiter():
    gate = threading.Event()

    def load(key):
        gate.wait(5)
        raise ValueError("boom")

    lru = LoadingLRU(load, capacity=10)
    errors = []

    def get():
        try:
            lru.get("k")
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=get) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join()
    assert len(errors) == 4 and not lru.present("k")
