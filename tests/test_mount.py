"""snap mount: real FUSE mounts of real repositories (local directory, moto S3, Ceph RGW).

The mount runs as ``python -m cli mount`` in a subprocess, as a user would run it; the test reads
it through the kernel with ordinary file calls. Every fixture unmounts (``fusermount3 -u -z``)
even when a test fails, so a broken test cannot leave a mount behind.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import selected_backend_kinds

from dedupe.archiver import Archiver, BackupOptions
from dedupe.backends import open_backend
from dedupe.backends.base import pack_name
from dedupe.config import Config
from dedupe.crypto import KdfParams
from dedupe.fuse import SnapshotFS
from dedupe.fusemount import fuse_problem, is_mounted
from dedupe.fuselayout import time_name
from dedupe.packs import BLOB_DATA
from dedupe.repository import Repository
from dedupe.snapshot import SnapshotFilter
from dedupe.walker import find_node

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "mount-test-password"
# Small chunks: the 20 MB file becomes ~80 blobs, so reads cross blob boundaries.
SMALL_CHUNKS = Config(chunk_min=64 << 10, chunk_avg=256 << 10, chunk_max=1 << 20)
T1 = datetime(2024, 3, 1, 10, 0, 0, tzinfo=timezone.utc)
T2 = T1 + timedelta(days=1)

_problem = fuse_problem()
if _problem and os.environ.get("CI") == "true":
    raise RuntimeError(f"{_problem}; CI must run the mount tests")
pytestmark = [pytest.mark.skipif(_problem is not None, reason=_problem or ""),
              pytest.mark.timeout(120)]


# ------------------------------------------------------------------------------ source data


def _xattrs_supported(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def make_source(root: Path) -> dict:
    """A small tree with every kind of entry the mount must show; returns what to expect."""
    src = root / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    rng = random.Random(7)
    big = rng.randbytes(20 << 20)
    (src / "big.bin").write_bytes(big)
    (src / "hello.txt").write_bytes(b"hello, version one\n")
    os.link(src / "hello.txt", src / "hard")
    os.symlink("hello.txt", src / "link")
    os.symlink("/nonexistent/target", src / "dangling")
    (src / "empty").write_bytes(b"")
    (src / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name\n")
    os.mkfifo(src / "fifo")
    deep = src / "sub" / "deeper" / "file.txt"
    deep.write_bytes(b"deep file\n")
    os.chmod(deep, 0o640)
    os.chown(deep, 1234, 5678)
    os.utime(deep, ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
    with open(src / "sparse.bin", "wb") as f:  # hole, 1 MiB of data, hole
        f.truncate(8 << 20)
        f.seek(3 << 20)
        f.write(rng.randbytes(1 << 20))
    xattrs = _xattrs_supported(src)
    if xattrs:
        os.setxattr(src / "hello.txt", "user.color", b"blue")
        os.setxattr(src / "hello.txt", "user.empty", b"")
    return {"src": src, "big": big, "xattrs": xattrs}


def build_repo(url: str, root: Path) -> dict:
    """Three snapshots: alpha@T1 (daily), beta@T2 (daily, weekly), alpha@T2 (same time)."""
    info = make_source(root)
    src = info["src"]
    cache = str(root / "cache")
    repo = Repository.init(open_backend(url), PASSWORD.encode(), SMALL_CHUNKS,
                           kdf=KdfParams(1, 8 << 20), cache_root=cache)
    s1 = Archiver(repo, BackupOptions(hostname="alpha", tags=["daily"], time=T1)).backup([str(src)])
    (src / "hello.txt").write_bytes(b"hello, version two, longer\n")  # hard link follows
    s2 = Archiver(repo, BackupOptions(hostname="beta", tags=["daily", "weekly"], time=T2)
                  ).backup([str(src)])
    s3 = Archiver(repo, BackupOptions(hostname="alpha", time=T2)).backup([str(src)])
    repo.close()
    info.update(url=url, cache=cache, snaps=[s1.snapshot, s2.snapshot, s3.snapshot])
    return info


# ------------------------------------------------------------------------------ mounting


class Mount:
    def __init__(self, url: str, mnt: Path, cache: str, *args: str) -> None:
        self.mnt = mnt
        mnt.mkdir(exist_ok=True)
        env = dict(os.environ, SNAP_PASSWORD=PASSWORD, SNAP_CACHE_DIR=cache,
                   PYTHONPATH=str(REPO_ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "-r", url, "mount", str(mnt), *args], env=env,
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"snap mount exited with {self.proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError("the mount did not come up within 60 s")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def close(self) -> None:
        """Always safe: stop the process and make sure nothing stays mounted."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        if is_mounted(str(self.mnt)):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mountrepo")
    return build_repo(str(root / "repo"), root)


