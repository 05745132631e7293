"""Repository core on real local directories: keys, config, integrity, crash safety, cache.

Library-level repositories use cheap Argon2 parameters (the format stores them per key file).
Nothing here mocks storage: every test reads and writes real files; crashes are simulated by a
backend wrapper that stops after N writes, and by killing a real subprocess.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import msgpack
import pytest

from dedupe.backends.base import pack_name
from dedupe.backends.local import LocalBackend
from dedupe.config import Config
from dedupe.crypto import AAD_CONFIG, KdfParams, storage_id
from dedupe.errors import (
    AlreadyExists, BackendError, IntegrityError, KeyManagementError, NoRepository, NotFound,
    RepositoryExists, SnapshotNotFound, UnsupportedVersion, WrongPassword,
)
from dedupe.packs import BLOB_DATA, BLOB_TREE, read_pack_header
from dedupe.repository import Repository
from dedupe.snapshot import Snapshot
from dedupe.tree import decode_tree, encode_tree

MiB = 1024 * 1024
KDF = KdfParams(opslimit=1, memlimit=8 * MiB)


def small_config() -> Config:
    """Small chunks and the smallest pack size; a fresh repository id each time."""
    return Config(chunk_min=64 * 1024, chunk_avg=256 * 1024, chunk_max=1 * MiB, pack_size=4 * MiB)


PW = b"correct horse battery staple"
PW2 = b"second password"
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- helpers


def init_repo(path, password=PW, config=None, cache_root=None, **kw) -> Repository:
    return Repository.init(LocalBackend(str(path)), password, config or small_config(), kdf=KDF,
                           cache_root=cache_root, no_cache=cache_root is None, **kw)


def open_repo(path, password=PW, cache_root=None, backend=None) -> Repository:
    return Repository.open(backend or LocalBackend(str(path)), password,
                           cache_root=cache_root, no_cache=cache_root is None)


@dataclass
class Expected:
    """What a repository should hold: snapshot id -> {file name: content}."""

    snapshots: dict[str, dict[bytes, bytes]] = field(default_factory=dict)


def backup(repo: Repository, files: dict[bytes, bytes], expected: Expected | None = None,
           *, chunk: int = 300_000, paths=("/home/alice",), hostname="testhost",
           **saver_options) -> str:
    """Store ``files`` as one directory (real tree format) and a snapshot; packs, index, snapshot
    in the engine's order. Files are cut in fixed ``chunk``-sized blobs (chunking is not the
    subject here)."""
    nodes = []
    with repo.new_saver(**saver_options) as saver:
        for name in sorted(files):
            data = files[name]
            content = []
            for i in range(0, max(len(data), 1), chunk):
                piece = data[i:i + chunk]
                if not piece and data:
                    break
                bid = repo.key.blob_id(piece)
                saver.save(BLOB_DATA, bid, piece)
                content.append(bid)
            nodes.append({"name": name, "type": "file", "mode": 0o644, "size": len(data),
                          "content": content})
        tree = encode_tree(nodes)
        tree_id = repo.key.blob_id(tree)
        saver.save(BLOB_TREE, tree_id, tree)
        saver.flush()
    snap = Snapshot(time=datetime.now(timezone.utc), tree=tree_id, paths=list(paths),
                    hostname=hostname)
    sid = repo.save_snapshot(snap)
    if expected is not None:
        expected.snapshots[sid] = dict(files)
    return sid


def read_everything(repo: Repository, expected: Expected) -> None:
    """Read every snapshot, tree, file blob and pack header; compare with what was stored."""
    snaps = repo.list_snapshots()
    assert {s.id for s in snaps} == set(expected.snapshots)
    for snap in snaps:
        nodes = decode_tree(repo.load_blob(BLOB_TREE, snap.tree))
        got = {n["name"]: b"".join(repo.load_blob(BLOB_DATA, b) for b in n["content"])
               for n in nodes}
        assert got == expected.snapshots[snap.id]
    for pack_id in repo.index.packs():
        name = pack_name(pack_id.hex())
        entries = read_pack_header(repo.key, repo.backend, name, repo.backend.stat(name).size)
        for e in entries:
            loc = repo.index.lookup(e.id, e.type)
            assert loc is not None


def stored_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def files_of(n: int, seed: int) -> dict[bytes, bytes]:
    """Some incompressible, some compressible, one empty, one above the OpenSSL threshold."""
    rnd = random.Random(seed)
    out = {b"empty": b""}
    for i in range(n):
        if i % 2:
            out[f"random-{seed}-{i}.bin".encode()] = rnd.randbytes(rnd.randrange(1, 400_000))
        else:
            out[f"text-{seed}-{i}.txt".encode()] = (f"line {seed} {i}\n" * rnd.randrange(1, 20_000)).encode()
    return out


# ----------------------------------------------------------------------------- a template repo


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Two snapshots, two keys (PW and PW2), data and tree packs, two index files."""
    path = tmp_path_factory.mktemp("template") / "repo"
    repo = init_repo(path)
    repo.add_key(PW2, KDF)
    expected = Expected()
    backup(repo, files_of(4, 1), expected)
    backup(repo, files_of(4, 2) | {b"shared": files_of(4, 1)[b"text-1-0.txt"]}, expected)
    return path, expected


