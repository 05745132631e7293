"""Prune: space is freed, nothing a snapshot needs is lost, concurrent backups are safe, and a
prune killed at any instant leaves a repository whose snapshots all restore."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dedupe.archiver import Archiver
from dedupe.checker import CheckOptions, Checker
from dedupe.backends import LocalBackend
from dedupe.config import Config
from dedupe.crypto import KdfParams
from dedupe.locks import MARKER, SHARED, Lock, list_locks
from dedupe.prune import Pruner, PruneOptions
from dedupe.repository import Repository
from dedupe.restorer import Restorer
from helpers import data_bytes, tree_digest

FAST_KDF = KdfParams(1, 8 << 20)
SMALL = dict(chunk_min=16 * 1024, chunk_avg=64 * 1024, chunk_max=256 * 1024, pack_size=4 << 20)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo(tmp_path):
    r = Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", Config(**SMALL),
                        kdf=FAST_KDF, cache_root=str(tmp_path / "cache"))
    return r


def write_round(src, rnd: random.Random, i: int, files: int = 12) -> None:
    os.makedirs(src, exist_ok=True)
    for j in range(files):
        with open(os.path.join(src, f"f{i}_{j}"), "wb") as f:
            f.write(rnd.randbytes(rnd.randrange(1, 150_000)))
    if i:
        for j in range(files // 2):
            p = os.path.join(src, f"f{i - 1}_{j}")
            if os.path.exists(p):
                os.unlink(p)


def restore_digest(repo, snap, target) -> dict[str, str]:
    shutil.rmtree(target, ignore_errors=True)
    Restorer(repo).restore(snap, target)
    inner = os.path.join(target, *[c for c in snap.paths[0].split("/") if c])
    return tree_digest(inner)


def test_prune_frees_space_and_keeps_snapshots(repo, tmp_path):
    src = str(tmp_path / "src")
    rnd = random.Random(1)
    snaps, digests = [], []
    for i in range(4):
        write_round(src, rnd, i)
        snaps.append(Archiver(repo).backup([src]).snapshot)
        digests.append(tree_digest(src))
    before = data_bytes(str(tmp_path / "repo"))
    for s in snaps[:2]:
        repo.delete_snapshot(s.id)
    dry = Pruner(repo, PruneOptions(dry_run=True)).run()
    assert data_bytes(str(tmp_path / "repo")) == before  # dry run touches nothing
    result = Pruner(repo).run()
    assert result.mode == "immediate"
    assert result.packs_deleted + result.packs_repacked == dry.packs_deleted + dry.packs_repacked > 0
    after = data_bytes(str(tmp_path / "repo"))
    assert after < before * 0.85
    fresh = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)
    for s, d in zip(snaps[2:], digests[2:]):
        assert restore_digest(fresh, fresh.load_snapshot(s.id), str(tmp_path / "out")) == d
    # Nothing left to do: a second prune deletes nothing.
    again = Pruner(fresh).run()
    assert again.packs_deleted == 0 and again.packs_repacked == 0
    assert list_locks(fresh) == []


def test_deferred_prune_marks_then_deletes_only_unused(repo, tmp_path):
    src = str(tmp_path / "src")
    rnd = random.Random(2)
    write_round(src, rnd, 0)
    old = Archiver(repo).backup([src]).snapshot
    write_round(src, rnd, 1)
    keep = Archiver(repo).backup([src]).snapshot
    repo.delete_snapshot(old.id)
    before = data_bytes(str(tmp_path / "repo"))

    other = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)
    backup_lock = Lock(other, SHARED, "backup")  # another host's backup is running
    backup_lock.acquire_shared()
    try:
        first = Pruner(repo).run()
        assert first.mode == "deferred"
        assert first.packs_deleted == 0 and first.packs_marked > 0
        assert data_bytes(str(tmp_path / "repo")) >= before  # nothing deleted yet
        markers = [lk for lk in list_locks(repo) if lk.kind == MARKER]
        assert len(markers) == 1
        # A prune while the pre-marker backup still runs must not act on the marker.
        second = Pruner(repo).run()
        assert second.packs_deleted == 0 and second.markers_processed == 0
    finally:
        backup_lock.release()

    # A backup started after the marker never dedupes against marked packs.
    marked = set(markers[0].packs)
    fresh = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)
    newer = Archiver(fresh).backup([src]).snapshot
    fresh2 = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)
    from dedupe.prune import used_blobs
    for bid in used_blobs(fresh2, [newer]):
        loc = fresh2.index.lookup(bid)
        assert loc is not None
        copies_outside = fresh2.index.has(bid)
        assert copies_outside or loc.pack_id not in marked

    third = Pruner(fresh2).run()  # nobody else active now: immediate, markers processed
    assert third.mode == "immediate" and third.markers_processed == 1
    assert data_bytes(str(tmp_path / "repo")) < before
    final = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)
    assert restore_digest(final, final.load_snapshot(keep.id), str(tmp_path / "o1")) == \
        restore_digest(final, final.load_snapshot(newer.id), str(tmp_path / "o2"))


def test_marked_pack_reused_by_pre_marker_backup_is_kept(repo, tmp_path):
    """A backup that started before the marker may reuse marked packs: prune keeps them."""
    src = str(tmp_path / "src")
    write_round(src, random.Random(3), 0)
    snap = Archiver(repo).backup([src]).snapshot
    repo.delete_snapshot(snap.id)  # all packs unused now
    other = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)
    lock = Lock(other, SHARED, "backup")
    lock.acquire_shared()
    assert Pruner(repo).run().packs_marked > 0
    # The running backup (which loaded the index before the marker) writes a snapshot that
    # references the marked blobs: simulate by re-saving the same tree as a new snapshot.
    snap.id = ""
    snap.time = snap.time.replace(microsecond=(snap.time.microsecond + 1) % 1_000_000)
    other.save_snapshot(snap)
    lock.release()
    result = Pruner(Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)).run()
    assert result.markers_processed == 1
    final = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)
    assert restore_digest(final, final.load_snapshot(snap.id), str(tmp_path / "o")) == tree_digest(src)


SCRIPT_HEADER = textwrap.dedent(f"""
    import os, random, sys, time
    sys.path.insert(0, {ROOT!r})
    from dedupe.archiver import Archiver
    from dedupe.backends import LocalBackend
    from dedupe.repository import Repository
    from dedupe.prune import Pruner
