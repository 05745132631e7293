"""check and repair on real repositories: damage is found, named and repaired.

Repositories are real local directories (and, in one test, every configured backend). To get
many packs from little data, the test saver closes packs at 64 KiB and writes an index file
every 8 packs: the on-disk format is unchanged (pack size is a target, not a rule).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from dedupe import repairpacks
from dedupe.archiver import Archiver
from dedupe.backends import LocalBackend, open_backend
from dedupe.blobsaver import BlobSaver
from dedupe.checker import CheckOptions, Checker
from dedupe.config import Config
from dedupe.crypto import KdfParams
from dedupe.index import decode_index_file
from dedupe.packs import BLOB_DATA
from dedupe.repository import Repository
from dedupe.restorer import Restorer
from dedupe.subset import SubsetSpec
from dedupe.walker import find_node, walk
from helpers import tree_digest

PW = b"check-test-pw"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(chunk_min=4096, chunk_avg=16384, chunk_max=65536, pack_size=4 << 20)


def small_packs(repo: Repository) -> Repository:
    def saver(**kw):
        s = BlobSaver(repo, index_batch=8, **kw)
        s.pack_size = 64 << 10
        return s
    repo.new_saver = saver
    return repo


def write_tree(src: str, seed: int) -> None:
    rnd = random.Random(seed)
    for d in ("docs", "bin", "deep/a/b/c"):
        os.makedirs(os.path.join(src, d), exist_ok=True)
    for i in range(35):
        with open(os.path.join(src, "bin", f"blob{i}.dat"), "wb") as f:
            f.write(rnd.randbytes(rnd.randrange(20_000, 160_000)))
    for i in range(15):
        with open(os.path.join(src, "docs", f"note{i}.txt"), "wb") as f:
            f.write(b"".join(b"line %d of note %d %d\n" % (j, i, rnd.randrange(10**6))
                             for j in range(rnd.randrange(100, 3000))))
    with open(os.path.join(src, "deep/a/b/c", "leaf.bin"), "wb") as f:
        f.write(rnd.randbytes(90_000))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A repository with two snapshots and ~50 packs in several index files, made once."""
    base = tmp_path_factory.mktemp("template")
    src, repo_dir = str(base / "src"), str(base / "repo")
    write_tree(src, 1)
    repo = small_packs(Repository.init(LocalBackend(repo_dir), PW, Config(**SMALL),
                                       kdf=KdfParams(1, 8 << 20), cache_root=str(base / "c")))
    Archiver(repo).backup([src])
    with open(os.path.join(src, "docs", "note0.txt"), "ab") as f:
        f.write(b"an edit for the second snapshot\n" * 500)
    Archiver(repo).backup([src])
    return src, repo_dir


@pytest.fixture
def env(template, tmp_path):
    """A private copy of the template repository, its source tree and a fresh cache."""
    src, repo_dir = template
    mine = str(tmp_path / "repo")
    shutil.copytree(repo_dir, mine)
    return src, mine, str(tmp_path / "cache")


def open_repo(repo_dir: str, cache: str) -> Repository:
    return Repository.open(open_backend(repo_dir), PW, cache_root=cache)


def snap(repo_dir: str, cache: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SNAP_PASSWORD=PW.decode(), SNAP_CACHE_DIR=cache,
               PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "cli", "-r", repo_dir, *args], env=env,
                          capture_output=True, text=True, timeout=120)


def packs_of(repo_dir: str) -> list[str]:
    out = []
    for d, _, files in os.walk(os.path.join(repo_dir, "data")):
        out += [os.path.join(d, f) for f in files]
    return sorted(out)


def blob_place(repo: Repository, src: str, rel: str):
    """(snapshot path, blob id, location) of the first blob of source file ``rel``."""
    latest = repo.find_snapshot("latest")
    path = os.path.join(src, rel)
    node = find_node(repo, latest.tree, path)
    blob = node["content"][0]
    return path, blob, repo.index.lookup(blob, BLOB_DATA)