@pytest.fixture
def repo_copy(template, tmp_path):
    path, expected = template
    dest = tmp_path / "repo"
    shutil.copytree(path, dest)
    return dest, Expected(dict(expected.snapshots))  # tests add snapshots to their copy


def test_template_reads_back(repo_copy):
    path, expected = repo_copy
    repo = open_repo(path)
    read_everything(repo, expected)
    kinds = {name.split("/")[0] for name in stored_files(path)}
    assert kinds == {"config", "keys", "index", "snapshots", "data"}


# ----------------------------------------------------------------------------- init / open


def test_init_then_open(tmp_path):
    repo = init_repo(tmp_path / "r")
    again = open_repo(tmp_path / "r")
    assert again.config == repo.config
    assert again.key == repo.key
    assert again.key_id == repo.key_id
    assert sorted(stored_files(tmp_path / "r")) == ["config", f"keys/{repo.key_id}"]


def test_default_config_values():
    c = Config()
    assert (c.chunk_min, c.chunk_avg, c.chunk_max) == (512 * 1024, MiB, 8 * MiB)
    assert c.compression_level == 3 and c.pack_size == 16 * MiB


@pytest.mark.parametrize("bad", [dict(pack_size=3 * MiB), dict(pack_size=129 * MiB),
                                 dict(chunk_min=2 * MiB, chunk_avg=MiB),
                                 dict(compression_level=23), dict(compression_level=-1)])
def test_init_refuses_bad_config(tmp_path, bad):
    with pytest.raises(ValueError):
        init_repo(tmp_path / "r", config=Config(**bad))
    assert not (tmp_path / "r").exists()


def test_wrong_password(tmp_path):
    init_repo(tmp_path / "r")
    with pytest.raises(WrongPassword):
        open_repo(tmp_path / "r", password=b"not it")


