"""Restore never writes outside its target: with --include, the directories above a selected
file are not restored as entries of their own, and one of them may already exist in the target
as a symlink (left by an earlier restore, or planted). The restorer must replace it with a
real directory (or, with --overwrite never, refuse that entry), not follow it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupe.archiver import Archiver
from dedupe.backends.local import LocalBackend
from dedupe.crypto import KdfParams
from dedupe.filelists import collect_patterns
from dedupe.repository import Repository
from dedupe.restorer import Restorer, RestoreOptions


@pytest.fixture
def snapshot(tmp_path):
    src = tmp_path / "src"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "sub" / "f.txt").write_bytes(b"selected\n")
    (src / "d" / "other.txt").write_bytes(b"not selected\n")
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", kdf=KdfParams(1, 8 << 20),
                           cache_root=str(tmp_path / "cache"))
    return repo, Archiver(repo).backup([str(src)]).snapshot, src


def plant(target: Path, src: Path, outside: Path, level: str) -> Path:
    """Make ``<target>/<src>/<level>`` a symlink to ``outside``; return the link."""
    link = target / str(src).lstrip("/") / level
    link.parent.mkdir(parents=True, exist_ok=True)
    outside.mkdir(exist_ok=True)
    (outside / "sub").mkdir(exist_ok=True)
    os.symlink(outside, link)
    return link


@pytest.mark.parametrize("level", ["d", "d/sub"])
def test_include_restore_replaces_a_planted_symlink(snapshot, tmp_path, level):
    repo, snap, src = snapshot
    target, outside = tmp_path / "target", tmp_path / "outside"
    link = plant(target, src, outside, level)
    includes = [collect_patterns(["**/f.txt"], (), (), ())]
    restorer = Restorer(repo, RestoreOptions(includes=includes))
    restorer.restore(snap, str(target))
    assert restorer.warnings == []
    assert sorted(p.name for p in outside.rglob("*")) == ["sub"]  # nothing written outside
    assert not link.is_symlink() and link.is_dir()
    restored = target / str(src).lstrip("/") / "d" / "sub" / "f.txt"
    assert restored.read_bytes() == b"selected\n"
    assert not (target / str(src).lstrip("/") / "d" / "other.txt").exists()


def test_overwrite_never_refuses_instead_of_following(snapshot, tmp_path):
    repo, snap, src = snapshot
    target, outside = tmp_path / "target", tmp_path / "outside"
    link = plant(target, src, outside, "d")
    includes = [collect_patterns(["**/f.txt"], (), (), ())]
    restorer = Restorer(repo, RestoreOptions(includes=includes, overwrite="never"))
    restorer.restore(snap, str(target))
    assert any("not a directory" in w for w in restorer.warnings), restorer.warnings
    assert sorted(p.name for p in outside.rglob("*")) == ["sub"]
    assert link.is_symlink()  # left alone, as --overwrite never promises


def test_restoring_over_a_file_leaves_none_of_its_extended_attributes(tmp_path):
    """An old file at the destination is replaced, not truncated: a truncated file would keep
    its xattrs (hypothesis found it: a file renamed onto a deleted one's name)."""
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_bytes(b"old")
    try:
        os.setxattr(f, "user.old", b"1")
    except OSError:
        pytest.skip("no user xattrs on this file system")
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", kdf=KdfParams(1, 8 << 20),
                           cache_root=str(tmp_path / "cache"))
    first = Archiver(repo).backup([str(src)]).snapshot
    f.unlink()
    f.write_bytes(b"new, no xattrs")
    second = Archiver(repo).backup([str(src)]).snapshot
    target = tmp_path / "target"
    Restorer(repo).restore(first, str(target))
    out = target / str(f).lstrip("/")
    assert os.getxattr(out, "user.old") == b"1"
    restorer = Restorer(repo)
    restorer.restore(second, str(target))
    assert restorer.warnings == []
    assert out.read_bytes() == b"new, no xattrs"
    assert os.listxattr(out) == []