def restore_latest(repo: Repository, src: str, target: str) -> dict[str, str]:
    Restorer(repo).restore(repo.find_snapshot("latest"), target)
    return tree_digest(os.path.join(target, *[c for c in src.split("/") if c]))


# ---------------------------------------------------------------------------- clean


def test_clean_repository_passes_structure_and_data_checks(env):
    src, repo_dir, cache = env
    r = snap(repo_dir, cache, "check")
    assert r.returncode == 0, r.stderr
    assert "no errors were found" in r.stdout
    r = snap(repo_dir, cache, "--json", "check", "--read-data")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["num_errors"] == 0
    assert out["packs_read"] == out["packs"] == len(packs_of(repo_dir)) >= 40
    assert out["snapshots"] == 2 and out["index_files"] >= 5


# ---------------------------------------------------------------------------- damage


def test_flipped_byte_is_named_with_pack_blob_and_file(env):
    src, repo_dir, cache = env
    repo = open_repo(repo_dir, cache)
    rnd = random.Random(7)
    rel = f"bin/blob{rnd.randrange(35)}.dat"
    path, blob, loc = blob_place(repo, src, rel)
    pack_file = os.path.join(repo_dir, "data", loc.pack_id.hex()[:2], loc.pack_id.hex())
    with open(pack_file, "r+b") as f:  # one byte inside the blob, at a random place
        pos = loc.offset + rnd.randrange(loc.length)
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ (1 << rnd.randrange(8))]))
    plain = snap(repo_dir, cache, "check")  # same size, header intact: structure is fine
    assert plain.returncode == 0, plain.stdout + plain.stderr
    r = snap(repo_dir, cache, "check", "--read-data")
    out = r.stdout + r.stderr
    assert r.returncode == 1
    assert "Traceback" not in out
    assert f"data/{loc.pack_id.hex()[:2]}/{loc.pack_id.hex()}" in out  # the pack
    assert blob.hex() in out  # the blob
    assert path in out  # the file that depends on it
    r = snap(repo_dir, cache, "--json", "check", "--read-data")
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    kinds = {e["kind"] for e in doc["errors"]}
    assert kinds == {"pack_name", "blob_damaged"}
    damaged = [e for e in doc["errors"] if e["kind"] == "blob_damaged"]
    assert [e["blob"] for e in damaged] == [blob.hex()]
    assert {a["path"] for a in damaged[0]["affected"]} == {path}
    assert len({a["snapshot"] for a in damaged[0]["affected"]}) == 2  # both snapshots


def test_damaged_pack_header_is_found_without_reading_data(env):
    src, repo_dir, cache = env
    pack_file = packs_of(repo_dir)[3]
    size = os.path.getsize(pack_file)
    with open(pack_file, "r+b") as f:  # a byte of the sealed header (just before its length)
        f.seek(size - 10)
        b = f.read(1)[0]
        f.seek(size - 10)
        f.write(bytes([b ^ 0x40]))
    r = snap(repo_dir, cache, "check")
    assert r.returncode == 1
    assert "header damaged" in r.stderr and os.path.basename(pack_file) in r.stderr


