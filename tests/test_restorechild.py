"""Restore's child process for the packs of small files (dedupe/restorechild.py), on real
repositories: what it writes, what it reports, and how it ends."""

from __future__ import annotations

import gc
import os
import random
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedupe import restorechild
from dedupe.archiver import Archiver
from dedupe.backends import LocalBackend
from dedupe.backends.base import BackendWrapper, pack_name
from dedupe.config import Config
from dedupe.errors import SnapError
from dedupe.index import BlobLocation
from dedupe.restorefill import PackFiller
from dedupe.restorer import RestoreOptions, Restorer
from helpers import small_pack_repo


def _source(tmp_path) -> dict[str, bytes]:
    """Small text files (packs of small blobs) first, then large random ones."""
    rnd = random.Random(7)
    files = {}
    for i in range(300):
        line = b"line %d of a config file\n" % i
        files[f"a_small/d{i % 7}/f{i}.txt"] = line * rnd.randint(1, 90)
    for i in range(6):
        files[f"b_large/blob{i}.bin"] = rnd.randbytes(700_000 + i)
    for rel, data in files.items():
        path = tmp_path / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@pytest.fixture
def backed_up(tmp_path, monkeypatch):
    """(repo, snapshot, files, log): ``log`` lists 'pid small' per pack written."""
    repo = small_pack_repo(
        tmp_path, Config(chunk_min=64 << 10, chunk_avg=128 << 10, chunk_max=256 << 10), 512 << 10)
    files = _source(tmp_path)
    snap = Archiver(repo).backup([str(tmp_path / "src")]).snapshot
    log = tmp_path / "packs.log"
    original = PackFiller._fill_pack

    def logged(self, pack_id, blobs):
        with open(log, "a") as f:  # (appends of a line are atomic between processes)
            f.write(f"{os.getpid()} {int(self._small(blobs))}\n")
        original(self, pack_id, blobs)

    monkeypatch.setattr(PackFiller, "_fill_pack", logged)
    return repo, snap, files, log


def _restored(out, src_root, files):
    base = str(out) + str(src_root)
    return {rel: open(os.path.join(base, rel), "rb").read() for rel in files}


def test_the_child_writes_the_small_packs_and_the_threads_the_large_ones(tmp_path, backed_up):
    repo, snap, files, log = backed_up
    restorer = Restorer(repo, RestoreOptions(workers=3))
    progress = restorer.restore(snap, str(tmp_path / "out"))
    assert _restored(tmp_path / "out", tmp_path / "src", files) == files
    assert not restorer.warnings
    assert progress.files_done == progress.files_total == len(files)
    assert progress.bytes_done == progress.bytes_total == sum(map(len, files.values()))
    writers = [line.split() for line in log.read_text().splitlines()]
    child = {pid for pid, small in writers if small == "1"}
    assert len(child) == 1 and child != {str(os.getpid())}
    assert {pid for pid, small in writers if small == "0"} == {str(os.getpid())}
    assert gc.get_freeze_count() == 0  # the parent's objects are unfrozen again


def test_without_the_option_everything_is_written_here(tmp_path, backed_up):
    repo, snap, files, log = backed_up
    Restorer(repo, RestoreOptions(small_pack_process=False)).restore(snap, str(tmp_path / "out"))
    assert _restored(tmp_path / "out", tmp_path / "src", files) == files
    assert {line.split()[0] for line in log.read_text().splitlines()} == {str(os.getpid())}