@pytest.mark.parametrize("lost", ["first", "all"])
def test_file_with_lost_blobs_is_still_restored_at_full_size(tmp_path, lost):
    """Files made only of blobs are created by their first blob written (in the thread
    pool). If a pack is gone, the file must still exist at its full size, with the blobs
    that could be read in place and a warning naming it, as when files were created first."""
    from dedupe.config import Config
    from dedupe.packs import BLOB_DATA
    from dedupe.backends.base import pack_name
    from dedupe.walker import find_node

    src = tmp_path / "src"
    src.mkdir()
    blocks = [bytes([65 + i]) * 50_000 + os.urandom(30_000) for i in range(6)]
    (src / "big.bin").write_bytes(b"".join(blocks))
    repo_dir = tmp_path / "repo"
    repo = Repository.init(LocalBackend(str(repo_dir)), b"pw", Config(chunk_min=4096,
                           chunk_avg=16384, chunk_max=65536), kdf=KdfParams(1, 8 << 20),
                           cache_root=str(tmp_path / "cache"))
    saver = repo.new_saver
    repo.new_saver = lambda **kw: _one_blob_packs(saver(**kw))
    snap = Archiver(repo).backup([str(src)]).snapshot
    content = find_node(repo, snap.tree, str(src / "big.bin"))["content"]
    assert len(content) >= 3
    victims = content[:1] if lost == "first" else content
    gone = {repo.index.lookup(blob, BLOB_DATA).pack_id for blob in victims}
    for pack_id in gone:
        (repo_dir / pack_name(pack_id.hex())).unlink()
    warnings = []
    Restorer(repo, on_warning=warnings.append).restore(snap, str(tmp_path / "t"))
    out = tmp_path / "t" / str(src).lstrip("/") / "big.bin"
    original = (src / "big.bin").read_bytes()
    assert any("big.bin" in w for w in warnings)
    # Blobs from the packs still there are in place, the lost ones are zeros. (A pack may
    # hold several of them: compressed runs of one letter come out far below a pack's size.)
    expected, offset = bytearray(), 0
    for blob in content:
        loc = repo.index.lookup(blob, BLOB_DATA)
        piece = original[offset:offset + loc.raw_length]
        expected += bytes(len(piece)) if loc.pack_id in gone else piece
        offset += loc.raw_length
    assert offset == len(original) == out.stat().st_size
    assert out.read_bytes() == bytes(expected)
    if lost == "first":
        assert len(gone) == 1 and bytes(expected) != bytes(len(original))


def _one_blob_packs(saver):
    saver.pack_size = 4096  # a pack closes after any incompressible blob
    return saver


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root (CI runs as root)")


@pytest.fixture
def owned_snapshot(tmp_path):
    """A tree whose entries belong to root and to two other ids."""
    src = tmp_path / "src"
    (src / "mine").mkdir(parents=True)
    (src / "mine" / "f").write_bytes(b"root's\n")
    (src / "theirs").mkdir()
    (src / "theirs" / "g").write_bytes(b"1234's\n")
    os.symlink("g", src / "theirs" / "link")
    for p in (src / "theirs", src / "theirs" / "g"):
        os.chown(p, 1234, 5678)
    os.lchown(src / "theirs" / "link", 1234, 5678)
    os.chown(src / "mine" / "f", 0, 5678)  # our uid, another gid
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", kdf=KdfParams(1, 8 << 20),
                           cache_root=str(tmp_path / "cache"))
    return repo, Archiver(repo).backup([str(src)]).snapshot, src


def owners(top: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(top)): (p.lstat().st_uid, p.lstat().st_gid) for p in top.rglob("*")}


@needs_root
@pytest.mark.parametrize("target_state", ["missing", "empty", "setgid", "not empty"])
def test_restored_owners_whatever_the_target(owned_snapshot, tmp_path, target_state):
    """An entry made in a fresh directory skips the owner check only when our ids are the
    node's; a set-group-ID target (its group is inherited) or a target with files in it
    never counts as fresh."""
    repo, snap, src = owned_snapshot
    target = tmp_path / "target"
    if target_state != "missing":
        target.mkdir()
    if target_state == "setgid":
        os.chown(target, 0, 4321)
        os.chmod(target, 0o2775)
    if target_state == "not empty":
        (target / "unrelated").write_bytes(b"x")
    restorer = Restorer(repo, RestoreOptions())
    restorer.restore(snap, str(target))
    assert restorer.warnings == []
    top = target / str(src).lstrip("/")
    assert owners(top) == owners(src)


def test_restore_into_a_fresh_directory_fails_an_entry_rather_than_follow_a_new_symlink(
        snapshot, tmp_path, monkeypatch):
    """In a directory the restore made, nothing is checked before an entry is created; if
    something appears there meanwhile, creating the entry fails (never follows it)."""
    repo, snap, src = snapshot
    target, outside = tmp_path / "target", tmp_path / "outside"
    outside.mkdir()
    restorer = Restorer(repo, RestoreOptions())
    made = restorer._create

    def create(dest, node):
        made(dest, node)
        if dest.endswith(b"/d"):  # planted right after the restore made d/
            os.symlink(outside, os.path.join(dest, b"sub"))
    monkeypatch.setattr(restorer, "_create", create)
    restorer.restore(snap, str(target))
    assert any("sub" in w for w in restorer.warnings)
    assert list(outside.iterdir()) == []  # nothing written through the planted link
    d = target / str(src).lstrip("/") / "d"
    assert (d / "other.txt").read_bytes() == b"not selected\n"