""")


def _run_script(body: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT_HEADER + textwrap.dedent(body), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_concurrent_backups_and_prunes_lose_nothing(repo, tmp_path):
    """Backups (one process) and forget+prune (another) interleave for many rounds; every
    snapshot that exists at the end restores exactly what was backed up."""
    repo_dir = str(tmp_path / "repo")
    src = str(tmp_path / "src")
    record = str(tmp_path / "record")
    os.makedirs(record)
    backup = _run_script("""
        repo_dir, src, record = sys.argv[1:4]
        rnd = random.Random(7)
        import hashlib, json
        for i in range(14):
            os.makedirs(src, exist_ok=True)
            for j in range(6):
                with open(os.path.join(src, f"f{i}_{j}"), "wb") as f:
                    f.write(rnd.randbytes(rnd.randrange(1, 120_000)))
            for j in range(3):
                p = os.path.join(src, f"f{i-1}_{j}")
                if os.path.exists(p):
                    os.unlink(p)
            digest = {}
            for name in sorted(os.listdir(src)):
                with open(os.path.join(src, name), "rb") as f:
                    digest[name] = hashlib.sha256(f.read()).hexdigest()
            repo = Repository.open(LocalBackend(repo_dir), b"pw", no_cache=True)
            snap = Archiver(repo).backup([src]).snapshot
            with open(os.path.join(record, snap.id), "w") as f:
                json.dump(digest, f)
    """, repo_dir, src, record)
    pruner = _run_script("""
        repo_dir = sys.argv[1]
        rnd = random.Random(8)
        deadline = time.time() + 60
        rounds = 0
        while time.time() < deadline and rounds < 25:
            repo = Repository.open(LocalBackend(repo_dir), b"pw", no_cache=True)
            snaps = repo.list_snapshots()
            for s in snaps[:-2]:
                if rnd.random() < 0.5:
                    repo.delete_snapshot(s.id)
            Pruner(repo).run()
            rounds += 1
            time.sleep(rnd.random() * 0.2)
        print(rounds)
    """, repo_dir)
    out_b, err_b = backup.communicate(timeout=300)
    assert backup.returncode == 0, err_b.decode()
    out_p, err_p = pruner.communicate(timeout=300)
    assert pruner.returncode == 0, err_p.decode()
    assert int(out_p) >= 3
    # Settle: one more prune with nobody active, then verify every surviving snapshot.
    final = Repository.open(LocalBackend(repo_dir), b"pw", no_cache=True)
    Pruner(final).run()
    final = Repository.open(LocalBackend(repo_dir), b"pw", no_cache=True)
    import json
    survivors = final.list_snapshots()
    assert survivors
    for s in survivors:
        with open(os.path.join(record, s.id)) as f:
            expected = json.load(f)
        assert restore_digest(final, s, str(tmp_path / "out")) == expected, s.id


@pytest.mark.slow
def test_prune_killed_at_random_points_leaves_a_consistent_repository(tmp_path):
    repo_dir = str(tmp_path / "repo")
    src = str(tmp_path / "src")
    rnd = random.Random(11)
    repo = Repository.init(LocalBackend(repo_dir), b"pw", Config(**SMALL), kdf=FAST_KDF,
                           no_cache=True)
    expected = {}
    for trial in range(12):
        write_round(src, rnd, trial, files=8)
        snap = Archiver(repo).backup([src]).snapshot
        expected[snap.id] = tree_digest(src)
        snaps = repo.list_snapshots()
        for s in snaps[:-3]:
            if rnd.random() < 0.6:
                repo.delete_snapshot(s.id)
                expected.pop(s.id, None)
        proc = _run_script("""
            repo = Repository.open(LocalBackend(sys.argv[1]), b"pw", no_cache=True)
            Pruner(repo).run()
        """, repo_dir)
        time.sleep(rnd.uniform(0.15, 0.6))  # python start-up is ~0.2 s; prune runs after it
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The killed prune left a stale exclusive lock of a dead local process: not blocking.
        repo = Repository.open(LocalBackend(repo_dir), b"pw", no_cache=True)
        result = Checker(repo, CheckOptions(read_data=True)).run()
        assert result.errors == [], (trial, [f.message for f in result.errors])
        for s in repo.list_snapshots():
            assert s.id in expected
            assert restore_digest(repo, s, str(tmp_path / "out")) == expected[s.id], (trial, s.id)
    Pruner(repo).run()
    repo = Repository.open(LocalBackend(repo_dir), b"pw", no_cache=True)
    assert {s.id for s in repo.list_snapshots()} == set(expected)
    for s in repo.list_snapshots():
        assert restore_digest(repo, s, str(tmp_path / "out")) == expected[s.id]


class _KilledAtFirstDelete:
    """A backend that 'dies' at the first delete: what a prune killed right after writing its
    superseding index leaves behind."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.location = inner.location

    def delete(self, name: str) -> None:
        raise KeyboardInterrupt("killed")

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