@pytest.fixture(scope="module")
def mounted(local_repo, tmp_path_factory):
    m = Mount(local_repo["url"], tmp_path_factory.mktemp("mnt") / "m", local_repo["cache"])
    try:
        yield m
    finally:
        m.close()


def snap_dir(mnt: Path, info: dict, which: int) -> Path:
    """The source directory inside snapshot number ``which`` (0-based), via ids/."""
    return mnt / "ids" / info["snaps"][which].short_id / str(info["src"]).lstrip("/")


# ------------------------------------------------------------------------------ tests


def check_layout(mnt: Path, info: dict) -> None:
    s1, s2, s3 = info["snaps"]
    assert sorted(os.listdir(mnt)) == ["hosts", "ids", "snapshots", "tags"]
    later = sorted([s2, s3], key=lambda s: s.id)  # equal times: ordered by id
    names = {time_name(s1): s1, time_name(later[0]): later[0], time_name(later[1]) + "-1": later[1]}
    assert sorted(os.listdir(mnt / "snapshots")) == sorted([*names, "latest"])
    assert os.readlink(mnt / "snapshots" / "latest") == time_name(later[1]) + "-1"
    assert sorted(os.listdir(mnt / "ids")) == sorted(s.short_id for s in info["snaps"])
    assert sorted(os.listdir(mnt / "hosts")) == ["alpha", "beta"]
    assert sorted(os.listdir(mnt / "hosts" / "alpha")) == sorted(
        [time_name(s1), time_name(s3), "latest"])
    assert os.readlink(mnt / "hosts" / "alpha" / "latest") == time_name(s3)
    assert sorted(os.listdir(mnt / "tags")) == ["daily", "weekly"]
    assert sorted(os.listdir(mnt / "tags" / "weekly")) == [time_name(s2), "latest"]
    # Every name resolves to the right snapshot: hello.txt differs between s1 and the others.
    inner = str(info["src"]).lstrip("/")
    for name, snap in names.items():
        want = b"hello, version one\n" if snap is s1 else b"hello, version two, longer\n"
        assert (mnt / "snapshots" / name / inner / "hello.txt").read_bytes() == want
    assert (mnt / "snapshots" / "latest" / inner / "sub" / "deeper" / "file.txt").read_bytes() \
        == b"deep file\n"
    st = os.stat(mnt / "snapshots")
    assert stat.S_ISDIR(st.st_mode) and st.st_nlink == 2 + len(names)


def check_copy_and_reads(mnt: Path, info: dict, tmp_path: Path) -> None:
    d = snap_dir(mnt, info, 0)
    shutil.copy(d / "hello.txt", tmp_path / "restored.txt")
    assert (tmp_path / "restored.txt").read_bytes() == b"hello, version one\n"
    big = info["big"]
    rng = random.Random(11)
    with open(d / "big.bin", "rb", buffering=0) as f:
        fd = f.fileno()
        for _ in range(150):
            off = rng.randrange(len(big))
            n = rng.choice([1, 17, 4096, 65536, 300_000, 2 << 20])
            assert os.pread(fd, n, off) == big[off:off + n]
        assert os.pread(fd, 100, len(big) - 10) == big[-10:]
        assert os.pread(fd, 100, len(big) + 5) == b""
    # A sequential read of a different snapshot's copy (same blobs, fresh kernel cache).
    assert (snap_dir(mnt, info, 1) / "big.bin").read_bytes() == big
    sparse = (d / "sparse.bin").read_bytes()
    assert sparse == (info["src"] / "sparse.bin").read_bytes() and len(sparse) == 8 << 20