def test_a_damaged_small_blob_is_a_warning_from_the_child(tmp_path, backed_up):
    repo, snap, files, _ = backed_up
    loc = repo.index.lookup(repo.key.blob_id(files["a_small/d3/f10.txt"]))
    path = os.path.join(repo.backend.inner.root if hasattr(repo.backend, "inner")
                        else repo.backend.root, pack_name(loc.pack_id.hex()))
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    restorer = Restorer(repo, RestoreOptions(workers=3))
    progress = restorer.restore(snap, str(tmp_path / "out"))
    assert len(restorer.warnings) == 1 and "f10.txt" in restorer.warnings[0]
    assert progress.errors == 1
    damaged = tmp_path / "out" / str(tmp_path / "src").lstrip("/") / "a_small/d3/f10.txt"
    assert damaged.stat().st_size == len(files["a_small/d3/f10.txt"])  # made at full size
    got = _restored(tmp_path / "out", tmp_path / "src", files)
    del got["a_small/d3/f10.txt"], files["a_small/d3/f10.txt"]
    assert got == files


def test_an_unexpected_error_in_the_child_is_raised_here(tmp_path, backed_up, monkeypatch):
    repo, snap, _, _ = backed_up
    parent, fill = os.getpid(), PackFiller._fill_pack

    def failing(self, pack_id, blobs):
        if os.getpid() != parent:
            raise RuntimeError("disk on fire")
        fill(self, pack_id, blobs)

    monkeypatch.setattr(PackFiller, "_fill_pack", failing)
    with pytest.raises(SnapError, match="small files failed: RuntimeError: disk on fire"):
        Restorer(repo, RestoreOptions(workers=3)).restore(snap, str(tmp_path / "out"))
    assert gc.get_freeze_count() == 0


def test_an_interrupt_here_kills_and_reaps_the_child(tmp_path, backed_up, monkeypatch):
    repo, snap, _, _ = backed_up
    parent, fill = os.getpid(), PackFiller._fill_pack
    started = tmp_path / "child-started"

    def slow_child_interrupted_parent(self, pack_id, blobs):
        if os.getpid() != parent:
            started.touch()
            os.system("sleep 30")  # killed with the child long before it ends
        else:
            while not started.exists():
                pass
            raise KeyboardInterrupt
        fill(self, pack_id, blobs)

    monkeypatch.setattr(PackFiller, "_fill_pack", slow_child_interrupted_parent)
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        Restorer(repo, RestoreOptions(workers=3)).restore(snap, str(tmp_path / "out"))
    assert time.monotonic() - began < 20  # not waiting for the child's packs
    with pytest.raises(ChildProcessError):  # no child left, not even a zombie
        os.waitpid(-1, os.WNOHANG)
    assert gc.get_freeze_count() == 0


def test_only_local_directories_get_a_child():
    class Remote:
        location = "s3:bucket/prefix"

    assert restorechild.usable(BackendWrapper(BackendWrapper(LocalBackend("/nowhere"))))
    assert not restorechild.usable(BackendWrapper(Remote()))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**31),
                          st.integers(1, 2**31), st.integers(0, 2**31),
                          st.lists(st.tuples(st.binary(min_size=1, max_size=40),
                                             st.integers(0, 0o7777), st.booleans(),
                                             st.integers(0, 2**40)), min_size=1, max_size=3)),
                unique_by=lambda b: b[0], max_size=8))
def test_a_pack_reaches_the_child_as_planned(blobs):
    pack_id = bytes(range(32))
    locs, by_blob, items = {}, {}, []
    for bid, offset, length, raw, places in blobs:
        locs[bid] = BlobLocation(pack_id, offset, length, raw, 1, 2)
        planned = []
        for path, mode, lazy, at in places:
            item = SimpleNamespace(path=path, mode=mode, lazy=lazy)
            items.append(item)
            planned.append((item, at))
        by_blob[bid] = planned
    import msgpack

    sent_id, entries = msgpack.unpackb(restorechild._encode(pack_id, by_blob, locs),
                                       use_list=False)
    got_locs, got_blobs = restorechild._decode(sent_id, entries)
    assert sent_id == pack_id and got_locs == locs
    assert got_blobs == {bid: [((item.path, item.mode, item.lazy, id(item)), at)
                               for item, at in planned] for bid, planned in by_blob.items()}
