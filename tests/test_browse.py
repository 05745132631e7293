"""End-to-end tests of the browsing commands: ls, find, diff, dump, cat, stats, tag.

Repositories are real (local directories; the round-trip test also runs on every backend of
``repo_location``: moto's S3 server over HTTP, Ceph RGW when installed). Test data is made by
the engine (``Archiver``); every command under test runs as ``python -m cli`` in a subprocess
and is judged on its actual output, compared with what the filesystem says independently.
"""

from __future__ import annotations

import base64
import dataclasses
import grp
import hashlib
import io
import json
import os
import pwd
import random
import re
import stat
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from dedupe.archiver import Archiver, BackupOptions
from dedupe.backends import open_backend
from dedupe.backends.local import LocalBackend
from dedupe.config import Config
from dedupe.crypto import KdfParams
from dedupe.diff import TreeDiff
from dedupe.errors import PermissionDenied
from dedupe.packs import BLOB_TREE
from dedupe.repository import Repository
from dedupe.tags import change_tags
from dedupe.tree import Node
from dedupe.walker import find_node, walk

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = b"browse-test-password"
# Small chunks, so a few hundred KiB already make multi-blob files.
SMALL_CHUNKS = Config(chunk_min=64 * 1024, chunk_avg=128 * 1024, chunk_max=256 * 1024)
FAST_KDF = KdfParams(1, 8 << 20)
WEIRD = b"caf\xe9.txt"  # not valid UTF-8


# ------------------------------------------------------------------------------ helpers


def snap(url: str, *args: str, cache: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """Run the real CLI; ``ok`` asserts exit 0, ``ok=False`` expects exit 1 (one-line error)."""
    env = dict(os.environ, SNAP_PASSWORD=PASSWORD.decode(), SNAP_CACHE_DIR=str(cache))
    env.pop("SNAP_PASSWORD_FILE", None)
    env.pop("SNAP_PASSWORD_COMMAND", None)
    proc = subprocess.run([sys.executable, "-m", "cli", "-r", url, *args], cwd=ROOT, env=env,
                          capture_output=True, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    else:
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 1, (proc.returncode, err)
        assert "Traceback" not in err and "internal error" not in err, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("snap: "), err
    return proc


def in_parallel(run, *calls: tuple) -> list[subprocess.CompletedProcess]:
    """Independent CLI runs side by side (each is a separate process; start-up dominates).
    A call is a tuple of arguments, optionally ending in a dict of keyword arguments."""

    def one(call: tuple) -> subprocess.CompletedProcess:
        if call and isinstance(call[-1], dict):
            return run(*call[:-1], **call[-1])
        return run(*call)

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, calls))


def lines(proc: subprocess.CompletedProcess) -> list[bytes]:
    return proc.stdout.splitlines()


def json_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def iso_to_ns(text: str) -> int:
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    assert m, text
    base = datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3]))
    return int(base.timestamp()) * 1_000_000_000 + int((m[2] or "").ljust(9, "0"))


def ancestors(path: bytes) -> list[bytes]:
    parts = [p for p in path.split(b"/") if p]
    return [b"/" + b"/".join(parts[:i]) for i in range(1, len(parts))]


