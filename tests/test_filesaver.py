"""Concurrent file reading in backups (dedupe/filesaver.py) and the batched small blobs of the
blob saver: however many readers there are, a snapshot must hold exactly the same tree, every
hard link must point at content read once, and every queued blob must reach a pack.

The source mixes every path a file takes: small files read on the walker's thread (more
than a batch of small blobs per directory), medium files read whole and cut in place by the
readers, large files streamed through chunker windows, and hard links whose first name sits in
a directory still being read."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from dedupe import filesaver
from dedupe.archiver import Archiver, BackupOptions
from dedupe.backends.local import LocalBackend
from dedupe.config import Config
from dedupe.crypto import KdfParams
from dedupe.packs import BLOB_DATA
from dedupe.repository import Repository
from dedupe.walker import find_node, walk

MiB = 1024 * 1024
CONFIG = Config(chunk_min=16 * 1024, chunk_avg=64 * 1024, chunk_max=256 * 1024, pack_size=4 * MiB)


def make_source(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    for d in range(3):
        sub = root / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(74):  # more than one batch of small blobs for the encoders
            (root / f"d{d}" / f"small{i:03}").write_bytes(rng.randbytes(rng.randrange(0, 3000)))
        (sub / "medium").write_bytes(rng.randbytes(300 * 1024))  # > chunk_min: whole read
        (sub / "dup").write_bytes((root / f"d{d}" / "small001").read_bytes())
    # > WHOLE_FILE_MAX: through the window; half repeats itself, so chunks dedupe in-file
    part = rng.randbytes(filesaver.WHOLE_FILE_MAX // 2 + 12345)
    (root / "d0" / "large").write_bytes(part + part + b"tail")
    # Hard links: the first name in d1 sorts before d1/inner, so it is still queued when
    # d1/inner is walked; a second name in the same batch, a third in d1/inner, a fourth in d2.
    first = root / "d1" / "a_linked"
    first.write_bytes(rng.randbytes(200 * 1024))
    os.link(first, root / "d1" / "b_linked")
    os.link(first, root / "d1" / "inner" / "linked2")
    os.link(first, root / "d2" / "linked3")


def listing(repo: Repository, tree: bytes) -> list:
    out = []
    for path, node in walk(repo, tree):
        out.append((path, node["type"], node.get("size"), node.get("content"), node.get("mode")))
    return out


@pytest.fixture
def repo(tmp_path):
    return Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", config=CONFIG,
                           kdf=KdfParams(1, 8 << 20), cache_root=str(tmp_path / "cache"))


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_snapshot_is_the_same_whatever_the_read_concurrency(tmp_path, repo, workers):
    src = tmp_path / "src"
    make_source(src, seed=workers)
    one = Archiver(repo, BackupOptions(read_concurrency=1, no_parent=True)).backup([str(src)])
    many = Archiver(repo, BackupOptions(read_concurrency=workers, no_parent=True)).backup([str(src)])
    assert one.complete and many.complete
    assert listing(repo, one.snapshot.tree) == listing(repo, many.snapshot.tree)
    # The trees themselves, metadata included (the directories above src change as the
    # repository beside it grows, so compare from src down).
    here = os.fsencode(str(src))
    assert find_node(repo, one.snapshot.tree, here)["subtree"] == \
        find_node(repo, many.snapshot.tree, here)["subtree"]

    # The content is right, not only equal: every file's blobs rebuild its bytes.
    for path, node in walk(repo, many.snapshot.tree):
        if node["type"] == "file":
            data = b"".join(repo.load_blob(BLOB_DATA, b) for b in node["content"])
            assert data == Path(os.fsdecode(path)).read_bytes(), path


def test_hard_links_are_read_once_and_share_content(tmp_path, repo):
    src = tmp_path / "src"
    make_source(src, seed=7)
    result = Archiver(repo, BackupOptions(read_concurrency=3)).backup([str(src)])
    inodes = {}
    for p in src.rglob("*"):
        if p.is_file():
            st = p.stat()
            inodes[(st.st_dev, st.st_ino)] = st.st_size
    assert result.summary["bytes_read"] == sum(inodes.values())
    nodes = {os.fsdecode(path).rsplit("/", 1)[1]: node for path, node in walk(repo, result.snapshot.tree)
             if node["type"] == "file"}
    links = [nodes[n]["content"] for n in ("a_linked", "b_linked", "linked2", "linked3")]
    assert links[0] and all(c == links[0] for c in links)
    assert result.summary["files_new"] == len(list(p for p in src.rglob("*") if p.is_file()))


def test_small_blobs_queued_in_a_batch_reach_the_index_on_flush(repo):
    ids = []
    with repo.new_saver() as saver:
        for i in range(5):  # fewer than a batch: nothing is encoded before flush
            data = f"blob {i}".encode() * 10
            bid = repo.key.blob_id(data)
            assert saver.save(BLOB_DATA, bid, data)
            assert not saver.save(BLOB_DATA, bid, data)  # queued counts as known
            ids.append((bid, data))
        saver.flush()
    for bid, data in ids:
        assert repo.index.has(bid, BLOB_DATA)
        assert repo.load_blob(BLOB_DATA, bid) == data


def test_small_data_blobs_get_packs_of_their_own(repo):
    """Blobs of small files and larger data blobs, saved interleaved (as an initial backup's
    walker and its early reads do), end up in different packs: a restore hands the packs of
    small blobs to a process of its own, by their blobs' average size."""
    from collections import defaultdict

    from dedupe.blobsaver import SMALL_BLOB

    rng = random.Random(3)
    with repo.new_saver() as saver:
        for i in range(200):
            size = rng.randrange(1, SMALL_BLOB) if i % 2 else rng.randrange(SMALL_BLOB, 300_000)
            data = rng.randbytes(size)
            saver.save(BLOB_DATA, repo.key.blob_id(data), data)
        saver.flush()
    kinds = defaultdict(set)
    for _, loc in repo.index.iter_blobs():
        kinds[loc.pack_id].add(loc.raw_length < SMALL_BLOB)
    assert len(kinds) >= 2 and all(len(k) == 1 for k in kinds.values())