def check_metadata(mnt: Path, info: dict) -> None:
    src = info["src"]
    d = snap_dir(mnt, info, 1)
    for name in ("big.bin", "hello.txt", "empty", "sparse.bin", "sub", "sub/deeper/file.txt",
                 "link", "dangling", "fifo"):
        want, got = os.lstat(src / name), os.lstat(d / name)
        assert stat.S_IFMT(got.st_mode) == stat.S_IFMT(want.st_mode), name
        assert stat.S_IMODE(got.st_mode) == stat.S_IMODE(want.st_mode), name
        assert (got.st_uid, got.st_gid) == (want.st_uid, want.st_gid), name
        assert got.st_mtime_ns == want.st_mtime_ns, name
        if not stat.S_ISDIR(want.st_mode):
            assert got.st_size == want.st_size, name
    deep = os.lstat(d / "sub" / "deeper" / "file.txt")
    assert (deep.st_uid, deep.st_gid, stat.S_IMODE(deep.st_mode)) == (1234, 5678, 0o640)
    assert deep.st_mtime_ns == 1_600_000_000_987_654_321
    assert os.readlink(d / "link") == "hello.txt"
    assert os.readlink(d / "dangling") == "/nonexistent/target"
    hello, hard = os.stat(d / "hello.txt"), os.stat(d / "hard")
    assert hello.st_nlink == hard.st_nlink == 2 and hello.st_ino == hard.st_ino
    assert os.stat(d / "big.bin").st_nlink == 1
    assert os.fsencode(b"caf\xe9.txt") in os.listdir(os.fsencode(d))
    assert (d / os.fsdecode(b"caf\xe9.txt")).read_bytes() == b"latin-1 name\n"
    if info["xattrs"]:
        assert sorted(os.listxattr(d / "hello.txt")) == ["user.color", "user.empty"]
        assert os.getxattr(d / "hello.txt", "user.color") == b"blue"
        assert os.getxattr(d / "hello.txt", "user.empty") == b""
    with pytest.raises(OSError) as exc:
        os.getxattr(d / "hello.txt", "user.missing")
    assert exc.value.errno == errno.ENODATA
    # Inode numbers are stable for a path while mounted.
    assert os.stat(d / "big.bin").st_ino == os.stat(d / "big.bin").st_ino


def test_mount_local(mounted, local_repo, tmp_path):
    check_layout(mounted.mnt, local_repo)
    check_copy_and_reads(mounted.mnt, local_repo, tmp_path)
    check_metadata(mounted.mnt, local_repo)


@pytest.mark.parametrize("backend_kind", [k for k in selected_backend_kinds() if k != "local"])
def test_mount_s3(s3_server, repo_location, tmp_path):
    assert s3_server is not None  # the local backend is covered by test_mount_local
    info = build_repo(repo_location.url, tmp_path)
    m = Mount(repo_location.url, tmp_path / "mnt", info["cache"])
    try:
        check_layout(m.mnt, info)
        check_copy_and_reads(m.mnt, info, tmp_path)
        check_metadata(m.mnt, info)
        rc, out, err = m.stop()
        assert rc == 0, err
    finally:
        m.close()
    assert not is_mounted(str(m.mnt))


