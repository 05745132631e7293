"""Access times: not stored by default (restic's behaviour; borg's too), so reading files
between two backups changes no tree; stored with ``--with-atime`` and then restored.
Without a stored atime, restore gives files their mtime as atime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dedupe.archiver import Archiver, BackupOptions
from dedupe.backends.local import LocalBackend
from dedupe.crypto import KdfParams
from dedupe.repository import Repository
from dedupe.restorer import Restorer
from dedupe.walker import find_node, walk

ROOT = Path(__file__).resolve().parent.parent
OLD_ATIME = 1_600_000_000_000_000_000  # 2020, before the mtime below: relatime will move it
MTIME = 1_700_000_000_123_456_789


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for rel in ("a.txt", "sub/b.txt"):
        (src / rel).write_bytes(rel.encode() * 100)
        os.utime(src / rel, ns=(OLD_ATIME, MTIME))
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", kdf=KdfParams(1, 8 << 20),
                           cache_root=str(tmp_path / "cache"))
    return src, repo


def read_all(src: Path) -> None:
    """Read every file the ordinary way (no O_NOATIME), as a web server or cron job would."""
    for p in src.rglob("*.txt"):
        p.read_bytes()


def subtree(repo, snap, src: Path) -> bytes:
    return find_node(repo, snap.tree, os.fsencode(str(src)))["subtree"]


def test_default_backup_ignores_atime_and_restore_uses_mtime(setup, tmp_path):
    src, repo = setup
    first = Archiver(repo).backup([str(src)]).snapshot
    read_all(src)
    if os.stat(src / "a.txt").st_atime_ns == OLD_ATIME:
        pytest.skip("this file system does not update atime on read (noatime)")
    second = Archiver(repo).backup([str(src)])
    # (the directories above src hold the repository, so only src down stays the same)
    assert subtree(repo, second.snapshot, src) == subtree(repo, first, src)
    assert all("atime" not in node for _, node in walk(repo, first.tree))

    Restorer(repo).restore(second.snapshot, str(tmp_path / "out"))
    restored = tmp_path / "out" / str(src).lstrip("/") / "sub" / "b.txt"
    st = os.stat(restored)
    assert st.st_mtime_ns == MTIME and st.st_atime_ns == MTIME


def test_with_atime_stores_and_restores_it(setup, tmp_path):
    src, repo = setup
    opts = BackupOptions(with_atime=True)
    first = Archiver(repo, opts).backup([str(src)]).snapshot
    nodes = {os.path.basename(p): n for p, n in walk(repo, first.tree)}
    assert nodes[b"a.txt"]["atime"] == OLD_ATIME
    Restorer(repo).restore(first, str(tmp_path / "out"))
    restored = tmp_path / "out" / str(src).lstrip("/") / "a.txt"
    assert os.stat(restored).st_atime_ns == OLD_ATIME

    read_all(src)
    if os.stat(src / "a.txt").st_atime_ns == OLD_ATIME:
        pytest.skip("this file system does not update atime on read (noatime)")
    second = Archiver(repo, BackupOptions(with_atime=True)).backup([str(src)]).snapshot
    assert subtree(repo, second, src) != subtree(repo, first, src)


def test_cli_with_atime_flag(setup, tmp_path):
    src, repo = setup
    env = dict(os.environ, SNAP_PASSWORD="pw", SNAP_CACHE_DIR=str(tmp_path / "clicache"))
    proc = subprocess.run([sys.executable, "-m", "cli", "-r", str(tmp_path / "repo"), "-q",
                           "backup", "--with-atime", str(src)], cwd=ROOT, env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    repo2 = Repository.open(LocalBackend(str(tmp_path / "repo")), b"pw",
                            cache_root=str(tmp_path / "cache2"))
    snap = repo2.list_snapshots()[-1]
    nodes = {os.path.basename(p): n for p, n in walk(repo2, snap.tree)}
    assert nodes[b"a.txt"]["atime"] == OLD_ATIME