def test_interrupted_prune_then_prune_does_not_resurrect_old_index_files(repo, tmp_path):
    """P1 writes an index superseding I1..In and dies; P2 supersedes P1's file and deletes it.
    I1..In must stay superseded (P2 names them too), or their dead packs come back."""
    repo_dir = str(tmp_path / "repo")
    src = str(tmp_path / "src")
    rnd = random.Random(5)
    snaps = []
    for i in range(4):
        write_round(src, rnd, i)
        snaps.append((Archiver(repo).backup([src]).snapshot, tree_digest(src)))
    for s, _ in snaps[:2]:
        repo.delete_snapshot(s.id)
    dying = Repository.open(_KilledAtFirstDelete(LocalBackend(repo_dir)), b"pw", no_cache=True)
    with pytest.raises(KeyboardInterrupt):
        Pruner(dying).run()
    # The "killed" prune ran in this (living) process, so its lock is not stale by pid;
    # remove it as 'snap unlock --remove-all' would.
    from dedupe.locks import remove_stale_locks
    remove_stale_locks(Repository.open(LocalBackend(repo_dir), b"pw", no_cache=True), remove_all=True)
    Pruner(Repository.open(LocalBackend(repo_dir), b"pw", no_cache=True)).run()
    final = Repository.open(LocalBackend(repo_dir), b"pw", no_cache=True)
    stored = {f for _, _, fs in os.walk(os.path.join(repo_dir, "data")) for f in fs}
    for _, loc in final.index.iter_blobs():
        assert loc.pack_id.hex() in stored  # no index entry points at a deleted pack
    for s, digest in snaps[2:]:
        assert restore_digest(final, final.load_snapshot(s.id), str(tmp_path / "o")) == digest