def test_deleted_pack_is_named_with_affected_files_and_repaired(env, tmp_path):
    src, repo_dir, cache = env
    repo = open_repo(repo_dir, cache)
    path, blob, loc = blob_place(repo, src, "deep/a/b/c/leaf.bin")
    os.unlink(os.path.join(repo_dir, "data", loc.pack_id.hex()[:2], loc.pack_id.hex()))
    r = snap(repo_dir, cache, "check")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"pack data/{loc.pack_id.hex()[:2]}/{loc.pack_id.hex()} is missing" in r.stderr
    assert path in r.stderr
    doc = json.loads(snap(repo_dir, cache, "--json", "check").stdout.strip().splitlines()[-1])
    [missing] = [e for e in doc["errors"] if e["kind"] == "pack_missing"]
    affected = {a["path"] for a in missing["affected"]}  # every file with a blob in that pack
    assert path in affected
    # restic's recipe: repair the index, then the snapshots; the originals go with --forget
    assert snap(repo_dir, cache, "repair", "index").returncode == 0
    r = snap(repo_dir, cache, "repair", "snapshots", "--forget")
    assert r.returncode == 0, r.stderr
    assert f"{path}: removed missing content" in r.stdout and "modified 2 snapshots" in r.stdout
    r = snap(repo_dir, cache, "check", "--read-data")
    assert r.returncode == 0, r.stdout + r.stderr
    repo = open_repo(repo_dir, cache)
    snaps = repo.list_snapshots()
    assert len(snaps) == 2 and all("repaired" in s.tags and s.original for s in snaps)
    got = restore_latest(repo, src, str(tmp_path / "restore"))
    want = tree_digest(src)
    damaged = {os.path.relpath(p, src) for p in affected}
    assert {k: v for k, v in got.items() if k not in damaged} == \
        {k: v for k, v in want.items() if k not in damaged}
    assert all(got[k] != want[k] for k in damaged)  # shorter now: the lost blobs are gone
    lost = next(n for p, n in walk(repo, snaps[-1].tree) if p == path.encode())
    assert blob not in lost["content"] and lost["size"] < os.path.getsize(path)


def index_file_listing(repo: Repository, pack_id: bytes) -> str:
    for obj in repo.backend.list("index"):
        body = decode_index_file(repo.key, repo.backend.get(obj.name), obj.name)
        if any(pid == pack_id for pid, _ in body["packs"]):
            return obj.name.split("/", 1)[1]
    raise AssertionError("no index file lists the pack")


@pytest.mark.parametrize("victim", ["data", "tree"])
def test_lost_index_file_is_reported_and_repair_index_makes_the_repository_whole(
        env, tmp_path, victim):
    src, repo_dir, cache = env
    repo = open_repo(repo_dir, cache)
    if victim == "data":  # the index file of a data pack
        _, _, loc = blob_place(repo, src, "bin/blob3.dat")
    else:  # the one listing the root tree: nothing below it can be walked any more
        loc = repo.index.lookup(repo.find_snapshot("latest").tree)
    os.unlink(os.path.join(repo_dir, "index", index_file_listing(repo, loc.pack_id)))
    r = snap(repo_dir, cache, "--json", "check")
    assert r.returncode == 1
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    orphans = [i for i in doc["info"] if i["kind"] == "packs_unindexed"]
    assert orphans and orphans[0]["count"] >= 1  # information, not an error
    assert all(e["kind"] == "blob_missing" for e in doc["errors"])
    assert any("run 'snap repair index'" in e["message"] for e in doc["errors"])
    r = snap(repo_dir, cache, "repair", "index")
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(os.path.join(repo_dir, "index"))) == 1
    r = snap(repo_dir, cache, "check", "--read-data")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not in any index" not in r.stdout
    repo = open_repo(repo_dir, cache)
    assert restore_latest(repo, src, str(tmp_path / "restore")) == tree_digest(src)


def test_damaged_index_file_and_snapshot_are_named(env):
    src, repo_dir, cache = env
    for ns in ("index", "snapshots"):
        name = sorted(os.listdir(os.path.join(repo_dir, ns)))[0]
        with open(os.path.join(repo_dir, ns, name), "r+b") as f:
            f.seek(30)
            b = f.read(1)[0]
            f.seek(30)
            f.write(bytes([b ^ 1]))
        r = snap(repo_dir, cache, "check")
        assert r.returncode == 1 and f"{ns}/{name}" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------- subsets


def run_check(repo_dir: str, cache: str, spec: SubsetSpec, **kw):
    repo = open_repo(repo_dir, cache)
    return Checker(repo, CheckOptions(subset=spec, check_headers=False, **kw)).run()