def fs_entries(top: bytes) -> list[bytes]:
    """Every path below ``top`` (not following symlinks), as the filesystem lists them."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        out += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return out


def new_repo(url: str, cache: Path) -> Repository:
    return Repository.init(open_backend(url), PASSWORD, SMALL_CHUNKS, kdf=FAST_KDF,
                           cache_root=str(cache))


def backup(repo: Repository, src: Path, tags: list[str] = ()) -> str:
    result = Archiver(repo, BackupOptions(tags=list(tags))).backup([str(src)])
    assert result.complete, result.warnings
    return result.snapshot.id


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ------------------------------------------------------------------------------ shared repository


@dataclasses.dataclass
class Browse:
    url: str
    cache: Path
    src: Path
    first: str
    second: str
    key_strings: list[str]  # encodings of the master key that must never be printed

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        return snap(self.url, *args, cache=self.cache, ok=ok)

    def p(self, rel: str = "") -> bytes:
        return os.fsencode(self.src) + (b"/" + rel.encode() if rel else b"")


@pytest.fixture(scope="module")
def browse(tmp_path_factory) -> Browse:
    """A repository with two snapshots of one tree; the second after edits of every kind."""
    base = tmp_path_factory.mktemp("browse")
    src, cache = base / "src", base / "cache"
    rng = random.Random(1234)
    write(src / "docs/readme.txt", b"hello readme\n")
    write(src / "docs/notes.md", b"# notes\n" * 50)
    write(src / "data/big.bin", rng.randbytes(700_000))  # several chunks
    with open(src / "data/sparse.img", "wb") as f:  # hole, data, hole
        f.seek(1 << 20)
        f.write(rng.randbytes(100_000))
        f.truncate(3 << 20)
    write(src / "etc/app/nginx-site.conf", b"server {}\n")
    write(src / "etc/app/Other.CONF", b"x = 1\n")
    write(src / "hard1", b"hardlinked\n")
    os.link(src / "hard1", src / "hard2")
    os.symlink("docs/readme.txt", src / "link")
    write(src / "exec.sh", b"#!/bin/sh\necho hi\n")
    os.chmod(src / "exec.sh", 0o755)
    os.mkfifo(src / "pipe")
    (src / "empty").mkdir()
    write(src / "old/a.txt", b"old a\n")
    write(src / "old/b/c.txt", b"old c\n")
    write(src / "meta.txt", b"metadata only\n")
    write(src / "kind", b"a file that becomes a symlink\n")
    with open(os.path.join(os.fsencode(src), WEIRD), "wb") as f:
        f.write(b"latin-1 name\n")

    url = str(base / "repo")
    repo = new_repo(url, cache)
    first = backup(repo, src)
    write(src / "docs/readme.txt", b"hello readme, second edition\n")  # M
    write(src / "data/new.bin", rng.randbytes(150_000))  # +
    for p in ("old/b/c.txt", "old/a.txt"):  # - (a directory with contents)
        (src / p).unlink()
    (src / "old/b").rmdir()
    (src / "old").rmdir()
    os.chmod(src / "meta.txt", 0o600)  # U
    (src / "kind").unlink()
    os.symlink("meta.txt", src / "kind")  # T
    second = backup(repo, src, tags=["nightly"])
    key = repo.key
    key_strings = [k.hex() for k in (key.enc_key, key.id_key)] + \
                  [base64.b64encode(k).decode() for k in (key.enc_key, key.id_key)]
    repo.close()
    return Browse(url, cache, src, first, second, key_strings)


# ------------------------------------------------------------------------------ ls


def test_ls_lists_the_whole_tree_recursively(browse):
    full, quiet = in_parallel(browse.run, ("ls", "latest"), ("-q", "ls", "latest"))
    out = lines(full)
    assert out[0].startswith(f"snapshot {browse.second[:8]} of [{browse.src}]".encode())
    top = browse.p()
    expected = ancestors(top) + [top] + fs_entries(top)
    assert sorted(out[1:]) == sorted(expected)
    assert out[1:] == sorted(out[1:], key=lambda p: p.split(b"/"))  # depth first, name order
    assert browse.p() + b"/" + WEIRD in out  # names that are not UTF-8 kept as they are
    assert lines(quiet) == out[1:]  # no header


def test_ls_dirs_list_direct_entries_unless_recursive(browse):
    direct, recursive, rooted = in_parallel(
        browse.run,
        ("-q", "ls", browse.first[:12], browse.p("etc")),
        ("-q", "ls", browse.first, browse.p("etc") + b"/", "--recursive"),
        ("-q", "ls", f"{browse.first}:{browse.src}/etc"))
    out = lines(direct)
    assert out == [browse.p("etc"), browse.p("etc/app")]  # restic: dir and its entries
    out = lines(recursive)
    assert out == [browse.p("etc"), browse.p("etc/app"), browse.p("etc/app/Other.CONF"),
                   browse.p("etc/app/nginx-site.conf")]
    # ID:PATH makes PATH the root, as for restore.
    out = lines(rooted)
    assert out == [b"/app", b"/app/Other.CONF", b"/app/nginx-site.conf"]


def test_ls_long_format(browse):
    out = lines(browse.run("-q", "ls", "-l", "latest", browse.p()))
    line_re = re.compile(rb"(\S{10}) (\S+) +(\S+) +(\d+) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) "
                         rb"(/\S*?)(?: -> (\S+))?")
    rows = {}
    for line in out:
        m = line_re.fullmatch(line)
        assert m, line
        rows[m[6]] = m
    assert len(rows) == len(out) == 1 + len(os.listdir(browse.src))
    for path, m in rows.items():
        st = os.lstat(path)
        when = datetime.fromtimestamp(st.st_mtime_ns // 10**9).strftime("%Y-%m-%d %H:%M:%S")
        assert m[1] == stat.filemode(st.st_mode).encode(), path
        assert m[2] == pwd.getpwuid(st.st_uid).pw_name.encode(), path
        assert m[3] == grp.getgrgid(st.st_gid).gr_name.encode(), path
        assert int(m[4]) == (st.st_size if stat.S_ISREG(st.st_mode) else 0), path
        assert m[5] == when.encode(), path
        assert m[7] == (os.readlink(path) if stat.S_ISLNK(st.st_mode) else None), path
    assert rows[browse.p("exec.sh")][1] == b"-rwxr-xr-x"
    assert rows[browse.p("pipe")][1].startswith(b"p")


def test_ls_json_nodes(browse):
    msgs = json_lines(browse.run("--json", "ls", "latest", browse.p("data")))
    head, nodes = msgs[0], msgs[1:]
    assert head["struct_type"] == "snapshot" and head["id"] == browse.second
    assert head["tags"] == ["nightly"] and head["paths"] == [str(browse.src)]
    assert [n["path"] for n in nodes] == [os.fsdecode(p) for p in
                                          (browse.p("data"), browse.p("data/big.bin"),
                                           browse.p("data/new.bin"), browse.p("data/sparse.img"))]
    required = {"name", "type", "path", "uid", "gid", "size", "mode", "mtime", "atime", "ctime",
                "struct_type"}
    for n in nodes:
        assert required <= n.keys() and n["struct_type"] == "node"
        st = os.lstat(n["path"])
        assert n["mode"] == st.st_mode and n["uid"] == st.st_uid and n["gid"] == st.st_gid
        assert iso_to_ns(n["mtime"]) == st.st_mtime_ns
        assert iso_to_ns(n["ctime"]) == st.st_ctime_ns
        if n["type"] == "file":
            assert n["size"] == st.st_size
    assert nodes[0]["type"] == "dir" and nodes[1]["name"] == "big.bin"


def test_ls_sort_orders_by_the_field_the_filesystem_reports(browse):
    plain, by_size, by_ext, by_name_reversed = in_parallel(
        browse.run, ("--json", "ls", "latest"), ("--json", "ls", "latest", "--sort", "size",
                                                  "--reverse"),
        ("ls", "latest", "--sort", "extension"), ("ls", "latest", "--reverse"))
    tree_order = [n["path"] for n in json_lines(plain)[1:]]
    head, nodes = json_lines(by_size)[0], json_lines(by_size)[1:]
    assert head["struct_type"] == "snapshot"
    assert sorted(n["path"] for n in nodes) == sorted(tree_order)
    sizes = [os.lstat(n["path"]).st_size if n["type"] == "file" else n["size"] for n in nodes]
    assert sizes == sorted(sizes, reverse=True)
    assert nodes[0]["path"] == os.fsdecode(browse.p("data/sparse.img"))  # 3 MiB, apparent
    # equal keys keep the tree order (reversed with the rest)
    zero = [n["path"] for n in nodes if n["size"] == 0]
    assert zero == [p for p in reversed(tree_order) if p in set(zero)]
    listed = lines(by_ext)[1:]
    exts = [os.path.splitext(os.path.basename(p))[1] for p in listed]
    assert exts == sorted(exts) and sorted(listed) == sorted(os.fsencode(p) for p in tree_order)
    assert lines(by_name_reversed)[1:] == [os.fsencode(p) for p in reversed(tree_order)]


# ------------------------------------------------------------------------------ find


def test_find_globs_like_restic(browse):
    runs = in_parallel(
        browse.run,
        ("find", "*.conf"),
        ("-q", "find", "-i", "*.conf", "--snapshot", browse.first),
        ("-q", "find", "app", "-s", "latest"),
        ("-q", "find", "/app"),
        ("-q", "find", os.fsdecode(browse.p("e*")) + "/app/*.conf", "-s", "latest"))
    out = lines(runs[0])
    assert len(out) == 5 and out[2] == b""  # newest snapshot first, then the older
    assert out[0].startswith(f"Found matching entries in snapshot {browse.second[:8]} from ".encode())
    assert out[3].startswith(f"Found matching entries in snapshot {browse.first[:8]} from ".encode())
    assert out[1] == out[4] == browse.p("etc/app/nginx-site.conf")
    out = lines(runs[1])
    assert out == [browse.p("etc/app/Other.CONF"), browse.p("etc/app/nginx-site.conf")]
    # A pattern without "/" matches a component at any depth, and so everything below it.
    out = lines(runs[2])
    assert out == [browse.p("etc/app"), browse.p("etc/app/Other.CONF"),
                   browse.p("etc/app/nginx-site.conf")]
    # Anchored patterns match from the root only.
    assert lines(runs[3]) == []
    assert lines(runs[4]) == [browse.p("etc/app/nginx-site.conf")]


def test_find_json_groups_by_snapshot(browse):
    found, nothing = in_parallel(browse.run, ("--json", "find", "a.txt", "new.bin"),
                                 ("--json", "find", "no-such-name"))
    groups = json.loads(found.stdout)
    assert [g["snapshot"] for g in groups] == [browse.second, browse.first]
    by_snap = {g["snapshot"]: g for g in groups}
    assert [m["path"] for m in by_snap[browse.second]["matches"]] == \
        [os.fsdecode(browse.p("data/new.bin"))]
    assert [m["path"] for m in by_snap[browse.first]["matches"]] == \
        [os.fsdecode(browse.p("old/a.txt"))]
    for g in groups:
        assert g["hits"] == len(g["matches"])
        for m in g["matches"]:
            st = os.lstat(m["path"]) if m["path"].endswith("new.bin") else None
            assert m["type"] == "file" and {"permissions", "user", "group", "links", "mtime",
                                            "size", "uid", "gid", "inode"} <= m.keys()
            if st is not None:
                assert (m["size"], m["inode"], iso_to_ns(m["mtime"])) == \
                    (st.st_size, st.st_ino, st.st_mtime_ns)
    assert json.loads(nothing.stdout) == []


def _objects(browse) -> tuple[Repository, dict[str, dict[bytes, Node]]]:
    """The repository, and each snapshot's nodes by path, read by the engine's own walk."""
    repo = Repository.open(open_backend(browse.url), PASSWORD, cache_root=str(browse.cache))
    nodes = {}
    for snap_id in (browse.first, browse.second):
        tree = repo.load_snapshot(snap_id).tree
        nodes[snap_id] = {path: node for path, node in walk(repo, tree)}
    return repo, nodes


def _found(proc) -> list[tuple[str, list[tuple[bytes, str, str]]]]:
    """``find --json`` with IDs: [(snapshot, [(path, object type, id)])]."""
    return [(g["snapshot"], [(os.fsencode(m["path"]), m["object_type"], m["id"])
                             for m in g["matches"]]) for g in json.loads(proc.stdout)]


def test_find_blob_and_tree_ids_in_every_snapshot_that_uses_them(browse):
    repo, nodes = _objects(browse)
    repo.close()
    big = nodes[browse.first][browse.p("data/big.bin")]["content"][1]  # (in both snapshots)
    docs = nodes[browse.first][browse.p("docs")]["subtree"]  # (changed in the second)
    app = nodes[browse.first][browse.p("etc/app")]["subtree"]  # (the same in both)
    assert nodes[browse.second][browse.p("etc/app")]["subtree"] == app
    blob, trees, text = in_parallel(
        browse.run, ("--json", "find", "--blob", big.hex()[:10].upper()),
        ("--json", "find", "--tree", docs.hex(), app.hex()[:8]),
        ("find", "--blob", big.hex()[:12]))
    assert _found(blob) == [(s, [(browse.p("data/big.bin"), "blob", big.hex())])
                            for s in (browse.second, browse.first)]  # newest first
    assert _found(trees) == [
        (browse.second, [(browse.p("etc/app"), "tree", app.hex())]),
        (browse.first, [(browse.p("docs"), "tree", docs.hex()),
                        (browse.p("etc/app"), "tree", app.hex())])]
    out = lines(text)
    assert out[0].startswith(f"Found objects in snapshot {browse.second[:8]} from ".encode())
    assert out[1] == browse.p("data/big.bin") + f"  blob {big.hex()}".encode()


def test_find_pack_lists_every_use_of_the_packs_blobs(browse):
    repo, nodes = _objects(browse)
    new = nodes[browse.second][browse.p("data/new.bin")]["content"][0]
    docs = nodes[browse.first][browse.p("docs")]["subtree"]
    packs = [repo.index.lookup(new).pack_id, repo.index.lookup(docs).pack_id]  # data, trees
    roots = {s: repo.load_snapshot(s).tree for s in (browse.first, browse.second)}
    held = {p: {(loc.type, b) for b, loc in repo.index.iter_blobs() if loc.pack_id == p}
            for p in packs}
    repo.close()
    runs = in_parallel(browse.run, *[("--json", "find", "--pack", p.hex()[:16]) for p in packs],
                       ("--json", "find", "--pack", packs[0].hex(), "--show-pack-id"))
    for pack, found in zip(packs, runs):
        expected = []  # what walking every snapshot finds, independently of find's pruning
        for snap_id in (browse.second, browse.first):
            uses = [(b"/", "tree", roots[snap_id].hex())] \
                if (BLOB_TREE, roots[snap_id]) in held[pack] else []
            for path, node in nodes[snap_id].items():
                if node["type"] == "dir" and (BLOB_TREE, node["subtree"]) in held[pack]:
                    uses.append((path, "tree", node["subtree"].hex()))
                for b in dict.fromkeys(c for c in node.get("content") or ()
                                       if isinstance(c, bytes)):
                    if (0, b) in held[pack]:
                        uses.append((path, "blob", b.hex()))
            if uses:
                expected.append((snap_id, uses))
        assert expected and _found(found) == expected
    assert {p for g in json.loads(runs[2].stdout) for m in g["matches"] for p in m["packs"]} \
        == {packs[0].hex()}


def test_find_warns_of_ids_the_index_does_not_hold(browse):
    proc = browse.run("find", "--blob", "00000000deadbeef")
    assert proc.stdout == b""
    assert proc.stderr.decode().strip() == "warning: no blob 00000000deadbeef in the index"


# ------------------------------------------------------------------------------ diff


def test_diff_reports_each_kind_of_change(browse):
    plain, with_meta = in_parallel(browse.run, ("diff", browse.first[:10], "latest"),
                                   ("diff", "--metadata", browse.first, browse.second))
    out = lines(plain)
    assert out[0] == f"comparing snapshot {browse.first[:8]} to {browse.second[:8]}:".encode()
    changes = [line for line in out if line[:5].rstrip() in (b"+", b"-", b"M", b"U", b"T")]
    assert changes == [
        b"+    " + browse.p("data/new.bin"),
        b"M    " + browse.p("docs/readme.txt"),
        b"T    " + browse.p("kind"),
        b"-    " + browse.p("old") + b"/",
        b"-    " + browse.p("old/a.txt"),
        b"-    " + browse.p("old/b") + b"/",
        b"-    " + browse.p("old/b/c.txt"),
    ]
    text = b"\n".join(out)
    assert re.search(rb"Files: +1 new, +2 removed, +1 changed", text)
    assert re.search(rb"Dirs: +0 new, +2 removed", text)
    # Metadata-only changes are shown on request (restic --metadata).
    meta = lines(with_meta)
    assert b"U    " + browse.p("meta.txt") in meta
    assert b"U    " + browse.p() + b"/" in meta  # its mtime changed when old/ went


def test_diff_json_totals(browse):
    changed, same = in_parallel(browse.run, ("--json", "diff", browse.first, browse.second),
                                ("--json", "diff", browse.first, browse.first))
    msgs = json_lines(changed)
    changes, stats = msgs[:-1], msgs[-1]
    assert {c["message_type"] for c in changes} == {"change"}
    assert {(c["modifier"], c["path"]) for c in changes} >= {
        ("+", os.fsdecode(browse.p("data/new.bin"))), ("M", os.fsdecode(browse.p("docs/readme.txt")))}
    assert stats["message_type"] == "statistics"
    assert stats["source_snapshot"] == browse.first and stats["target_snapshot"] == browse.second
    assert stats["changed_files"] == 1
    assert (stats["added"]["files"], stats["added"]["dirs"]) == (1, 0)
    assert (stats["removed"]["files"], stats["removed"]["dirs"]) == (2, 2)
    new_content = 150_000 + len(b"hello readme, second edition\n")
    gone_content = len(b"old a\n") + len(b"old c\n") + len(b"hello readme\n") + \
        len(b"a file that becomes a symlink\n")  # "kind" became a symlink: its blob is gone
    # Content bytes plus the rewritten trees along the changed paths (a few KiB).
    assert new_content < stats["added"]["bytes"] < new_content + 32_768
    assert gone_content < stats["removed"]["bytes"] < gone_content + 32_768
    assert stats["added"]["data_blobs"] >= 2 and stats["removed"]["data_blobs"] == 4
    # The same snapshot twice: nothing.
    same = json_lines(same)
    assert len(same) == 1 and same[0]["added"]["bytes"] == 0 == same[0]["removed"]["files"]


def test_diff_never_loads_identical_subtrees(tmp_path):
    src = tmp_path / "src"
    for i in range(5):
        write(src / f"same{i}/sub/file.txt", b"unchanged %d\n" % i)
    write(src / "changed/deep/file.txt", b"before\n")
    for _ in os.walk(src):  # settle directory atimes (relatime), which trees record
        pass
    repo = new_repo(str(tmp_path / "repo"), tmp_path / "cache")
    first = repo.load_snapshot(backup(repo, src))
    write(src / "changed/deep/file.txt", b"after!\n")
    second = repo.load_snapshot(backup(repo, src))

    def tree_ids(root: bytes) -> set[bytes]:
        return {root} | {n["subtree"] for _, n in walk(repo, root) if n["type"] == "dir"}

    common = tree_ids(first.tree) & tree_ids(second.tree)
    assert common  # at least the same*/sub trees are shared
    loaded = []
    original = repo.load_blob

    def counting(blob_type, blob_id):
        if blob_type == BLOB_TREE:
            loaded.append(blob_id)
        return original(blob_type, blob_id)

    repo.load_blob = counting
    changes = list(TreeDiff(repo).changes(first.tree, second.tree))
    assert [(c.modifier, c.path) for c in changes] == \
        [("M", os.fsencode(src / "changed/deep/file.txt"))]
    repo.load_blob = original
    assert not common & set(loaded)  # no tree both snapshots share was read
    if all(find_node(repo, first.tree, str(src / f"same{i}"))["subtree"] in common
           for i in range(5)):
        # Directory atimes stayed put (a read within the clock tick of the creation can
        # still move them): only the changed path was read, on both sides: the root, each
        # dir down to src, changed/ and changed/deep/.
        assert len(loaded) == 2 * (1 + len(ancestors(os.fsencode(src))) + 1 + 2)
    repo.close()


# ------------------------------------------------------------------------------ dump


def test_dump_files_byte_exact(browse, tmp_path):
    files = ("data/big.bin", "data/sparse.img", "docs/readme.txt")
    target = tmp_path / "big.copy"
    runs = in_parallel(
        browse.run,
        *[("dump", "latest", os.fsdecode(browse.p(rel))) for rel in files],
        ("dump", "--target", str(target), "latest", os.fsdecode(browse.p("data/big.bin"))),
        # ID:PATH, then a path relative to it; a file of the first snapshot only.
        ("dump", f"{browse.first}:{browse.src}/old", "b/c.txt"))
    for rel, run in zip(files, runs):
        assert hashlib.sha256(run.stdout).digest() == \
            hashlib.sha256((browse.src / rel).read_bytes()).digest(), rel
    assert runs[3].stdout == b""
    assert target.read_bytes() == (browse.src / "data/big.bin").read_bytes()
    assert runs[4].stdout == b"old c\n"


def test_dump_directory_as_tar_extracts_to_the_same_tree(browse, tmp_path):
    raw = browse.run("dump", "latest", os.fsdecode(browse.p())).stdout
    assert len(raw) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "out", filter="fully_trusted")
    rel = os.fsdecode(browse.p()).lstrip("/")
    assert all(n.startswith(rel + "/") for n in names)  # restic: names from the root, no "/"
    out = os.fsencode(tmp_path / "out") + browse.p()
    src = browse.p()
    assert sorted(p[len(out):] for p in fs_entries(out)) == \
        sorted(p[len(src):] for p in fs_entries(src))
    for path in fs_entries(src):
        mine = out + path[len(src):]
        a, b = os.lstat(path), os.lstat(mine)
        assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), path
        if not stat.S_ISLNK(a.st_mode):
            assert stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode), path
            assert abs(a.st_mtime_ns - b.st_mtime_ns) < 1000, path  # tarfile sets float times
        if stat.S_ISREG(a.st_mode):
            with open(path, "rb") as f1, open(mine, "rb") as f2:
                assert f1.read() == f2.read(), path
        if stat.S_ISLNK(a.st_mode):
            assert os.readlink(path) == os.readlink(mine)
    assert os.stat(out + b"/hard1").st_ino == os.stat(out + b"/hard2").st_ino  # a hard link


def test_dump_zip(browse):
    raw = browse.run("dump", "--archive", "zip", "latest", os.fsdecode(browse.p("data"))).stdout
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        rel = os.fsdecode(browse.p("data")).lstrip("/")
        assert sorted(zf.namelist()) == [f"{rel}/{n}" for n in ("big.bin", "new.bin", "sparse.img")]
        assert zf.read(f"{rel}/big.bin") == (browse.src / "data/big.bin").read_bytes()
        assert zf.getinfo(f"{rel}/big.bin").external_attr >> 16 == \
            os.stat(browse.src / "data/big.bin").st_mode


# ------------------------------------------------------------------------------ cat


def test_cat_shows_objects_and_never_key_material(browse):
    repo_dir = Path(browse.url)
    key_file = next((repo_dir / "keys").iterdir())
    index_file = next((repo_dir / "index").iterdir())
    runs = in_parallel(browse.run, ("cat", "config"), ("cat", "key", key_file.name[:10]),
                       ("cat", "snapshot", browse.second[:9]),
                       ("cat", "tree", f"latest:{browse.src}/docs"),
                       ("cat", "index", index_file.name))
    config, key, snapshot, tree, index = (json.loads(r.stdout) for r in runs)
    assert set(config) == {"id", "version", "chunk_min", "chunk_avg", "chunk_max",
                           "compression_level", "pack_size"}
    assert config["chunk_avg"] == SMALL_CHUNKS.chunk_avg
    assert key["id"] == key_file.name and key["current"] is True
    assert not {"data", "salt"} & set(key)
    assert snapshot["id"] == browse.second and snapshot["tags"] == ["nightly"]
    assert {b["type"] for p in index["packs"] for b in p["blobs"]} <= {"data", "tree"}
    readme = next(n for n in tree["nodes"] if n["name"] == "readme.txt")
    pack_id = index["packs"][0]["id"]
    blob, again, pack = in_parallel(browse.run, ("cat", "blob", readme["content"][0]),
                                    ("cat", "tree", tree["id"]), ("cat", "pack", pack_id[:12]))
    assert blob.stdout == (browse.src / "docs/readme.txt").read_bytes()
    assert json.loads(again.stdout) == tree
    assert pack.stdout == (repo_dir / "data" / pack_id[:2] / pack_id).read_bytes()
    for run in runs:
        for secret in browse.key_strings:
            assert secret.encode() not in run.stdout
    browse.run("cat", "masterkey", ok=False)


# ------------------------------------------------------------------------------ stats


def test_stats_against_independent_counts(tmp_path):
    rng = random.Random(7)
    src = tmp_path / "src"
    unique = [rng.randbytes(n) for n in (300_000, 90_000, 5_000)]
    write(src / "a/one.bin", unique[0])
    write(src / "b/one-copy.bin", unique[0])  # deduplicated
    write(src / "b/one-again.bin", unique[0])
    write(src / "c/two.bin", unique[1])
    write(src / "c/three.bin", unique[2])
    # Compressible, but with no repeated chunk (a repeating pattern would deduplicate).
    write(src / "text.log", b"".join(b"line %08d of a rather regular log\n" % i
                                     for i in range(20_000)))
    os.link(src / "c/two.bin", src / "c/two-link.bin")  # a hard link: restored once
    os.symlink("text.log", src / "link")
    url = str(tmp_path / "repo")
    repo = new_repo(url, tmp_path / "cache")
    first = backup(repo, src)
    locations = [loc for _, loc in repo.index.iter_blobs()]
    repo.close()

    files = [p for p in fs_entries(os.fsencode(src)) if stat.S_ISREG(os.lstat(p).st_mode)]
    inodes = {os.lstat(p).st_ino: os.lstat(p).st_size for p in files}
    restore_size = sum(inodes.values())
    entries = len(fs_entries(os.fsencode(src))) + 1 + len(ancestors(os.fsencode(src)))
    contents = {open(p, "rb").read() for p in files}
    distinct_size = sum(len(c) for c in contents)

    def run(*args, ok=True):
        return snap(url, *args, cache=tmp_path / "cache", ok=ok)

    runs = in_parallel(run, ("--json", "stats", "latest"),
                       ("--json", "stats", first, "--mode", "files-by-contents"),
                       ("--json", "stats", "--mode", "raw-data"),
                       ("stats", "--mode", "raw-data"))
    s, by_contents, raw = (json.loads(r.stdout) for r in runs[:3])
    assert s == {"total_size": restore_size, "total_file_count": entries, "snapshots_count": 1}
    assert (by_contents["total_file_count"], by_contents["total_size"]) == \
        (len(contents), distinct_size)
    # The only snapshot references every stored blob.
    assert raw["total_blob_count"] == len(locations)
    assert raw["total_size"] == sum(loc.length for loc in locations)
    assert raw["total_uncompressed_size"] == sum(loc.raw_length for loc in locations)
    assert raw["restore_size"] == restore_size
    assert raw["unique_data_size"] == distinct_size  # random contents share no chunk
    assert raw["deduplication_ratio"] == pytest.approx(restore_size / distinct_size)
    compressed = [loc for loc in locations if loc.compression]
    assert compressed  # text.log, at least
    assert raw["compression_ratio"] == pytest.approx(
        sum(loc.raw_length for loc in compressed) / sum(loc.length for loc in compressed))
    assert raw["compression_ratio"] > 3  # text.log shrinks a lot
    assert raw["compression_space_saving"] == pytest.approx(
        100 * (1 - raw["total_size"] / raw["total_uncompressed_size"]))
    human = lines(runs[3])
    assert human[0] == b"Stats in raw-data mode:"
    assert any(re.fullmatch(rb" *Deduplication Ratio: +%.2fx" % (restore_size / distinct_size),
                            line) for line in human)

    # A second, identical snapshot: restore sizes add up, the stored data does not grow.
    repo = Repository.open(open_backend(url), PASSWORD, cache_root=str(tmp_path / "cache"))
    backup(repo, src)
    repo.close()
    runs = in_parallel(run, ("--json", "stats"), ("--json", "stats", "--mode", "raw-data"),
                       ("stats", "--mode", "bogus", {"ok": False}))
    both, raw2 = json.loads(runs[0].stdout), json.loads(runs[1].stdout)
    assert both == {"total_size": 2 * restore_size, "total_file_count": 2 * entries,
                    "snapshots_count": 2}
    # Data blobs are all shared; only trees may differ (directory atimes change on reading).
    assert raw2["unique_data_size"] == distinct_size
    assert raw2["deduplication_ratio"] == pytest.approx(2 * restore_size / distinct_size)
    assert b"bogus" in runs[2].stderr


# ------------------------------------------------------------------------------ tag


@pytest.fixture
def tag_repo(tmp_path):
    src = tmp_path / "src"
    write(src / "f.txt", b"tagged\n")
    url = str(tmp_path / "repo")
    repo = new_repo(url, tmp_path / "cache")
    one = backup(repo, src)
    two = backup(repo, src, tags=["a"])
    repo.close()
    return url, tmp_path / "cache", one, two


def listing(url, cache) -> dict[str, dict]:
    return {s["id"]: s for s in json.loads(snap(url, "--json", "snapshots", cache=cache).stdout)}


def test_tag_rewrites_snapshots_keeping_the_original_id(tag_repo):
    url, cache, one, two = tag_repo
    repo = Repository.open(open_backend(url), PASSWORD, cache_root=str(cache))
    before = {i: repo.load_snapshot(i).to_json() for i in (one, two)}
    repo.close()
    msgs = json_lines(snap(url, "--json", "tag", "--add", "x,y", one[:10], cache=cache))
    assert msgs[0]["old_snapshot_id"] == one and msgs[0]["tags"] == ["x", "y"]
    assert msgs[-1] == {"message_type": "summary", "changed_snapshot_count": 1, "errors": 0}
    new_id = msgs[0]["new_snapshot_id"]
    msgs = json_lines(snap(url, "--json", "tag", "--remove", "x", new_id, cache=cache))
    newer = msgs[0]["new_snapshot_id"]
    # No ids: every snapshot the filters select.
    out = snap(url, "tag", "--set", "z", "--tag", "a", cache=cache).stdout
    assert b"modified tags on 1 snapshots" in out
    after = listing(url, cache)
    assert set(after) == {newer, next(i for i in after if i != newer)} and len(after) == 2
    assert one not in after and two not in after and new_id not in after
    assert after[newer]["tags"] == ["y"]
    assert after[newer]["original"] == one  # the first id, through every rewrite
    (other,) = [s for i, s in after.items() if i != newer]
    assert other["tags"] == ["z"] and other["original"] == two
    volatile = ("id", "short_id", "tags", "original")
    for new, old in ((after[newer], before[one]), (other, before[two])):
        assert {k: v for k, v in new.items() if k not in volatile} == \
            {k: v for k, v in old.items() if k not in volatile}
    snap(url, "tag", "--set", "", cache=cache)
    assert [s["tags"] for s in listing(url, cache).values()] == [[], []]
    nothing, *_ = in_parallel(lambda *a, ok=True: snap(url, *a, cache=cache, ok=ok),
                              ("tag", "--add", "q", "--host", "no-such-host"),
                              ("tag", {"ok": False}),  # nothing to do
                              ("tag", "--set", "a", "--add", "b", {"ok": False}))
    assert b"no snapshots were modified" in nothing.stdout


class RecordingBackend(LocalBackend):
    """A real local backend that records writes and deletes and can refuse deletes."""

    def __init__(self, root: str, refuse_deletes: bool) -> None:
        super().__init__(root)
        self.ops: list[tuple[str, str]] = []
        self.refuse_deletes = refuse_deletes

    def put(self, name, data, bulk=False):
        super().put(name, data, bulk)
        self.ops.append(("put", name))

    def delete(self, name):
        if self.refuse_deletes and name.startswith("snapshots/"):
            raise PermissionDenied(f"{name}: delete refused", name)
        super().delete(name)
        self.ops.append(("delete", name))


@pytest.mark.parametrize("refuse_deletes", [False, True])
def test_tag_writes_the_new_snapshot_before_deleting_the_old(tag_repo, refuse_deletes):
    url, cache, one, _ = tag_repo
    backend = RecordingBackend(url, refuse_deletes)
    repo = Repository.open(backend, PASSWORD, cache_root=str(cache))
    old = repo.load_snapshot(one)
    if refuse_deletes:
        with pytest.raises(PermissionDenied):
            change_tags(repo, [old], add=["new"])
    else:
        change_tags(repo, [old], add=["new"])
    puts = [i for i, (op, name) in enumerate(backend.ops) if op == "put" and name.startswith("snapshots/")]
    assert len(puts) == 1
    new_id = backend.ops[puts[0]][1].split("/")[1]
    new = repo.load_snapshot(new_id)
    assert new.tags == ["new"] and new.original == one and new.tree == old.tree
    ids = set(repo.snapshot_ids())
    if refuse_deletes:  # the crash case: both remain, nothing is lost
        assert {one, new_id} <= ids
    else:
        assert ("delete", f"snapshots/{one}") in backend.ops
        assert backend.ops.index(("delete", f"snapshots/{one}")) > puts[0]
        assert one not in ids and new_id in ids
    repo.close()


# ------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_line_and_exit_1(browse, tag_repo):
    bad = [
        ("ls", "nosuchsnapshot"),  # unknown snapshot
        ("ls", "latest", "relative/path"),  # restic: DIRs must be absolute
        ("ls", "latest", "/no/such/dir"),  # path not in the snapshot
        ("ls", f"latest:{browse.src}/exec.sh"),  # ID:PATH naming a file
        ("dump", "latest", os.fsdecode(browse.p("link"))),  # neither file nor directory
        ("dump", "--archive", "rar", "latest", "/"),  # bad flag value
        ("diff", "latest"),  # missing argument
        ("find", "[unclosed"),  # malformed pattern
        ("find", "--blob", "0123abc"),  # an ID shorter than 8 digits
        ("find", "--tree", "--pack", "01234567"),  # two kinds of ID
        ("find", "--show-pack-id", "*.conf"),  # pack ids of path patterns
        ("cat", "blob", "zz"),  # malformed id
        ("cat", "blob", "00" * 32),  # unknown blob
        ("cat", "index", "0123456789abcdef"),  # unknown object
    ]
    in_parallel(browse.run, *[(*args, {"ok": False}) for args in bad])
    # An ambiguous prefix: make snapshots until two ids share their first digit.
    url, cache, one, _ = tag_repo
    repo = Repository.open(open_backend(url), PASSWORD, cache_root=str(cache))
    base = repo.load_snapshot(one)
    ids = {s.id for s in repo.list_snapshots()}
    n = 0
    while len({i[0] for i in ids}) == len(ids):
        n += 1
        copy = dataclasses.replace(base, id="", time=base.time + timedelta(seconds=n))
        ids.add(repo.save_snapshot(copy))
    repo.close()
    first_digits = [i[0] for i in ids]
    shared = next(d for d in first_digits if first_digits.count(d) > 1)
    err = snap(url, "ls", shared, cache=cache, ok=False).stderr
    assert b"ambiguous" in err


# ------------------------------------------------------------------------------ every backend


def test_browse_round_trip_on_each_backend(repo_location, tmp_path):
    """ls, diff, dump, cat, stats and tag against each storage kind (local, moto, Ceph)."""
    url, _env = repo_location
    cache = tmp_path / "cache"
    src = tmp_path / "src"
    rng = random.Random(99)
    payload = rng.randbytes(400_000)
    write(src / "dir/payload.bin", payload)
    write(src / "dir/small.txt", b"small\n")
    repo = new_repo(url, cache)
    first = backup(repo, src)
    write(src / "dir/small.txt", b"small, edited\n")
    second = backup(repo, src)
    repo.close()

    runs = in_parallel(lambda *a: snap(url, *a, cache=cache),
                       ("-q", "ls", "latest"), ("--json", "diff", first, second),
                       ("dump", "latest", str(src / "dir/payload.bin")), ("dump", first, str(src)),
                       ("cat", "config"), ("--json", "stats", second))
    assert os.fsencode(src / "dir/payload.bin") in lines(runs[0])
    diff = json_lines(runs[1])
    assert [(c["modifier"], c["path"]) for c in diff[:-1]] == [("M", str(src / "dir/small.txt"))]
    assert runs[2].stdout == payload
    with tarfile.open(fileobj=io.BytesIO(runs[3].stdout)) as tar:
        member = tar.extractfile(str(src / "dir/small.txt").lstrip("/"))
        assert member.read() == b"small\n"
    assert json.loads(runs[4].stdout)["chunk_min"] == 64 * 1024
    assert json.loads(runs[5].stdout)["total_size"] == len(payload) + len(b"small, edited\n")
    snap(url, "tag", "--add", "kept", first, cache=cache)
    tags = {s["original"] or s["id"]: s["tags"] for s in listing(url, cache).values()}
    assert tags == {first: ["kept"], second: []}