def _held_encoder(repo, monkeypatch):
    """A saver with one encoder, 5 slots, 3 of them for background work, whose compression
    of the first blob waits for ``go``; ``order`` lists the raw sizes of the blobs in the
    order the encoder compressed them."""
    import threading

    from dedupe.blobsaver import BlobSaver

    go, started, order = threading.Event(), threading.Event(), []
    real = repo.codec.compress_in_place

    def compress(data):
        order.append(len(data))
        if len(order) == 1:
            started.set()
            go.wait(30)
        return real(data)

    monkeypatch.setattr(repo.codec, "compress_in_place", compress)
    saver = BlobSaver(repo, workers=1, max_encoding=5, max_background=3)
    return saver, go, started, order


def test_background_blobs_are_encoded_after_the_others(repo, monkeypatch):
    """The early reads' chunks (background) wait for the walker's batches and blobs, which
    are queued later: the walker is the critical path."""
    from dedupe.blobsaver import SMALL_BATCH, SMALL_BLOB

    rng = random.Random(11)
    saver, go, started, order = _held_encoder(repo, monkeypatch)
    with saver:
        early = [rng.randbytes(SMALL_BLOB + i) for i in range(3)]
        for data in early:  # the encoder holds the first; the others queue behind it
            saver.save(BLOB_DATA, repo.key.blob_id(data), data, background=True)
        assert started.wait(30)
        walkers = rng.randbytes(SMALL_BLOB + 100)
        saver.save(BLOB_DATA, repo.key.blob_id(walkers), walkers)
        small = [rng.randbytes(100) for _ in range(SMALL_BATCH)]  # one full batch
        for data in small:
            saver.save(BLOB_DATA, repo.key.blob_id(data), data, background=True)
        go.set()
        saver.flush()
    assert order == ([len(early[0]), len(walkers)] + [100] * SMALL_BATCH
                     + [len(d) for d in early[1:]])
    for data in early + small + [walkers]:
        assert repo.load_blob(BLOB_DATA, repo.key.blob_id(data)) == data


