"""snap forget through the real CLI: policies, ids, refusals, --dry-run, --prune."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from helpers import data_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snap(repo, *args, check=True, env_extra=None):
    env = dict(os.environ, SNAP_PASSWORD="pw", SNAP_REPOSITORY=repo, **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"snap {' '.join(args)} -> {proc.returncode}: {proc.stderr}")
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture
def repo(tmp_path):
    path = str(tmp_path / "repo")
    snap(path, "init", "--pack-size", "4M", env_extra={"SNAP_CACHE_DIR": str(tmp_path / "c")})
    return path


def backup_at(repo, src, when, rnd, tmp_path):
    with open(os.path.join(src, f"file-{when[:10]}-{when[11:13]}"), "wb") as f:
        f.write(rnd.randbytes(300_000))
    snap(repo, "backup", src, "--time", when, "-q",
         env_extra={"SNAP_CACHE_DIR": str(tmp_path / "c")})


def ids_by_time(repo, tmp_path) -> dict[str, str]:
    out = snap(repo, "--json", "snapshots", env_extra={"SNAP_CACHE_DIR": str(tmp_path / "c")}).stdout
    return {s["time"][:16]: s["id"] for s in json.loads(out)}


def test_policy_dry_run_then_forget_and_prune(repo, tmp_path):
    src = str(tmp_path / "src")
    os.makedirs(src)
    rnd = random.Random(1)
    times = ["2026-10-01 09:00:00", "2026-10-02 09:00:00", "2026-10-02 18:00:00",
             "2026-10-10 09:00:00", "2026-10-20 09:00:00"]
    for t in times:
        backup_at(repo, src, t, rnd, tmp_path)
    env = {"SNAP_CACHE_DIR": str(tmp_path / "c"), "TZ": "UTC"}
    before = ids_by_time(repo, tmp_path)
    dry = snap(repo, "--json", "forget", "--keep-daily", "3", "--dry-run", env_extra=env)
    groups = json.loads(dry.stdout)
    assert len(groups) == 1
    kept = {s["time"][:16] for s in groups[0]["keep"]}
    # daily buckets newest first: 10-20, 10-10, 10-02 (its newest: 18:00)
    assert kept == {"2026-10-20T09:00", "2026-10-10T09:00", "2026-10-02T18:00"}
    assert ids_by_time(repo, tmp_path) == before  # dry run removed nothing

    size_before = data_bytes(repo)
    # Remove everything but the newest, from which every file but the last was deleted
    for name in os.listdir(src):
        if not name.startswith("file-2026-10-20"):
            os.unlink(os.path.join(src, name))
    snap(repo, "backup", src, "-q", "--time", "2026-10-21 09:00:00", env_extra=env)
    out = snap(repo, "forget", "--keep-last", "1", "--prune", env_extra=env)
    assert "removed 5 snapshots" in out.stdout
    after = ids_by_time(repo, tmp_path)
    assert list(after) == ["2026-10-21T09:00"]
    assert data_bytes(repo) < size_before * 0.5  # measurably smaller
    snap(repo, "check", "--read-data", env_extra=env)


def test_forget_by_id_and_refusals(repo, tmp_path):
    src = str(tmp_path / "src")
    os.makedirs(src)
    rnd = random.Random(2)
    env = {"SNAP_CACHE_DIR": str(tmp_path / "c")}
    for t in ("2026-01-01 00:00:00", "2026-02-01 00:00:00"):
        backup_at(repo, src, t, rnd, tmp_path)
    ids = ids_by_time(repo, tmp_path)
    first = ids["2026-01-01T00:00"]
    snap(repo, "forget", first[:8], env_extra=env)
    assert first not in ids_by_time(repo, tmp_path).values()

    def fails(*args, code=1):
        p = snap(repo, *args, check=False, env_extra=env)
        assert p.returncode == code, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
        return p.stderr

    assert "no policy" in fails("forget")
    assert "refusing to remove every snapshot" in fails("forget", "--keep-tag", "nope")
    assert "invalid" in fails("forget", "--keep-within", "5q")
    assert "either snapshot ids or a --keep-* policy" in fails("forget", "abc", "--keep-last", "1")
    assert "no snapshot matches" in fails("forget", "ffffffff")
    assert len(ids_by_time(repo, tmp_path)) == 1  # nothing removed by the failures
    snap(repo, "forget", "--keep-tag", "nope", "--unsafe-allow-remove-all", env_extra=env)
    assert ids_by_time(repo, tmp_path) == {}