def test_writes_fail_with_erofs(mounted, local_repo):
    d = snap_dir(mounted.mnt, local_repo, 0)
    f = d / "hello.txt"
    attempts = {
        "open for writing": lambda: open(f, "r+b"),
        "append": lambda: open(f, "ab"),
        "create": lambda: open(d / "new.txt", "xb"),
        "mkdir": lambda: os.mkdir(d / "newdir"),
        "mkdir at top": lambda: os.mkdir(mounted.mnt / "snapshots" / "x"),
        "unlink": lambda: os.unlink(f),
        "rmdir": lambda: os.rmdir(d / "sub"),
        "rename": lambda: os.rename(f, d / "renamed"),
        "chmod": lambda: os.chmod(f, 0o777),
        "chown": lambda: os.chown(f, 1, 1),
        "truncate": lambda: os.truncate(f, 0),
        "utime": lambda: os.utime(f, (0, 0)),
        "symlink": lambda: os.symlink("x", d / "newlink"),
        "link": lambda: os.link(f, d / "newhard"),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
        "removexattr": lambda: os.removexattr(f, "user.color"),
        "mkfifo": lambda: os.mkfifo(d / "newfifo"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS, what
    assert f.read_bytes() == b"hello, version one\n"


def test_damaged_blob_gives_eio_not_wrong_bytes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(3).randbytes(3 << 20)
    (src / "victim.bin").write_bytes(data)
    (src / "fine.txt").write_bytes(b"undamaged\n")
    url, cache = str(tmp_path / "repo"), str(tmp_path / "cache")
    repo = Repository.init(open_backend(url), PASSWORD.encode(), SMALL_CHUNKS,
                           kdf=KdfParams(1, 8 << 20), cache_root=cache)
    snap = Archiver(repo).backup([str(src)]).snapshot
    node = find_node(repo, snap.tree, str(src / "victim.bin"))
    first, second = node["content"][0], node["content"][1]
    first_len = repo.index.lookup(first, BLOB_DATA).raw_length
    loc = repo.index.lookup(second, BLOB_DATA)
    pack = Path(url) / pack_name(loc.pack_id.hex())
    os.chmod(pack, 0o600)
    with open(pack, "r+b") as f:  # flip one byte inside the second blob's ciphertext
        f.seek(loc.offset + loc.length // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x55]))
    repo.close()
    m = Mount(url, tmp_path / "mnt", cache)
    try:
        d = m.mnt / "snapshots" / "latest" / str(src).lstrip("/")
        assert (d / "fine.txt").read_bytes() == b"undamaged\n"
        with open(d / "victim.bin", "rb", buffering=0) as f:
            assert os.pread(f.fileno(), 1000, 0) == data[:1000]  # the first blob is intact
            with pytest.raises(OSError) as exc:
                os.pread(f.fileno(), 1000, first_len + 10)
            assert exc.value.errno == errno.EIO
        with pytest.raises(OSError) as exc:
            (d / "victim.bin").read_bytes()
        assert exc.value.errno == errno.EIO
        rc, out, err = m.stop()
    finally:
        m.close()
    assert rc == 0
    assert "victim.bin" in err and "read at offset" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_even_with_open_file(local_repo, tmp_path, sig):
    locks = Path(local_repo["url"]) / "locks"
    before = set(os.listdir(locks)) if locks.exists() else set()  # other tests' mounts
    # A space in the path: the mount table escapes it, and is_mounted must still find it.
    m = Mount(local_repo["url"], tmp_path / "mount point", local_repo["cache"])
    try:
        assert is_mounted(str(m.mnt))
        assert "Now serving the repository at" in m.proc.stdout.readline()
        assert len(set(os.listdir(locks)) - before) == 1  # a shared lock while mounted
        f = open(snap_dir(m.mnt, local_repo, 0) / "big.bin", "rb", buffering=0)
        try:
            assert f.read(10) == local_repo["big"][:10]
            rc, out, err = m.stop(sig)
            assert rc == 0, err
            assert not is_mounted(str(m.mnt))
            assert set(os.listdir(locks)) == before  # ours is gone
            with pytest.raises(OSError):
                os.pread(f.fileno(), 10, 15 << 20)  # past what the kernel has cached
        finally:
            try:
                f.close()
            except OSError:  # the kernel's flush on close: the connection is gone
                pass
    finally:
        m.close()
    assert not is_mounted(str(m.mnt))
    assert err == ""


def test_sigkill_leaves_no_stale_mount(local_repo, tmp_path):
    """Even a process that cannot clean up (SIGKILL, a crash) leaves no dead mount behind:
    fusermount3's auto_unmount helper detaches it."""
    m = Mount(local_repo["url"], tmp_path / "mnt", local_repo["cache"], "--no-lock")
    try:
        m.proc.kill()
        m.proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while is_mounted(str(m.mnt)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_mounted(str(m.mnt))
    finally:
        m.close()


def test_filters_and_cli_errors(local_repo, tmp_path):
    m = Mount(local_repo["url"], tmp_path / "mnt", local_repo["cache"], "--host", "beta",
              "--json")
    try:
        assert json.loads(m.proc.stdout.readline()) == {"message_type": "mounted",
                                                         "mountpoint": str(m.mnt)}
        assert os.listdir(m.mnt / "ids") == [local_repo["snaps"][1].short_id]
        assert os.listdir(m.mnt / "hosts") == ["beta"]
        rc, _, _ = m.stop()
        assert rc == 0
    finally:
        m.close()
    env = dict(os.environ, SNAP_PASSWORD=PASSWORD, SNAP_CACHE_DIR=local_repo["cache"])
    for target, message in ((tmp_path / "missing", "does not exist"),
                            (Path(local_repo["src"]) / "hello.txt", "is not a directory")):
        proc = subprocess.run([sys.executable, "-m", "cli", "-r", local_repo["url"], "mount",
                               str(target)], env=env, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ library level


def test_layout_refresh_sees_new_snapshots(tmp_path):
    """New snapshots (with new data, so a new index file) appear after a re-listing."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"first\n")
    repo = Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD.encode(),
                           kdf=KdfParams(1, 8 << 20), cache_root=str(tmp_path / "cache"))
    snap1 = Archiver(repo, BackupOptions(time=T1)).backup([str(src)]).snapshot
    reader = Repository.open(open_backend(str(tmp_path / "repo")), PASSWORD.encode(),
                             cache_root=str(tmp_path / "cache"))
    fs = SnapshotFS(reader, SnapshotFilter(), refresh_interval=3600)
    try:
        listed = [n for n, _ in fs.readdir_plus("/snapshots")]
        assert listed == [".", "..", time_name_for(T1), "latest"]
        (src / "b.txt").write_bytes(b"brand new data\n")
        snap2 = Archiver(repo, BackupOptions(time=T2)).backup([str(src)]).snapshot
        assert [n for n, _ in fs.readdir_plus("/snapshots")] == listed  # within the interval
        fs.refresh_interval = 0
        names = [n for n, _ in fs.readdir_plus("/snapshots")]
        assert names == [".", "..", time_name_for(T1), time_name_for(T2), "latest"]
        path = f"/ids/{snap2.short_id}{src}/b.txt"
        fh = fs.open(path, os.O_RDONLY)
        assert fs.read(path, 100, 0, fh) == b"brand new data\n"
        fs.release(path, fh)
        # A forgotten snapshot disappears, also from paths resolved (and cached) before.
        old_path = f"/ids/{snap1.short_id}{src}/a.txt"
        assert fs.getattr(old_path)["st_size"] == 6
        repo.delete_snapshot(snap1.id)
        fs.refresh()
        with pytest.raises(OSError) as exc:
            fs.getattr(old_path)
        assert exc.value.errno == errno.ENOENT
        assert [n for n, _ in fs.readdir_plus("/ids")] == [".", "..", snap2.short_id]
    finally:
        fs.close()


def time_name_for(t: datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