def test_prune_leaves_objects_not_named_like_packs_alone(repo, tmp_path):
    """A stray object under data/ (a note, a copy in the wrong shard) is not a pack: prune must
    neither crash on its name nor delete it (check reports such names)."""
    src = str(tmp_path / "src")
    write_round(src, random.Random(3), 0)
    snap = Archiver(repo).backup([src]).snapshot
    pack = next(o.name for o in repo.backend.list("data"))
    name = pack.rsplit("/", 1)[1]
    wrong_shard = "01" if name.startswith("00") else "00"  # (not the pack itself)
    strays = ["data/ab/README", f"data/{wrong_shard}/{name}"]
    for name in strays:
        repo.backend.put(name, b"not a pack")
    result = Pruner(repo).run()
    assert result.orphan_packs == 0
    for name in strays:
        assert repo.backend.get(name) == b"not a pack"
    assert restore_digest(repo, snap, str(tmp_path / "out")) == tree_digest(src)


def test_unchanged_directories_do_not_keep_trees_in_marked_packs(repo, tmp_path):
    """A backup reuses an unchanged directory's tree id without saving it again, unless the
    tree sits in a pack a prune marked for deletion: then the tree must be written anew, or
    the new snapshot would point into a pack about to be deleted."""
    from dedupe.locks import write_marker
    from dedupe.packs import BLOB_TREE
    from dedupe.prune import used_blobs

    src = str(tmp_path / "src")
    write_round(src, random.Random(5), 0)
    first = Archiver(repo).backup([src]).snapshot
    tree_packs = {loc.pack_id for loc in (repo.index.lookup(b) for b in used_blobs(repo, [first]))
                  if loc.type == BLOB_TREE}
    assert tree_packs

    again = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)
    unmarked = Archiver(again).backup([src])
    assert unmarked.summary["dirs_unmodified"] > 0  # src itself: the parent's tree, reused

    write_marker(repo, tree_packs)
    fresh = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)
    result = Archiver(fresh).backup([src])
    assert result.summary["files_unmodified"] > 0  # the parent was used
    check = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", no_cache=True)
    check.index.set_avoided_packs(tree_packs)  # has() now answers: a copy outside them?
    for bid in used_blobs(check, [result.snapshot]):
        if check.index.lookup(bid).type == BLOB_TREE:
            assert check.index.has(bid, BLOB_TREE), f"tree {bid.hex()[:12]} only in a marked pack"


def test_tree_packs_another_clients_prune_deleted_leave_this_clients_cache(repo, tmp_path):
    """Client A prunes; client B (own cache) still holds the deleted tree packs. Loading the
    index drops them from B's cache and keeps the cached packs that are still in use."""
    src = str(tmp_path / "src")
    rnd = random.Random(4)
    snaps = []
    for i in range(3):
        write_round(src, rnd, i)
        snaps.append(Archiver(repo).backup([src]).snapshot)
    b_cache = str(tmp_path / "cache-b")
    b = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", cache_root=b_cache)
    Restorer(b).restore(b.load_snapshot(snaps[0].id), str(tmp_path / "out"))  # caches trees

    def cached(root: str) -> set[str]:
        top = os.path.join(root, b.config.id, "data")
        return {os.path.relpath(os.path.join(d, f), os.path.join(root, b.config.id))
                for d, _, files in os.walk(top) for f in files}

    before = cached(b_cache)
    assert before
    repo.delete_snapshot(snaps[0].id)
    repo.delete_snapshot(snaps[1].id)
    result = Pruner(repo).run()
    assert result.packs_deleted + result.packs_repacked > 0
    b2 = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw", cache_root=b_cache)
    live = {f"data/{p.hex()[:2]}/{p.hex()}" for p in b2.index.packs()}
    after = cached(b_cache)
    assert before - live, "the prune deleted none of the cached tree packs"
    assert after == before & live
    s = b2.load_snapshot(snaps[2].id)
    Restorer(b2).restore(s, str(tmp_path / "out2"))  # what the cache lost is fetched again