def test_background_work_holding_all_its_slots_leaves_the_rest_free(repo, monkeypatch):
    import threading

    from dedupe.blobsaver import SMALL_BATCH, SMALL_BLOB

    rng = random.Random(12)
    saver, go, started, order = _held_encoder(repo, monkeypatch)

    def save(data, background=False):
        saver.save(BLOB_DATA, repo.key.blob_id(data), data, background=background)

    def in_thread(fn, *args):
        t = threading.Thread(target=fn, args=args)
        t.start()
        t.join(0.3)
        return t

    with saver:
        early = [rng.randbytes(SMALL_BLOB + i) for i in range(4)]
        for data in early[:3]:  # the 3 background slots: one encoding, two queued
            save(data, True)
        assert started.wait(30)
        fourth = in_thread(save, early[3], True)
        assert fourth.is_alive()  # no background slot left: it waits
        small = [rng.randbytes(100) for _ in range(SMALL_BATCH)]
        walkers = [rng.randbytes(SMALL_BLOB + 10)]
        others = in_thread(lambda: [save(d) for d in small + walkers])
        others.join(30)
        done = not others.is_alive()  # a batch and a large blob: the other 2 slots
        third = in_thread(save, rng.randbytes(SMALL_BLOB + 99))
        full = third.is_alive()  # now every slot is taken
        go.set()
        for t in (fourth, others, third):
            t.join(30)
        saver.flush()
    assert done and full
    for data in early + small + walkers:
        assert repo.load_blob(BLOB_DATA, repo.key.blob_id(data)) == data


def _save_from_window(repo, saver, data: bytes):
    """Save ``data`` as a view of a chunker window of its own, which only the saver may then
    hold; returns a weak reference to the window."""
    import weakref

    from dedupe.chunker import Segment, anonymous

    window = anonymous(len(data), Segment)
    window[:] = data
    alive = weakref.ref(window)
    view = memoryview(window).toreadonly()
    assert saver.save(BLOB_DATA, repo.key.blob_id(view), view)
    return alive


def test_chunk_views_of_a_window_are_kept_only_when_large(repo):
    """The saver encodes a large chunk straight out of the chunker's window, so the window
    stays mapped until then; a small chunk may wait in a batch and is copied instead, so it
    does not pin a whole window."""
    from dedupe import blobsaver

    rng = random.Random(5)
    small, large = rng.randbytes(1000), rng.randbytes(blobsaver.SMALL_BLOB + 1)
    with repo.new_saver() as saver:
        alive = _save_from_window(repo, saver, small)
        assert alive() is None  # copied: the batch does not hold the window
        _save_from_window(repo, saver, large)
        saver.flush()
    assert repo.load_blob(BLOB_DATA, repo.key.blob_id(small)) == small
    assert repo.load_blob(BLOB_DATA, repo.key.blob_id(large)) == large


def test_an_encoded_chunk_does_not_keep_its_window_mapped(repo):
    """Once encoded, a chunk's view is let go at once, not when its encoder thread gets its
    next job: else the chunker finds its windows still in use and maps fresh ones."""
    from dedupe import blobsaver

    large = random.Random(6).randbytes(blobsaver.SMALL_BLOB + 1)
    with repo.new_saver() as saver:
        alive = _save_from_window(repo, saver, large)
        saver.flush()
        assert alive() is None


def test_a_local_backup_queues_one_finished_pack_a_remote_one_two(repo):
    from dedupe.blobsaver import BlobSaver

    class Remote:  # no ``inner`` to a local directory: a remote store, for the saver
        location = "s3:bucket/prefix"

        def __init__(self, real) -> None:
            self._real = real

        def __getattr__(self, attr):
            return getattr(self._real, attr)

    assert BlobSaver(repo)._upload_slots._value == 1
    repo.backend = Remote(repo.backend)
    assert BlobSaver(repo)._upload_slots._value == 2
