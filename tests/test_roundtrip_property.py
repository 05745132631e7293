"""Property tests: random trees survive backup and restore with contents and every piece of
metadata, across edits and incremental backups (issue 3, "Done when").

Library level, real local repositories, tiny chunk sizes (512/1024/4096) so that file sizes
around the chunk boundaries are cheap to generate. Runs as root: it chowns to arbitrary ids,
makes device nodes and sets setuid/setgid/sticky bits.

The reference for every comparison is the source tree as ``lstat`` saw it *before* the backup
that should have captured it, never the snapshot: a bug that stores a wrong value and restores
that same wrong value must fail. Two kernel details shape the capture:

- reading a symlink (readlink) may update its atime (relatime), so the capture puts the
  symlink's times back after reading its target; the backup itself stats before readlink;
- regular files are read with O_NOATIME (as the archiver does), so reading leaves atime alone.

Directory atime is deliberately not stored (listing a directory changes it), so it is not
compared; everything else is: type, mode, uid, gid, size, mtime and atime in ns, symlink
target, rdev, xattrs, link count and hard-link groups, and the content bytes.

``SNAP_PROP_EXAMPLES=500`` runs the tree property longer (the default keeps the file ~10 s).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import tempfile
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedupe.archiver import Archiver, BackupOptions
from dedupe.backends.local import LocalBackend
from dedupe.config import Config
from dedupe.crypto import KdfParams
from dedupe.repository import Repository
from dedupe.restorer import Restorer, RestoreOptions
from dedupe.tree import group_name, user_name
from dedupe.walker import walk

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, setuid bits)")

PW = b"roundtrip-property-pw"
FAST_KDF = KdfParams(1, 8 << 20)
CMIN, CAVG, CMAX = 512, 1024, 4096
CHUNKS = Config(chunk_min=CMIN, chunk_avg=CAVG, chunk_max=CMAX)
O_NOATIME = getattr(os, "O_NOATIME", 0)

# Sizes at and around every chunk-size boundary, plus multi-chunk files.
BOUNDARY_SIZES = [0, 1, CMIN - 1, CMIN, CMIN + 1, CAVG - 1, CAVG, CAVG + 1, CMAX - 1, CMAX,
                  CMAX + 1, 2 * CMAX, 3 * CMAX + 7, 25_000]
IDS = [0, 1, 2, 1000, 65534, 65535, 123_456, 2**31 - 2]
NS_MIN, NS_MAX = 10**9, 4 * 10**18  # 1970..2096: inside ext4's range, ns precision

# ------------------------------------------------------------------------------ strategies

_text_names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                      min_size=1, max_size=10).map(lambda s: s.encode())
_raw_names = st.binary(min_size=1, max_size=10).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"-"))
_not_utf8 = st.sampled_from([b"caf\xe9", b"\xff\xfe", b"\x80x", b"a\xc3", b"\xed\xa0\x80z"])
NAMES = st.one_of(_text_names, _raw_names, _not_utf8).filter(lambda b: b not in (b".", b".."))

times = st.integers(NS_MIN, NS_MAX)
modes = st.one_of(st.integers(0, 0o7777), st.sampled_from([0o644, 0o755, 0o4755, 0o2755, 0o1777,
                                                            0o6711, 0o000, 0o7777]))
xattr_sets = st.dictionaries(
    st.text("abcxyz._-0189", min_size=1, max_size=12).map(lambda s: "user." + s),
    st.binary(max_size=64), max_size=3)
sizes = st.one_of(st.sampled_from(BOUNDARY_SIZES), st.integers(0, 3 * CMAX))


@dataclass
class Meta:
    mode: int
    uid: int
    gid: int
    atime: int
    mtime: int
    xattrs: dict = field(default_factory=dict)


@st.composite
def metas(draw, with_xattrs: bool = True) -> Meta:
    return Meta(draw(modes), draw(st.sampled_from(IDS)), draw(st.sampled_from(IDS)), draw(times),
                draw(times), draw(xattr_sets) if with_xattrs else {})


@st.composite
def contents(draw) -> tuple:
    """("data", size, kind, seed) or ("sparse", size, [(offset, length)]) for a regular file."""
    if draw(st.integers(0, 9)) == 0:
        size = draw(st.integers(CMIN + 1, 96 * 1024))
        extents = draw(st.lists(st.tuples(st.integers(0, size // 4096), st.integers(1, 3 * CMAX)),
                                max_size=3))
        return ("sparse", size, [(blk * 4096, n) for blk, n in extents])
    return ("data", draw(sizes), draw(st.sampled_from(["random", "zeros", "pattern"])),
            draw(st.integers(0, 2**32)))


@st.composite
def entries(draw, depth: int = 0) -> dict:
    """A directory's entries: name -> (kind, spec, Meta)."""
    count = draw(st.integers(0, 7 if depth == 0 else 4))
    names = draw(st.lists(NAMES, min_size=count, max_size=count, unique=True))
    kinds = ["file"] * 4 + ["symlink", "fifo", "chardev", "blockdev", "hardlink"]
    if depth < 3:
        kinds += ["dir", "dir"]
    if depth == 0:
        kinds.append("deep")
    out = {}
    for name in names:
        kind = draw(st.sampled_from(kinds))
        if kind == "file":
            spec = draw(contents())
        elif kind == "dir":
            spec = draw(entries(depth + 1))
        elif kind == "deep":  # a long chain of directories ending in a file
            spec = (draw(st.integers(8, 40)), draw(contents()))
        elif kind == "symlink":
            spec = draw(st.one_of(
                st.sampled_from([b"/", b"/nonexistent/dangling", b"..", b".", b"a/../../b"]),
                NAMES, st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\0", b"x"))))
        elif kind in ("chardev", "blockdev"):
            spec = os.makedev(draw(st.integers(0, 4095)), draw(st.integers(0, 2**20 - 1)))
        elif kind == "hardlink":
            spec = draw(st.integers(0, 1000))  # which earlier file to link to
        else:
            spec = None
        meta = draw(metas(with_xattrs=kind in ("file", "dir", "deep", "hardlink")))
        out[name] = (kind, spec, meta)
    return out


# ------------------------------------------------------------------------------ building


def write_content(path: bytes, spec: tuple) -> None:
    if spec[0] == "sparse":
        _, size, extents = spec
        rng = random.Random(size)
        with open(path, "wb") as f:
            for offset, length in extents:
                f.seek(offset)
                f.write(rng.randbytes(min(length, max(0, size - offset))))
            f.truncate(size)
        return
    _, size, kind, seed = spec
    if kind == "random":
        data = random.Random(seed).randbytes(size)
    elif kind == "zeros":
        data = bytes(size)
    else:  # repetitive: compresses, and identical chunks deduplicate within the file
        data = (b"snap-pattern-%d;" % (seed % 7) * (size // 14 + 1))[:size]
    with open(path, "wb") as f:
        f.write(data)


def apply_meta(path: bytes, meta: Meta, is_link: bool) -> None:
    os.lchown(path, meta.uid, meta.gid)  # before chmod: chown clears setuid/setgid
    if not is_link:
        os.chmod(path, meta.mode)
        for name, value in meta.xattrs.items():
            os.setxattr(path, name, value)
    os.utime(path, ns=(meta.atime, meta.mtime), follow_symlinks=False)


def build(top: bytes, tree: dict, top_meta: Meta) -> None:
    """Create ``tree`` under the existing directory ``top``; metadata last, deepest first
    (creating an entry changes its directory's mtime)."""
    created: list[tuple[bytes, Meta, bool]] = []
    files: list[bytes] = []

    def make(dirpath: bytes, items: dict) -> None:
        for name, (kind, spec, meta) in items.items():
            path = os.path.join(dirpath, name)
            if kind == "file" or (kind == "hardlink" and not files):
                write_content(path, spec if kind == "file" else ("data", 100, "random", spec))
                files.append(path)
            elif kind == "hardlink":
                os.link(files[spec % len(files)], path)
            elif kind == "dir":
                os.mkdir(path)
                created.append((path, meta, False))
                make(path, spec)
                continue
            elif kind == "deep":
                depth, content = spec
                chain = path
                os.mkdir(chain)
                for i in range(depth):
                    chain = os.path.join(chain, b"d%d" % i)
                    os.mkdir(chain)
                write_content(os.path.join(chain, b"leaf"), content)
                files.append(os.path.join(chain, b"leaf"))
            elif kind == "symlink":
                os.symlink(spec, path)
            elif kind == "fifo":
                os.mkfifo(path)
            else:
                os.mknod(path, (stat.S_IFCHR if kind == "chardev" else stat.S_IFBLK) | 0o600, spec)
            created.append((path, meta, kind == "symlink"))

    make(top, tree)
    for path, meta, is_link in reversed(created):
        apply_meta(path, meta, is_link)
    apply_meta(top, top_meta, False)


# ------------------------------------------------------------------------------ capturing


def _read(path: bytes) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | O_NOATIME)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def capture(top: bytes) -> tuple[dict, dict]:
    """(state, blocks): every path below and including ``top`` (relative, b"" for top) with
    its comparable metadata, and the allocated blocks of each regular file."""
    stats: dict[bytes, os.stat_result] = {}

    def scan(path: bytes, rel: bytes) -> None:
        st = os.lstat(path)
        stats[rel] = st
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                scan(os.path.join(path, name), os.path.join(rel, name) if rel else name)

    scan(top, b"")  # every lstat first: nothing below changes an atime before it is seen
    state, blocks = {}, {}
    for rel, info in stats.items():
        path = os.path.join(top, rel) if rel else top
        kind = stat.S_IFMT(info.st_mode)
        entry = {"type": kind, "uid": info.st_uid, "gid": info.st_gid, "mtime": info.st_mtime_ns}
        if kind != stat.S_IFDIR:
            entry["atime"] = info.st_atime_ns
        if kind == stat.S_IFLNK:
            entry["target"] = os.readlink(path)
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
        else:
            entry["mode"] = stat.S_IMODE(info.st_mode)
            entry["xattrs"] = {n: os.getxattr(path, n, follow_symlinks=False)
                               for n in os.listxattr(path, follow_symlinks=False)}
        if kind == stat.S_IFREG:
            data = _read(path)
            entry.update(size=info.st_size, nlink=info.st_nlink, sha=hashlib.sha256(data).hexdigest())
            assert len(data) == info.st_size
            blocks[rel] = info.st_blocks
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            entry["rdev"] = info.st_rdev
        state[rel] = entry
    return state, blocks


def link_groups(top: bytes) -> set[frozenset]:
    """Sets of paths sharing an inode (regular files with more than one link). Uses lstat
    only: os.walk would follow symlinks to classify them, which updates their atime."""
    by_ino: dict[int, set] = {}

    def scan(path: bytes, rel: bytes) -> None:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            for name in os.listdir(path):
                scan(os.path.join(path, name), os.path.join(rel, name) if rel else name)
        elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            by_ino.setdefault(st.st_ino, set()).add(rel)

    scan(top, b"")
    return {frozenset(v) for v in by_ino.values()}


def assert_same(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys(), (
        sorted(expected.keys() - actual.keys())[:5], sorted(actual.keys() - expected.keys())[:5])
    for rel in expected:
        assert expected[rel] == actual[rel], (rel, expected[rel], actual[rel])


# ------------------------------------------------------------------------------ repository


class Scratch:
    """A temporary source tree, repository and restore area for one hypothesis example."""

    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="snap-prop-").encode()
        self.src = os.path.join(self.base, b"src")
        os.mkdir(self.src)
        self.repo_dir = os.path.join(self.base, b"repo").decode()
        self.cache = os.path.join(self.base, b"cache").decode()
        self.repo = Repository.init(LocalBackend(self.repo_dir), PW, CHUNKS, kdf=FAST_KDF,
                                    cache_root=self.cache)
        self.restores = 0

    def backup(self, **options):
        options.setdefault("with_atime", True)  # every piece of metadata round-trips
        result = Archiver(self.repo, BackupOptions(**options)).backup([os.fsdecode(self.src)])
        assert result.warnings == []
        return result

    def restore(self, snap, sparse: bool, target: bytes | None = None,
                expect_warnings: bool = False) -> bytes | tuple[bytes, list[str]]:
        """Restore with a freshly opened repository (everything read back from storage)."""
        if target is None:
            self.restores += 1
            target = os.path.join(self.base, b"restore%d" % self.restores)
        repo = Repository.open(LocalBackend(self.repo_dir), PW, cache_root=self.cache)
        restorer = Restorer(repo, RestoreOptions(sparse=sparse))
        restorer.restore(snap, os.fsdecode(target))
        out = target + self.src  # absolute backup paths are recreated under the target
        if expect_warnings:
            return out, restorer.warnings
        assert restorer.warnings == []
        return out

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def check_restore(scratch: Scratch, snap, expected: dict, groups: set, src_blocks: dict,
                  sparse: bool) -> None:
    out = scratch.restore(snap, sparse)
    actual, blocks = capture(out)
    assert_same(expected, actual)
    assert link_groups(out) == groups
    for rel, n in src_blocks.items():
        size = expected[rel]["size"]
        if size > CMIN and n * 512 < size:  # a sparse source file (the archiver saw holes)
            if sparse:
                assert blocks[rel] * 512 < size, (rel, "holes not restored as holes")
                assert blocks[rel] <= n + 8, (rel, n, blocks[rel])
            else:
                assert blocks[rel] * 512 >= size, (rel, "zeros expected without --sparse")


def check_restore_over(scratch: Scratch, snap2, v1: dict, v2: dict, groups2: set) -> None:
    """Restore snapshot 2 over the restore of snapshot 1 (overwrite always): every path of
    snapshot 2 ends up exactly as in snapshot 2. Leftovers of snapshot 1 may stay (there is
    no --delete); a non-empty directory is never removed to make room (as restic), and the
    warning names it."""
    target = os.path.join(scratch.base, b"restore1")
    out, warnings = scratch.restore(snap2, False, target=target, expect_warnings=True)
    blocked = {rel for rel, e in v2.items()
               if e["type"] != stat.S_IFDIR and v1.get(rel, {}).get("type") == stat.S_IFDIR
               and any(k.startswith(rel + b"/") for k in v1)}
    for rel in blocked:
        assert any(os.fsdecode(os.path.join(out, rel)) in w for w in warnings), (rel, warnings)
    assert len(warnings) == len(blocked), warnings
    actual, _ = capture(out)
    for rel, entry in v2.items():
        if rel not in blocked:
            assert actual.get(rel) == entry, (rel, entry, actual.get(rel))
    kept = {g for g in link_groups(out) if g & v2.keys()}
    assert kept == groups2  # and no restored file still shares an inode with a leftover


# ------------------------------------------------------------------------------ edits

EDITS = ["modify", "append", "truncate", "delete", "rename", "add", "chmod", "touch", "chown",
         "xattr", "retype"]


def apply_edit(data, top: bytes) -> None:
    paths = []
    for dirpath, dirs, names in os.walk(top):
        paths += [os.path.join(dirpath, n) for n in dirs + names]
    files = [p for p in paths if stat.S_ISREG(os.lstat(p).st_mode)]
    dirs = [top] + [p for p in paths if stat.S_ISDIR(os.lstat(p).st_mode)]
    op = data.draw(st.sampled_from(EDITS), label="edit")
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    if op in ("modify", "append", "truncate") and files:
        path = data.draw(st.sampled_from(files), label="file")
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            if op == "modify" and size:
                offset = rng.randrange(size)
                f.seek(offset)
                f.write(rng.randbytes(min(size - offset, rng.randrange(1, 2 * CMAX))))
            elif op == "append":
                f.seek(0, os.SEEK_END)
                f.write(rng.randbytes(rng.choice([1, CMIN, CMAX + 3, 9000])))
            else:
                f.truncate(rng.randrange(0, size + CMAX))
    elif op == "delete" and paths:
        path = data.draw(st.sampled_from(paths), label="victim")
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    elif op == "rename" and paths:
        path = data.draw(st.sampled_from(paths), label="renamed")
        into = data.draw(st.sampled_from([d for d in dirs if not (d + b"/").startswith(path + b"/")]),
                         label="into")
        new = os.path.join(into, data.draw(NAMES, label="new name"))
        if not os.path.lexists(new):
            os.rename(path, new)
    elif op == "retype" and paths:  # the same name, another kind of entry
        path = data.draw(st.sampled_from(paths), label="retyped")
        was_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        shutil.rmtree(path) if was_dir else os.unlink(path)
        kind = data.draw(st.sampled_from(["file", "symlink"] if was_dir else ["dir", "dir+file"]))
        if kind == "file":
            write_content(path, data.draw(contents(), label="content"))
        elif kind == "symlink":
            os.symlink(b"/tmp", path)
        else:
            os.mkdir(path)
            if kind == "dir+file":
                write_content(os.path.join(path, b"inside"), ("data", 10, "random", 1))
    elif op == "add":
        into = data.draw(st.sampled_from(dirs), label="dir")
        new = os.path.join(into, data.draw(NAMES, label="new file"))
        if not os.path.lexists(new):
            write_content(new, data.draw(contents(), label="content"))
    elif op in ("chmod", "touch", "chown", "xattr") and paths:
        path = data.draw(st.sampled_from(paths + [top]), label="target")
        is_link = os.path.islink(path)
        if op == "chmod" and not is_link:
            os.chmod(path, data.draw(modes, label="mode"))
        elif op == "touch":
            os.utime(path, ns=(data.draw(times), data.draw(times)), follow_symlinks=False)
        elif op == "chown":
            os.lchown(path, data.draw(st.sampled_from(IDS)), data.draw(st.sampled_from(IDS)))
        elif op == "xattr" and (os.path.isfile(path) or os.path.isdir(path)) and not is_link:
            os.setxattr(path, "user.edited", rng.randbytes(rng.randrange(0, 40)))


# ------------------------------------------------------------------------------ the properties


def count_files(state: dict) -> int:
    return sum(1 for e in state.values() if e["type"] == stat.S_IFREG)


@settings(max_examples=int(os.environ.get("SNAP_PROP_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tree=entries(), top_meta=metas(), data=st.data())
def test_random_tree_round_trip_and_edits(tree, top_meta, data):
    scratch = Scratch()
    try:
        build(scratch.src, tree, top_meta)
        v1, blocks1 = capture(scratch.src)
        groups1 = link_groups(scratch.src)
        first = scratch.backup()
        snap1 = first.snapshot

        # The snapshot records owner names as the system knows them.
        for _path, node in walk(scratch.repo, snap1.tree):
            assert node["user"] == user_name(node["uid"]) and node["group"] == group_name(node["gid"])

        # An unchanged re-backup reads nothing and adds no data.
        again = scratch.backup()
        assert again.summary["data_blobs"] == 0, again.summary
        assert again.summary["files_unmodified"] == count_files(v1), again.summary
        assert again.summary["files_new"] == again.summary["files_changed"] == 0
        assert again.snapshot.parent == snap1.id

        for _ in range(data.draw(st.integers(1, 6), label="edits")):
            apply_edit(data, scratch.src)
        v2, blocks2 = capture(scratch.src)
        groups2 = link_groups(scratch.src)
        snap2 = scratch.backup().snapshot

        check_restore(scratch, snap1, v1, groups1, blocks1, sparse=True)
        check_restore(scratch, snap2, v2, groups2, blocks2, sparse=False)
        check_restore_over(scratch, snap2, v1, v2, groups2)
    finally:
        scratch.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(contents(), min_size=1, max_size=8), sparse=st.booleans(),
       force=st.booleans())
def test_file_contents_at_chunk_boundaries(files, sparse, force):
    """Many files of boundary sizes, zero runs and sparse layouts in one directory: content
    and holes survive, and a re-backup (forced re-read or not) adds no data blobs."""
    scratch = Scratch()
    try:
        for i, spec in enumerate(files):
            write_content(os.path.join(scratch.src, b"f%d" % i), spec)
        expected, blocks = capture(scratch.src)
        snap = scratch.backup().snapshot
        again = scratch.backup(force=force)
        assert again.summary["data_blobs"] == 0, again.summary
        assert again.summary["files_unmodified"] == (0 if force else len(files))
        check_restore(scratch, snap, expected, set(), blocks, sparse=sparse)
    finally:
        scratch.close()


def test_file_growing_while_read_gives_a_warning_and_a_consistent_snapshot():
    """A file appended to while the backup reads it: a warning names it, and the snapshot
    holds a state the file really had (a prefix of what it became), whole and checkable.
    A writer thread appends from before the backup starts until it is over (or 256 MiB), so
    the change overlaps the read of the 40 MB file (each append releases the GIL, as does
    every read). Before the archiver read at most the size stat saw, a writer faster than
    the reader kept this backup going until the disk was full."""
    import threading

    from dedupe.checker import CheckOptions, Checker
    from dedupe.walker import find_node

    scratch = Scratch()
    try:
        path = os.path.join(scratch.src, b"growing.log")
        with open(path, "wb") as f:
            f.write(random.Random(1).randbytes(40 << 20))
        done = threading.Event()
        started = threading.Event()

        def append() -> None:  # capped: disk use stays bounded whatever the archiver does
            rng = random.Random(2)
            with open(path, "ab", buffering=0) as f:
                for _ in range((256 << 20) // 4096):
                    f.write(rng.randbytes(4096))
                    started.set()
                    if done.is_set():
                        break

        writer = threading.Thread(target=append)
        writer.start()
        started.wait()
        try:
            result = Archiver(scratch.repo).backup([os.fsdecode(scratch.src)])
        finally:
            done.set()
            writer.join()
        assert result.snapshot is not None
        assert any(os.fsdecode(path) in w and "changed" in w for w in result.warnings), result.warnings

        node = find_node(scratch.repo, result.snapshot.tree, path)
        out = scratch.restore(result.snapshot, sparse=False)
        restored = _read(os.path.join(out, b"growing.log"))
        assert len(restored) == node["size"] >= 40 << 20
        assert _read(path)[:len(restored)] == restored
        check = Checker(Repository.open(LocalBackend(scratch.repo_dir), PW, no_cache=True),
                        CheckOptions(read_data=True)).run()
        assert check.ok, check.findings
    finally:
        scratch.close()