def test_streamed_pack_reads_survive_connections_cut_midway(tmp_path, monkeypatch):
    """Remote restores read each pack in one request decoded blob by blob as it arrives; a
    body cut off midway (and failed openings) must still give an exact restore: the rest of
    the pack is read with a retried ranged get."""
    import random

    from dedupe import restorefill
    from dedupe.backends import FaultInjectingBackend, RetryBackend
    from dedupe.config import Config
    from helpers import tree_digest

    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    for i in range(30):
        (src / f"f{i}").write_bytes(rng.randbytes(rng.randrange(1, 300_000)))
    config = Config(chunk_min=16 * 1024, chunk_avg=64 * 1024, chunk_max=256 * 1024,
                    pack_size=4 * 1024 * 1024)
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", config=config,
                           kdf=KdfParams(1, 8 << 20), no_cache=True)
    snap = Archiver(repo).backup([str(src)]).snapshot
    faulty = FaultInjectingBackend(LocalBackend(str(tmp_path / "repo")), error_rate=0.4,
                                   seed=11, ops=["get"])
    backend = RetryBackend(faulty, attempts=30, base_delay=0.0001, max_delay=0.001, seed=2)
    reopened = Repository.open(backend, b"pw", no_cache=True)
    monkeypatch.setattr(restorefill, "_STREAM_ABOVE", 0)  # every range streams
    read_ranges = []
    original = restorefill.PackFiller._fill_group

    def fill_group(self, name, group, blobs):
        read_ranges.append(len(group))
        original(self, name, group, blobs)
    monkeypatch.setattr(restorefill.PackFiller, "_fill_group", fill_group)
    restorer = Restorer(reopened, RestoreOptions(max_read=64 * 1024 * 1024, workers=2))
    restorer.restore(snap, str(tmp_path / "target"))
    assert restorer.warnings == []
    assert tree_digest(str(tmp_path / "target" / str(src).lstrip("/"))) == tree_digest(str(src))
    assert faulty.injected["get:midway"] > 0 and read_ranges  # the fallback did run



MODES = [0o644, 0o664, 0o755, 0o600, 0o640, 0o444, 0o700, 0o666, 0o4755, 0o2750]


@pytest.fixture
def moded_snapshot(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for mode in MODES:
        for content in (b"", b"data"):  # empty files are made in the plan, others by a blob
            f = src / f"{mode:o}-{len(content)}"
            f.write_bytes(content)
            os.chmod(f, mode)
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", kdf=KdfParams(1, 8 << 20),
                           cache_root=str(tmp_path / "cache"))
    return repo, Archiver(repo).backup([str(src)]).snapshot, src


def modes(top: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o7777 for p in top.iterdir()}


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o000, 0o277])
def test_restored_file_modes_whatever_the_umask(moded_snapshot, tmp_path, umask):
    """A file is created with its final mode when the umask keeps it (no chmod later); the
    others are created 0o600 and chmod'ed. Either way it ends with the snapshot's mode."""
    repo, snap, src = moded_snapshot
    old = os.umask(umask)
    try:
        restorer = Restorer(repo, RestoreOptions())
        restorer.restore(snap, str(tmp_path / "target"))
    finally:
        os.umask(old)
    assert restorer.warnings == []
    assert modes(tmp_path / "target" / str(src).lstrip("/")) == modes(src)


def test_restored_file_modes_under_a_default_acl(moded_snapshot, tmp_path):
    """A default ACL on the target, not the umask, masks the modes of new files: the modes
    must still come out as in the snapshot."""
    import errno
    import struct

    repo, snap, src = moded_snapshot
    target = tmp_path / "target"
    target.mkdir()
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                          for tag, perm in ((0x01, 7), (0x04, 7), (0x20, 0)))
    try:
        os.setxattr(target, "system.posix_acl_default", acl)  # u::rwx g::rwx o::---
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip("this file system has no POSIX ACLs")
        raise
    restorer = Restorer(repo, RestoreOptions())
    restorer.restore(snap, str(target))
    assert restorer.warnings == []
    assert modes(target / str(src).lstrip("/")) == modes(src)


@pytest.mark.parametrize("fallocate", ["offered", "refused"])
def test_holes_come_back_as_allocated_zeros_without_sparse(tmp_path, monkeypatch, fallocate):
    """Without --sparse a file's holes are allocated on disk: by fallocate where it works,
    else by writing zeros."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "disk.img", "wb") as f:  # hole, data, hole, data, hole
        f.truncate(6 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(300_000))
        f.seek(4 << 20)
        f.write(b"tail" * 1000)
    assert os.lstat(src / "disk.img").st_blocks * 512 < 2 << 20  # the source has holes
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", kdf=KdfParams(1, 8 << 20),
                           cache_root=str(tmp_path / "cache"))
    snap = Archiver(repo).backup([str(src)]).snapshot
    if fallocate == "refused":
        def refuse(*args):
            raise OSError(95, "Operation not supported")
        monkeypatch.setattr(os, "posix_fallocate", refuse)
    r = Restorer(repo)
    r.restore(snap, str(tmp_path / "out"))
    out = tmp_path / "out" / str(src).lstrip("/") / "disk.img"
    assert r.warnings == []
    assert out.read_bytes() == (src / "disk.img").read_bytes()
    assert os.lstat(out).st_blocks * 512 >= 6 << 20