def test_no_repository(tmp_path):
    with pytest.raises(NoRepository):
        open_repo(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoRepository):
        open_repo(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_config_without_keys_is_no_repository(tmp_path):
    repo = init_repo(tmp_path / "r")
    os.unlink(tmp_path / "r" / "keys" / repo.key_id)
    with pytest.raises(NoRepository):
        open_repo(tmp_path / "r")


def test_init_twice_is_refused_and_changes_nothing(tmp_path):
    init_repo(tmp_path / "r")
    before = stored_files(tmp_path / "r")
    with pytest.raises(RepositoryExists):
        init_repo(tmp_path / "r", password=b"other")
    assert stored_files(tmp_path / "r") == before
    open_repo(tmp_path / "r")


def test_init_over_leftover_key_files_is_refused(tmp_path):
    repo = init_repo(tmp_path / "r")
    os.unlink(tmp_path / "r" / "config")  # as after a crash between key and config
    with pytest.raises(RepositoryExists):
        init_repo(tmp_path / "r")
    assert sorted(stored_files(tmp_path / "r")) == [f"keys/{repo.key_id}"]


def test_unknown_repository_version(tmp_path):
    repo = init_repo(tmp_path / "r")
    body = msgpack.unpackb(repo.key.open((tmp_path / "r" / "config").read_bytes(), AAD_CONFIG))
    body["version"] = 2
    (tmp_path / "r" / "config").write_bytes(repo.key.seal(msgpack.packb(body), AAD_CONFIG))
    with pytest.raises(UnsupportedVersion, match="version 2"):
        open_repo(tmp_path / "r")


def test_repositories_do_not_share_keys(tmp_path):
    a, b = init_repo(tmp_path / "a"), init_repo(tmp_path / "b")
    assert a.key != b.key and a.config.id != b.config.id
    # the config of one repository does not open with the key of another
    shutil.copy(tmp_path / "a" / "config", tmp_path / "b" / "config2")
    with pytest.raises(IntegrityError):
        Config.decode(b.key, (tmp_path / "b" / "config2").read_bytes())


# ----------------------------------------------------------------------------- keys


def test_two_key_files_open_the_same_repository(repo_copy):
    path, expected = repo_copy
    r1, r2 = open_repo(path, PW), open_repo(path, PW2)
    assert r1.key == r2.key and r1.config == r2.config
    assert r1.key_id != r2.key_id
    read_everything(r2, expected)
    keys = r1.list_keys()
    assert len(keys) == 2
    assert [k.current for k in keys].count(True) == 1
    assert next(k for k in keys if k.current).id == r1.key_id


def test_add_key_then_remove_it(tmp_path):
    repo = init_repo(tmp_path / "r")
    kid = repo.add_key(PW2, KDF)
    assert open_repo(tmp_path / "r", PW2).key_id == kid
    assert repo.remove_key(kid[:8]) == kid
    with pytest.raises(WrongPassword):
        open_repo(tmp_path / "r", PW2)
    open_repo(tmp_path / "r", PW)


def test_remove_current_key_is_refused(tmp_path):
    repo = init_repo(tmp_path / "r")
    repo.add_key(PW2, KDF)
    before = stored_files(tmp_path / "r")
    with pytest.raises(KeyManagementError):
        repo.remove_key(repo.key_id)
    assert stored_files(tmp_path / "r") == before


def test_remove_last_key_is_refused(tmp_path):
    repo = init_repo(tmp_path / "r")
    before = stored_files(tmp_path / "r")
    with pytest.raises(KeyManagementError):
        repo.remove_key(repo.key_id)
    assert stored_files(tmp_path / "r") == before
    # The only non-current key can be the last one when another session removed ours.
    kid2 = repo.add_key(PW2, KDF)
    other = open_repo(tmp_path / "r", PW2)
    other.remove_key(repo.key_id)
    with pytest.raises(KeyManagementError, match="last"):
        repo.remove_key(kid2)
    assert open_repo(tmp_path / "r", PW2).key_id == kid2


@pytest.mark.parametrize("ref", ["", "zz", "0" * 64])
def test_remove_unknown_or_ambiguous_key(tmp_path, ref):
    repo = init_repo(tmp_path / "r")
    repo.add_key(PW2, KDF)
    with pytest.raises(KeyManagementError):
        repo.remove_key(ref)


def test_change_password(tmp_path):
    repo = init_repo(tmp_path / "r")
    old_id = repo.key_id
    new_id = repo.change_password(PW2, KDF)
    assert new_id != old_id and repo.key_id == new_id
    with pytest.raises(WrongPassword):
        open_repo(tmp_path / "r", PW)
    again = open_repo(tmp_path / "r", PW2)
    assert again.key == repo.key and again.key_id == new_id
    assert sorted(stored_files(tmp_path / "r")) == ["config", f"keys/{new_id}"]


def test_key_files_are_named_by_their_hash(repo_copy):
    path, _ = repo_copy
    for name, data in stored_files(path).items():
        if name != "config":
            assert name.rsplit("/", 1)[1] == storage_id(data)


def test_damaged_key_file_does_not_lock_out_other_keys(repo_copy):
    """One damaged key file must not stop the other password from opening the repository, and
    must still be listable and removable (else only hand surgery gets rid of it)."""
    path, expected = repo_copy
    r1 = open_repo(path, PW)
    victim = path / "keys" / r1.key_id
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(IntegrityError):
        open_repo(path, PW)
    r2 = open_repo(path, PW2)
    read_everything(r2, expected)
    keys = {k.id: k for k in r2.list_keys()}
    assert set(keys) == {r1.key_id, r2.key_id}
    r2.remove_key(r1.key_id)
    assert not victim.exists()


# ----------------------------------------------------------------------------- tampering

KINDS = ["config", "keys", "index", "snapshots", "data-pack", "tree-pack"]
POSITIONS = ["first", "nonce-last", "ciphertext-first", "middle", "tag-first", "last-5", "last"]


def _position(where: str, size: int) -> int:
    return {"first": 0, "nonce-last": 23, "ciphertext-first": 24, "middle": size // 2,
            "tag-first": size - 16, "last-5": size - 5, "last": size - 1}[where]


def _files_of_kind(path: Path, kind: str) -> list[Path]:
    if kind == "config":
        return [path / "config"]
    if kind in ("keys", "index", "snapshots"):
        return sorted((path / kind).iterdir())
    repo = open_repo(path)
    packs = []
    for p in sorted((path / "data").rglob("*")):
        if p.is_file():
            entries = read_pack_header(repo.key, repo.backend, f"data/{p.parent.name}/{p.name}",
                                       p.stat().st_size)
            is_tree = entries[0].type == BLOB_TREE
            if is_tree == (kind == "tree-pack"):
                packs.append(p)
    return packs


def _full_read(path: Path, expected: Expected, cache_root=None) -> None:
    """Open with both passwords and read everything (no cache: straight from the files)."""
    for pw in (PW, PW2):
        read_everything(open_repo(path, pw, cache_root=cache_root), expected)


@pytest.mark.parametrize("where", POSITIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_flipped_byte_in_any_stored_file_is_detected(repo_copy, kind, where):
    path, expected = repo_copy
    targets = _files_of_kind(path, kind)
    assert targets
    for target in targets:
        original = target.read_bytes()
        i = _position(where, len(original))
        for mask in (0x01, 0x80):
            bad = bytearray(original)
            bad[i] ^= mask
            target.write_bytes(bytes(bad))
            # Key files: the file names its hash, so damage is IntegrityError, never taken for
            # a wrong password and never a silently different key file.
            with pytest.raises(IntegrityError):
                _full_read(path, expected)
        target.write_bytes(original)
    _full_read(path, expected)  # restored: all good again, so the test above was meaningful


def test_every_byte_of_a_snapshot_and_config_is_covered(repo_copy):
    path, expected = repo_copy
    for target in [path / "config", next((path / "snapshots").iterdir())]:
        original = target.read_bytes()
        for i in range(len(original)):
            bad = bytearray(original)
            bad[i] ^= 0x10
            target.write_bytes(bytes(bad))
            with pytest.raises(IntegrityError):
                _full_read(path, expected)
        target.write_bytes(original)


def test_key_file_metadata_is_covered_too(repo_copy):
    # hostname, username and creation time sit in plain msgpack; the name (hash) covers them.
    path, expected = repo_copy
    target = sorted((path / "keys").iterdir())[0]
    original = target.read_bytes()
    d = msgpack.unpackb(original)
    d["hostname"] = d["hostname"] + "x"
    target.write_bytes(msgpack.packb(d))
    with pytest.raises(IntegrityError):
        _full_read(path, expected)
    target.write_bytes(original)


@pytest.mark.parametrize("kind", ["config", "keys"])
def test_truncated_config_or_key_file_is_a_clear_error(repo_copy, kind):
    path, expected = repo_copy
    for target in _files_of_kind(path, kind):
        original = target.read_bytes()
        for cut in sorted({0, 1, 10, 24, 40, len(original) // 2, len(original) - 1}):
            target.write_bytes(original[:cut])
            with pytest.raises(IntegrityError):
                _full_read(path, expected)
        target.write_bytes(original)


def test_swapped_snapshot_files_are_detected(repo_copy):
    path, expected = repo_copy
    a, b = sorted((path / "snapshots").iterdir())
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(IntegrityError):
        _full_read(path, expected)


def test_blobs_swapped_inside_a_pack_are_detected(repo_copy):
    """Two equally long blobs swapped in place: the blob AAD binds each to its own id."""
    path, _ = repo_copy
    repo = open_repo(path)
    files = {b"x1": os.urandom(100), b"x2": os.urandom(100)}  # stored raw: same length
    sid = backup(repo, files)
    nodes = decode_tree(repo.load_blob(BLOB_TREE, repo.load_snapshot(sid).tree))
    b1, b2 = nodes[0]["content"][0], nodes[1]["content"][0]
    l1, l2 = repo.index.lookup(b1, BLOB_DATA), repo.index.lookup(b2, BLOB_DATA)
    assert l1.pack_id == l2.pack_id and l1.length == l2.length
    p = path / pack_name(l1.pack_id.hex())
    data = bytearray(p.read_bytes())
    s1 = bytes(data[l1.offset:l1.offset + l1.length])
    data[l1.offset:l1.offset + l1.length] = data[l2.offset:l2.offset + l2.length]
    data[l2.offset:l2.offset + l2.length] = s1
    p.write_bytes(bytes(data))
    fresh = open_repo(path)
    for b in (b1, b2):
        with pytest.raises(IntegrityError, match="authentication"):
            fresh.load_blob(BLOB_DATA, b)


# ----------------------------------------------------------------------------- no plaintext

MARKERS = [b"alice-secret-diary-2024.txt", b"Projekt-Geheimnis-Verzeichnis",
           b"the quick brown fox jumps over the lazy dog and keeps running",
           b"\x00\xffUNIQUE-BINARY-MARKER\x13\x37", b"snapshot-host-marker", b"/home/alice/private"]


def test_repository_holds_no_plaintext(tmp_path):
    path, cache = tmp_path / "r", tmp_path / "cache"
    repo = init_repo(path, cache_root=str(cache))
    files = {
        MARKERS[0]: MARKERS[2] * 5000,  # compressible: compressed, then encrypted
        MARKERS[1]: b"short " + MARKERS[3],  # tiny: stored raw, then encrypted
        b"big.bin": os.urandom(200_000) + MARKERS[3] + os.urandom(100_000),
    }
    sid = backup(repo, files, paths=[MARKERS[5].decode()], hostname=MARKERS[4].decode())
    open_repo(path, cache_root=str(cache)).list_snapshots()  # fill the cache too
    snap = repo.load_snapshot(sid)
    nodes = decode_tree(repo.load_blob(BLOB_TREE, snap.tree))
    ids = [snap.tree] + [b for n in nodes for b in n["content"]]
    needles = list(MARKERS) + [m[:12] for m in MARKERS] + ids + [i.hex().encode() for i in ids]
    needles += [repo.key.enc_key, repo.key.id_key]
    everything = stored_files(path) | {f"cache/{k}": v for k, v in stored_files(cache).items()}
    assert any(k.startswith("cache/") for k in everything)
    for name, data in everything.items():
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {name}"
            assert needle.lower() not in name.encode().lower(), f"{needle!r} in name {name}"


# ----------------------------------------------------------------------------- crash safety


class CrashAt(BaseException):
    """Stands for the process dying: not an Exception, so nothing handles it as an error."""


class CrashingBackend:
    """Real local storage that 'dies' at the n-th put: before it (the object never appears) or
    after it (the object is durable, the process gone before it could do anything else). Once
    dead it stays dead: every later put fails too, as nothing runs after a crash."""

    def __init__(self, inner: LocalBackend, crash_at: int | None, after: bool = False) -> None:
        self.inner, self.crash_at, self.after = inner, crash_at, after
        self.location = inner.location
        self.puts: list[str] = []
        self.dead = False

    def put(self, name, data, bulk=False):
        if self.dead:
            raise CrashAt(name)
        n = len(self.puts)
        self.puts.append(name)
        if n == self.crash_at and not self.after:
            self.dead = True
            raise CrashAt(name)
        self.inner.put(name, data, bulk)
        if n == self.crash_at and self.after:
            self.dead = True
            raise CrashAt(name)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


def session_files() -> dict[bytes, bytes]:
    """Deterministic, so a killed child's snapshot can be checked by the parent."""
    rnd = random.Random(42)
    return {b"big-a": rnd.randbytes(3 * MiB), b"big-b": rnd.randbytes(3 * MiB),
            b"small": b"tiny file"}


def second_session(path: Path, backend, expected: Expected | None = None,
                   index_batch: int = 1) -> str:
    repo = open_repo(path, backend=backend)
    # 1 MiB blobs and 4 MiB packs: two data packs, a pack for the small file's blob (small
    # data blobs get packs of their own) and a tree pack. index_batch=1: an index file after
    # every pack, so crashes fall between all of them.
    return backup(repo, session_files(), expected, index_batch=index_batch, chunk=MiB)


SESSION_PUTS = 9  # 4 packs, 4 index files, 1 snapshot


def _assert_valid_after_crash(path: Path, expected: Expected) -> None:
    repo = open_repo(path)
    snaps = {s.id for s in repo.list_snapshots()}
    assert set(expected.snapshots) <= snaps  # finished snapshots survive
    extra = snaps - set(expected.snapshots)
    assert len(extra) <= 1
    now = Expected(dict(expected.snapshots))
    for sid in extra:  # the crashed session got as far as its snapshot: it must be whole
        now.snapshots[sid] = session_files()
    read_everything(repo, now)
    # every pack is whole (a readable header): referenced, or mere garbage for prune. A killed
    # writer may leave .tmp- files, which are not objects: the backend never lists them.
    indexed = {p.hex() for p in repo.index.packs()}
    for obj in repo.backend.list("data"):
        read_pack_header(repo.key, repo.backend, obj.name, obj.size)
    assert all((path / pack_name(p)).exists() for p in indexed)
    # and the repository stays usable: a new session works and reads back
    second_session(path, LocalBackend(str(path)), now)
    read_everything(open_repo(path), now)


def test_write_order_of_a_session(repo_copy):
    path, expected = repo_copy
    backend = CrashingBackend(LocalBackend(str(path)), None)
    second_session(path, backend, expected)
    kinds = [n.split("/")[0] for n in backend.puts]
    assert len(kinds) == SESSION_PUTS
    assert kinds.count("data") == 4 and kinds.count("index") == 4
    # each index file after the pack it names, the snapshot last
    assert kinds[-1] == "snapshots"
    assert all(kinds[:i].count("data") > kinds[:i].count("index")
               for i, k in enumerate(kinds) if k == "index")
    read_everything(open_repo(path), expected)


@pytest.mark.parametrize("after", [False, True], ids=["before-put", "after-put"])
@pytest.mark.parametrize("crash_at", range(SESSION_PUTS))
def test_crash_at_any_write_leaves_a_valid_repository(repo_copy, crash_at, after):
    path, expected = repo_copy
    backend = CrashingBackend(LocalBackend(str(path)), crash_at, after)
    with pytest.raises(CrashAt):
        second_session(path, backend)
    assert backend.dead
    _assert_valid_after_crash(path, expected)


def test_crash_between_packs_and_index(repo_copy):
    """All packs of a session are written, no index file: the packs are unreferenced garbage."""
    path, expected = repo_copy
    before_packs = {n for n in stored_files(path) if n.startswith("data/")}

    class NoIndex(CrashingBackend):
        def put(self, name, data, bulk=False):
            if name.startswith("index/"):
                raise CrashAt(name)
            self.inner.put(name, data, bulk)

    with pytest.raises(CrashAt):
        second_session(path, NoIndex(LocalBackend(str(path)), None), index_batch=64)
    garbage = {n for n in stored_files(path) if n.startswith("data/")} - before_packs
    assert len(garbage) == 4, "the session should have written its packs before dying"
    repo = open_repo(path)
    assert not {pack_name(p.hex()) for p in repo.index.packs()} & garbage
    _assert_valid_after_crash(path, expected)


def test_failed_session_does_not_poison_the_in_memory_index(repo_copy):
    """A failed flush leaves packs that no index file names. If the same Repository object is
    used again (a retry in a long-running process), its blobs must be stored again rather than
    deduplicated against packs a later reader cannot find."""
    path, expected = repo_copy
    inner = LocalBackend(str(path))
    state = {"fail_index": True}

    class FailIndexOnce:
        location = inner.location

        def put(self, name, data, bulk=False):
            if name.startswith("index/") and state["fail_index"]:
                state["fail_index"] = False
                raise BackendError("disk full (simulated)", name)
            inner.put(name, data, bulk)

        def __getattr__(self, attr):
            return getattr(inner, attr)

    repo = open_repo(path, backend=FailIndexOnce())
    files = {b"retry-me": os.urandom(100_000)}
    with pytest.raises(BackendError):
        backup(repo, files)
    backup(repo, files, expected)  # the retry: same process, same Repository object
    read_everything(open_repo(path), expected)


CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    import test_repository as t
    from dedupe.backends.local import LocalBackend

    class KillAt(t.CrashingBackend):
        def put(self, name, data, bulk=False):
            n = len(self.puts)
            self.puts.append(name)
            self.inner.put(name, data, bulk)
            if n == self.crash_at:
                os.kill(os.getpid(), signal.SIGKILL)

    t.second_session(t.Path({path!r}), KillAt(LocalBackend({path!r}), {n}))
""")


@pytest.mark.parametrize("n", [0, 3, 6])
def test_killed_process_leaves_a_valid_repository(repo_copy, n):
    path, expected = repo_copy
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(path), n=n)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    _assert_valid_after_crash(path, expected)


# ----------------------------------------------------------------------------- local backend


def test_put_never_overwrites(tmp_path):
    b = LocalBackend(str(tmp_path))
    b.put("config", b"one")
    with pytest.raises(AlreadyExists):
        b.put("config", b"two")
    assert b.get("config") == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["config"]


def test_temporary_files_are_never_listed(tmp_path):
    b = LocalBackend(str(tmp_path))
    b.put("data/ab/" + "ab" * 32, b"pack")
    (tmp_path / "data" / "ab" / ".tmp-123").write_bytes(b"partial")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / ".tmp-456").write_bytes(b"partial")
    assert [o.name for o in b.list("data")] == ["data/ab/" + "ab" * 32]
    assert list(b.list("keys")) == []


FAILING_PUT = textwrap.dedent("""
    import os, resource, signal, sys
    sys.path.insert(0, {root!r})
    from dedupe.backends.local import LocalBackend
    from dedupe.errors import BackendError
    b = LocalBackend({path!r})
    mode = {mode!r}
    if mode == "efbig":
        # the file system refuses the write half-way (like a full disk)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    elif mode == "kill-in-write":
        real = os.write
        def write(fd, data):
            real(fd, bytes(data)[:1000])
            os.kill(os.getpid(), signal.SIGKILL)
        os.write = write
    elif mode == "kill-before-rename":
        os.link = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    try:
        b.put("snapshots/" + "cd" * 32, b"x" * 100000)
    except BackendError as exc:
        print("error:", exc)
        sys.exit(3)
""")


@pytest.mark.parametrize("mode,rc", [("efbig", 3), ("kill-in-write", -signal.SIGKILL),
                                     ("kill-before-rename", -signal.SIGKILL)])
def test_interrupted_put_leaves_no_object(tmp_path, mode, rc):
    code = FAILING_PUT.format(root=str(ROOT), path=str(tmp_path), mode=mode)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == rc, proc.stderr.decode()[-2000:]
    b = LocalBackend(str(tmp_path))
    assert list(b.list("snapshots")) == []
    with pytest.raises(NotFound):
        b.get("snapshots/" + "cd" * 32)
    if mode == "efbig":
        # an error the process survived must not leave its temporary file behind
        assert [p.name for p in (tmp_path / "snapshots").iterdir()] == []
    # the name is still free: a retry works
    b.put("snapshots/" + "cd" * 32, b"whole")
    assert b.get("snapshots/" + "cd" * 32) == b"whole"


# ----------------------------------------------------------------------------- cache


def test_cache_is_filled_and_used(repo_copy, tmp_path):
    path, expected = repo_copy
    cache = tmp_path / "cache"
    repo = open_repo(path, cache_root=str(cache))
    read_everything(repo, expected)
    cached = stored_files(cache / repo.config.id)
    kinds = {n.split("/")[0] for n in cached}
    assert kinds == {"index", "snapshots", "data"}  # data: tree packs only
    assert all(storage_id(v) == k.rsplit("/", 1)[1] for k, v in cached.items())
    tree_packs = [p for p in _files_of_kind(path, "tree-pack")]
    assert {f"data/{p.parent.name}/{p.name}" for p in tree_packs} == \
        {n for n in cached if n.startswith("data/")}
    # Cached objects are used (verified against their names, not re-read): damage to the
    # repository's copy of a snapshot goes unnoticed while the cache holds a good copy.
    for name in cached:
        if name.startswith("snapshots/"):
            (path / name).write_bytes(b"damaged in the repository")
    read_everything(open_repo(path, cache_root=str(cache)), expected)


@pytest.mark.parametrize("kind", ["index", "snapshots", "data"])
def test_damaged_cache_entry_is_detected_and_refetched(repo_copy, tmp_path, kind):
    path, expected = repo_copy
    cache = tmp_path / "cache"
    repo = open_repo(path, cache_root=str(cache))
    read_everything(repo, expected)
    root = cache / repo.config.id
    victims = [p for p in (root / kind).rglob("*") if p.is_file()]
    assert victims
    for v in victims:
        data = bytearray(v.read_bytes())
        data[30 if kind == "data" else len(data) // 2] ^= 1  # (30: inside a pack's first blob)
        v.write_bytes(bytes(data))
    read_everything(open_repo(path, cache_root=str(cache)), expected)
    for v in victims:  # refetched and verified
        assert storage_id(v.read_bytes()) == v.name


def test_cached_tree_packs_serve_trees(repo_copy, tmp_path):
    """Trees come from the cached pack (by range, each blob authenticated); the repository's
    copy is not needed while the cache holds a good one, and a bad cached blob is refetched."""
    path, expected = repo_copy
    cache = tmp_path / "cache"
    read_everything(open_repo(path, cache_root=str(cache)), expected)
    tree_packs = _files_of_kind(path, "tree-pack")
    aside = tmp_path / "aside"
    aside.mkdir()
    for p in tree_packs:
        p.rename(aside / p.name)
    repo = open_repo(path, cache_root=str(cache))
    for snap in repo.list_snapshots():  # every tree loads with the packs gone from the repository
        decode_tree(repo.load_blob(BLOB_TREE, snap.tree))
    for p in tree_packs:
        (aside / p.name).rename(p)
    # damage every blob of every cached tree pack: each load must refetch, never return junk
    root = cache / repo.config.id
    for p in tree_packs:
        cached = root / "data" / p.parent.name / p.name
        entries = read_pack_header(repo.key, repo.backend, f"data/{p.parent.name}/{p.name}",
                                   p.stat().st_size)
        data = bytearray(cached.read_bytes())
        for e in entries:
            data[e.offset + e.length // 2] ^= 0x40
        cached.write_bytes(bytes(data))
    read_everything(open_repo(path, cache_root=str(cache)), expected)
    for p in tree_packs:
        assert (root / "data" / p.parent.name / p.name).read_bytes() == p.read_bytes()


def test_cached_tree_pack_damaged_while_open_is_refetched(repo_copy, tmp_path):
    """The cache keeps the last tree pack it read from open. Damage written into that very
    file (same inode) is caught by the blob's tag, and the refetched copy is what is read
    next, not the damaged file still held open."""
    path, expected = repo_copy
    cache = tmp_path / "cache"
    repo = open_repo(path, cache_root=str(cache))
    read_everything(repo, expected)
    root = cache / repo.config.id
    for p in _files_of_kind(path, "tree-pack"):
        cached = root / "data" / p.parent.name / p.name
        with open(cached, "r+b") as f:  # in place: the kept descriptor sees it
            size = len(f.read())
            f.seek(0)
            f.write(bytes(size))
    read_everything(repo, expected)
    read_everything(repo, expected)
    for p in _files_of_kind(path, "tree-pack"):
        assert (root / "data" / p.parent.name / p.name).read_bytes() == p.read_bytes()
    repo.close()


def test_cache_ranged_reads_follow_replacement_and_removal(tmp_path):
    from dedupe.cache import Cache

    cache = Cache(str(tmp_path / "cache"), "ab" * 32)
    a, b = (f"data/{c * 2}/{c * 64}" for c in "cd")
    cache.put(a, b"first version")
    cache.put(b, b"other pack")
    assert cache.get_range(a, 0, 5) == b"first"
    cache.put(a, b"second version")  # a new file under the same name
    assert cache.get_range(a, 0, 6) == b"second"
    assert cache.get_range(b, 6, 4) == b"pack"
    assert cache.get_range(a, 7, 7) == b"version"
    cache.remove(a)
    assert cache.get_range(a, 0, 6) is None
    cache.put(a, b"third")
    assert cache.get_range(a, 0, 5) == b"third"
    cache.close()
    assert cache.get_range(a, 0, 5) == b"third"  # reopened after a close
    cache.close()


def test_cache_entry_of_deleted_object_is_not_used(repo_copy, tmp_path):
    path, expected = repo_copy
    cache = tmp_path / "cache"
    repo = open_repo(path, cache_root=str(cache))
    read_everything(repo, expected)
    sid = next(iter(expected.snapshots))
    repo.delete_snapshot(sid)
    fresh = open_repo(path, cache_root=str(cache))
    assert sid not in {s.id for s in fresh.list_snapshots()}
    with pytest.raises(SnapshotNotFound):
        fresh.find_snapshot(sid)


def test_no_cache_writes_nothing_to_the_cache(repo_copy, tmp_path, monkeypatch):
    path, expected = repo_copy
    monkeypatch.setenv("SNAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    repo = Repository.open(LocalBackend(str(path)), PW, no_cache=True)
    assert repo.cache is None
    read_everything(repo, expected)
    backup(repo, {b"new": b"data " * 1000})
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_cache_location_from_environment(repo_copy, tmp_path, monkeypatch):
    path, expected = repo_copy
    monkeypatch.setenv("SNAP_CACHE_DIR", str(tmp_path / "envcache"))
    repo = Repository.open(LocalBackend(str(path)), PW)
    read_everything(repo, expected)
    assert (tmp_path / "envcache" / repo.config.id / "index").is_dir()
    monkeypatch.delenv("SNAP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    repo = Repository.open(LocalBackend(str(path)), PW)
    read_everything(repo, expected)
    assert (tmp_path / "xdg" / "snap" / repo.config.id / "snapshots").is_dir()


# ----------------------------------------------------------------------------- hostile names


def test_cache_never_touches_paths_outside_itself(tmp_path):
    from dedupe.cache import Cache

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache = Cache(str(tmp_path / "cache"), "ab" * 32)
    (tmp_path / "cache" / ("ab" * 32) / "snapshots").mkdir(parents=True)
    for name in ["snapshots/../../../victim.txt", "snapshots/../../../" + storage_id(b"x"),
                 "/etc/passwd", "snapshots//x", "snapshots/./x", "../victim.txt"]:
        assert cache.get(name) is None
        assert cache.get_range(name, 0, 3) is None
        assert not cache.has(name)
        cache.put(name, b"x")
        cache.remove(name)
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "victim.txt"]


@pytest.mark.parametrize("namespace", ["snapshots", "index", "keys"])
def test_hostile_names_in_a_bucket_listing_never_reach_local_files(moto_server, tmp_path,
                                                                    namespace):
    """S3 keys are free-form: a bucket (untrusted storage) can list 'snapshots/../../x'. snap
    must neither read, write nor delete a local file through such a name (it did: the cache
    dropped 'damaged' entries, deleting any file the user could write)."""
    from dedupe.backends import open_backend

    bucket = moto_server.new_bucket()
    url = moto_server.url(bucket)
    cache = tmp_path / "cache"
    repo = Repository.init(open_backend(url), PW, small_config(), kdf=KDF, cache_root=str(cache))
    expected = Expected()
    backup(repo, {b"f": b"some data " * 100}, expected)
    read_everything(open_repo(None, cache_root=str(cache), backend=open_backend(url)), expected)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = storage_id(b"planted")
    s3 = moto_server.client()
    # cache/<repo id>/<namespace>/../../.. is tmp_path
    for key in [f"repo/{namespace}/../../../victim.txt", f"repo/{namespace}/../../../{planted}"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"planted")
    before = sorted(p.name for p in tmp_path.iterdir())
    if namespace == "keys":  # foreign key names are skipped like damaged key files
        fresh = open_repo(None, cache_root=str(cache), backend=open_backend(url))
        assert len(fresh.list_keys()) == 1
    else:
        fresh = open_repo(None, cache_root=str(cache), backend=open_backend(url))
        with pytest.raises(IntegrityError, match="not a snap object name"):
            if namespace == "index":
                fresh.index  # noqa: B018
            else:
                fresh.list_snapshots()
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