def test_percent_reads_that_share_of_packs(env):
    # Tolerance: the number of packs is exact (floor(n * x / 100), at least 1); the bytes
    # follow from which packs were drawn, so over ten draws their mean is within 10 points.
    src, repo_dir, cache = env
    total = len(packs_of(repo_dir))
    size = sum(os.path.getsize(p) for p in packs_of(repo_dir))
    shares = []
    for seed in range(10):
        res = run_check(repo_dir, cache, SubsetSpec("percent", percent=25),
                        rng=random.Random(seed), record_state=False)
        assert res.ok and res.packs_read == total * 25 // 100
        shares.append(res.bytes_read / size)
    assert abs(sum(shares) / len(shares) - 0.25) < 0.10
    r = snap(repo_dir, cache, "--json", "check", "--read-data-subset", "10%")
    assert json.loads(r.stdout.strip().splitlines()[-1])["packs_read"] == max(1, total // 10)


def test_size_subset_stays_within_the_volume(env):
    src, repo_dir, cache = env
    res = run_check(repo_dir, cache, SubsetSpec("size", size=500_000), rng=random.Random(3))
    assert res.ok and 0 < res.bytes_read <= 500_000
    r = snap(repo_dir, cache, "--json", "check", "--read-data-subset", "1M")
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and 0 < doc["bytes_read"] <= 1 << 20


def test_groups_of_n_over_t_cover_every_pack_exactly_once(env):
    src, repo_dir, cache = env
    seen: list[str] = []
    for n in range(1, 6):
        res = run_check(repo_dir, cache, SubsetSpec("bucket", n=n, t=5), record_state=False)
        assert res.ok
        seen += res.read_packs
    assert sorted(seen) == sorted(os.path.relpath(p, repo_dir) for p in packs_of(repo_dir))
    r = snap(repo_dir, cache, "check", "--read-data-subset", "2/5")
    assert r.returncode == 0 and "group 2 of 5" in r.stdout


def test_ten_weekly_stale_runs_read_every_pack(env):
    src, repo_dir, cache = env
    everything = {os.path.relpath(p, repo_dir) for p in packs_of(repo_dir)}
    week0 = datetime(2024, 1, 7, 3, 0, tzinfo=timezone.utc)
    last: dict[str, int] = {}  # pack -> week it was last read
    for week in range(10):
        res = run_check(repo_dir, cache, SubsetSpec("stale", percent=10),
                        now=week0 + timedelta(weeks=week))
        assert res.ok and res.state_object
        assert res.packs_read == -(-len(everything) // 10)  # ceil(10%)
        last.update((p, week) for p in res.read_packs)
        # one state object remains in the repository: each run replaces the previous one
        assert len(os.listdir(os.path.join(repo_dir, "state"))) == 1
    assert set(last) == everything
    # later runs keep taking the packs verified longest ago
    res = run_check(repo_dir, cache, SubsetSpec("stale", percent=10), now=week0 + timedelta(weeks=10))
    unread = everything - set(res.read_packs)
    assert max(last[p] for p in res.read_packs) <= min(last[p] for p in unread)


def test_rotation_continues_on_another_machine(env, tmp_path):
    """The verification state lives in the repository: a second cache sees the first's work."""
    src, repo_dir, cache = env
    total = len(packs_of(repo_dir))
    first = run_check(repo_dir, cache, SubsetSpec("stale", percent=50))
    second = run_check(repo_dir, str(tmp_path / "other-machine-cache"),
                       SubsetSpec("stale", percent=50))
    assert set(first.read_packs) | set(second.read_packs) == \
        {os.path.relpath(p, repo_dir) for p in packs_of(repo_dir)}
    assert len(set(first.read_packs) & set(second.read_packs)) == 2 * ((total + 1) // 2) - total
    r = snap(repo_dir, cache, "-v", "check", "--read-data-subset", "stale:50%")
    assert r.returncode == 0 and "verification state saved as state/" in r.stdout


def test_check_and_stale_state_on_every_backend(repo_location, tmp_path):
    url, _env = repo_location
    src = str(tmp_path / "src")
    os.makedirs(src)
    for i in range(6):
        with open(os.path.join(src, f"f{i}"), "wb") as f:
            f.write(random.Random(i).randbytes(50_000))
    repo = small_packs(Repository.init(open_backend(url), PW, Config(**SMALL),
                                       kdf=KdfParams(1, 8 << 20), cache_root=str(tmp_path / "c")))
    Archiver(repo).backup([src])
    for _ in range(2):
        res = Checker(Repository.open(open_backend(url), PW, no_cache=True),
                      CheckOptions(subset=SubsetSpec("stale", percent=50))).run()
        assert res.ok and res.headers_read + res.packs_read == res.packs
    states = list(open_backend(url).list("state"))
    assert len(states) == 1
    from dedupe.verifystate import load_state
    assert len(load_state(Repository.open(open_backend(url), PW, no_cache=True)).times) == res.packs


def test_truncated_pack_is_named_by_plain_check(env):
    src, repo_dir, cache = env
    repo = open_repo(repo_dir, cache)
    path, blob, loc = blob_place(repo, src, "bin/blob5.dat")
    pack_file = os.path.join(repo_dir, "data", loc.pack_id.hex()[:2], loc.pack_id.hex())
    size = os.path.getsize(pack_file)
    os.truncate(pack_file, size - 100)
    doc = json.loads(snap(repo_dir, cache, "--json", "check").stdout.strip().splitlines()[-1])
    [err] = doc["errors"]
    assert err["kind"] == "pack_size" and str(size - 100) in err["message"]
    assert path in {a["path"] for a in err["affected"]}
    # reading it shows which blobs survived: the header is gone, the blobs are intact
    doc = json.loads(snap(repo_dir, cache, "--json", "check", "--read-data")
                     .stdout.strip().splitlines()[-1])
    assert {e["kind"] for e in doc["errors"]} == {"pack_size", "pack_name", "pack_header"}


def test_lost_directory_trees_become_empty_directories(env):
    src, repo_dir, cache = env
    repo = open_repo(repo_dir, cache)
    first, latest = repo.list_snapshots()
    deep = os.path.join(src, "deep")  # unchanged since the first backup: its trees are old
    lost = repo.index.lookup(find_node(repo, latest.tree, deep)["subtree"]).pack_id
    assert lost != repo.index.lookup(latest.tree).pack_id
    os.unlink(os.path.join(repo_dir, "data", lost.hex()[:2], lost.hex()))
    r = snap(repo_dir, cache, "check")
    assert r.returncode == 1 and f"snapshot {latest.id[:8]} {deep}  (blob" in r.stderr
    assert snap(repo_dir, cache, "repair", "index").returncode == 0
    r = snap(repo_dir, cache, "repair", "snapshots", "--forget")
    assert f"{deep}: replaced with empty directory" in r.stdout
    assert snap(repo_dir, cache, "check").returncode == 0
    repo = open_repo(repo_dir, cache)
    repaired = repo.find_snapshot("latest")
    assert repaired.original == latest.id and "repaired" in repaired.tags
    assert find_node(repo, repaired.tree, deep)["type"] == "dir"
    assert [p for p, _ in walk(repo, repaired.tree) if p.startswith(deep.encode() + b"/")] == []
    assert len(repo.list_snapshots()) <= 2  # the first may be unrepairable (root lost): forgotten


def test_index_rewritten_while_loading_is_loaded_again(env):
    """A prune may replace the index files between check's listing and its reads."""
    from dedupe.repair import repair_index

    src, repo_dir, cache = env

    class RewriteOnFirstRead(LocalBackend):  # the real directory; the rewrite is real too
        fired = False

        def get(self, name, offset=0, length=None):
            if name.startswith("index/") and not self.fired:
                self.fired = True
                repair_index(open_repo(repo_dir, cache + "-other"), lock=False)
            return super().get(name, offset, length)

    backend = RewriteOnFirstRead(repo_dir)
    res = Checker(Repository.open(backend, PW, cache_root=cache), CheckOptions()).run()
    assert backend.fired and res.ok, [f.message for f in res.errors]
    assert res.index_files == 1


@pytest.mark.parametrize("small_index", [True, False], ids=["set", "numpy"])
def test_duplicate_and_unused_blobs_are_counted_as_information(env, monkeypatch, small_index):
    """A blob stored twice (prune's repacking stores copies with force=True), referenced by no
    snapshot: check counts the extra copy and both unused blobs as information, not errors,
    whether it counts with a set (small repositories) or with numpy (large ones)."""
    src, repo_dir, cache = env
    if not small_index:
        monkeypatch.setattr("dedupe.checker.SMALL_INDEX", 0)
    data = random.Random(7).randbytes(30_000)
    repo = open_repo(repo_dir, cache + "-writer")
    for force in (False, True):
        saver = repo.new_saver()
        assert saver.save(BLOB_DATA, repo.key.blob_id(data), data, force=force)
        saver.flush()
        saver.close()
    result = Checker(open_repo(repo_dir, cache)).run()
    assert result.ok
    info = {f.kind: f for f in result.findings if f.kind.startswith("blobs_")}
    assert info["blobs_duplicate"].count == 1
    assert info["blobs_unused"].count == 2


def test_pack_with_a_slot_left_unfilled_is_never_written(env, monkeypatch):
    """Encoders fill their reserved slots of one pack in parallel and the last one to finish
    ships it. If a slot's encryption fails while another writer is still busy, that writer
    must not ship the pack with a hole in it (every pack written decodes fully)."""
    import time

    from dedupe.packs import parse_pack

    src, repo_dir, cache = env
    repo = open_repo(repo_dir, cache)
    before = set(packs_of(repo_dir))
    saver = repo.new_saver()
    saver.pack_size = 150_000  # the second 100 kB blob fills the pack
    rnd = random.Random(3)
    slow, failing = rnd.randbytes(100_000), rnd.randbytes(100_000)
    slow_id, failing_id = repo.key.blob_id(slow), repo.key.blob_id(failing)
    real = saver.codec.seal_into

    def seal_into(out, offset, blob_type, blob_id, payload):
        if blob_id == failing_id:
            raise OSError("simulated encryption failure")
        time.sleep(0.5)  # still writing when the other slot has failed
        real(out, offset, blob_type, blob_id, payload)

    monkeypatch.setattr(saver.codec, "seal_into", seal_into)
    saver.save(BLOB_DATA, slow_id, slow)
    saver.save(BLOB_DATA, failing_id, failing)
    with pytest.raises(OSError, match="simulated"):
        saver.flush()
    saver.close()
    for path in sorted(set(packs_of(repo_dir)) - before):
        with open(path, "rb") as f:
            pack = f.read()
        for entry in parse_pack(repo.key, pack, path):
            repo.codec.decode(entry, pack[entry.offset:entry.offset + entry.length])


# ---------------------------------------------------------------------------- repair packs
# A pack with one rotten blob gives up that blob only.

def rot_one_blob(repo_dir: str, loc) -> str:
    """Flip a byte in the middle of the blob at ``loc``; return the pack's path."""
    path = os.path.join(repo_dir, "data", loc.pack_id.hex()[:2], loc.pack_id.hex())
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        b = f.read(1)[0]
        f.seek(loc.offset + loc.length // 2)
        f.write(bytes([b ^ 0x40]))
    return path


def files_using(repo, pack_id: bytes) -> dict[str, set[bytes]]:
    """Source paths (as the latest snapshot names them) with blobs in ``pack_id``."""
    out: dict[str, set[bytes]] = {}
    for path, node in walk(repo, repo.find_snapshot("latest").tree):
        for b in node.get("content") or ():
            if isinstance(b, bytes) and repo.index.lookup(b, BLOB_DATA).pack_id == pack_id:
                out.setdefault(path.decode(), set()).add(b)
    return out


def test_the_intact_blobs_of_a_damaged_pack_are_salvaged(env, tmp_path):
    src, repo_dir, cache = env
    repo = open_repo(repo_dir, cache)
    path, blob, loc = blob_place(repo, src, "bin/blob3.dat")
    users = files_using(repo, loc.pack_id)
    others = {p for p, blobs in users.items() if blob not in blobs}
    assert others, "the pack must hold blobs of other files too"
    repo.close()
    pack_file = rot_one_blob(repo_dir, loc)
    r = snap(repo_dir, cache, "--json", "check", "--read-data")
    assert r.returncode == 1
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert {e["kind"] for e in doc["errors"]} == {"pack_name", "blob_damaged"}
    r = snap(repo_dir, cache, "check", "--read-data")  # for people: the way out
    assert r.stderr.strip().endswith(f"snap repair packs {loc.pack_id.hex()}"), r.stderr

    r = snap(repo_dir, cache, "--json", "repair", "packs", loc.pack_id.hex()[:12])
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    [salvage] = summary["packs"]
    assert salvage["lost"] == [{"type": "data", "id": blob.hex()}]
    assert salvage["salvaged"] >= len(others) and summary["blobs_lost"] == 1
    assert not os.path.exists(pack_file)
    assert "repair snapshots" in r.stderr  # the next step, said once
    # Only the rotten blob is gone: check names just it, and the snapshots that use it.
    r = snap(repo_dir, cache, "--json", "check", "--read-data")
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(e["kind"], e["blob"]) for e in doc["errors"]] == [("blob_missing", blob.hex())]
    assert snap(repo_dir, cache, "repair", "snapshots", "--forget").returncode == 0
    r = snap(repo_dir, cache, "check", "--read-data")
    assert r.returncode == 0, r.stdout + r.stderr
    got = restore_latest(open_repo(repo_dir, cache), src, str(tmp_path / "restore"))
    want = tree_digest(src)
    rel = os.path.relpath(path, src)
    assert {k: v for k, v in got.items() if k != rel} == {k: v for k, v in want.items()
                                                           if k != rel}
    assert all(os.path.relpath(p, src) in got for p in others)


def test_a_blob_another_pack_also_holds_is_not_lost(env):
    src, repo_dir, cache = env
    repo = open_repo(repo_dir, cache)
    _, blob, loc = blob_place(repo, src, "bin/blob3.dat")
    with repo.new_saver() as saver:  # a second copy, as an interrupted prune may leave one
        saver.save(BLOB_DATA, blob, repo.load_blob(BLOB_DATA, blob), force=True)
        saver.flush()
    repo.close()
    rot_one_blob(repo_dir, loc)
    r = snap(repo_dir, cache, "--json", "repair", "packs", loc.pack_id.hex())
    assert r.returncode == 0, r.stderr
    [salvage] = json.loads(r.stdout)["packs"]
    assert salvage["lost"] == [] and salvage["other_copies"] == 1 and r.stderr == ""
    r = snap(repo_dir, cache, "check", "--read-data")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_crash_before_the_damaged_pack_is_deleted_leaves_a_clean_repository(
        env, monkeypatch):
    src, repo_dir, cache = env
    repo = open_repo(repo_dir, cache)
    _, blob, loc = blob_place(repo, src, "bin/blob3.dat")
    repo.close()
    pack_file = rot_one_blob(repo_dir, loc)

    def crash(repo, name, result):
        raise KeyboardInterrupt("killed")  # after the new index, before any delete

    monkeypatch.setattr(repairpacks, "_delete", crash)
    repo = open_repo(repo_dir, cache)
    with pytest.raises(KeyboardInterrupt):
        repairpacks.repair_packs(repo, [loc.pack_id], lock=False)
    assert os.path.exists(pack_file)
    r = snap(repo_dir, cache, "--json", "check", "--read-data")
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    # The rotten pack is no longer indexed (information); only its bad blob is missing.
    assert [(e["kind"], e["blob"]) for e in doc["errors"]] == [("blob_missing", blob.hex())]
    assert any(i["kind"] == "packs_unindexed" for i in doc["info"])


def test_bad_pack_arguments_are_one_line(env):
    _, repo_dir, cache = env
    for args, text in ((["zz"], "not a pack ID"), (["0000000000"], "no pack matches")):
        r = snap(repo_dir, cache, "repair", "packs", *args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and text in r.stderr, r.stderr
