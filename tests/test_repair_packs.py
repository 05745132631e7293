"""repair packs on real repositories: a pack with one rotten blob gives up that blob only.

Uses test_check.py's repository (two snapshots, ~50 small packs) and its helpers; every
command runs as the real CLI in a subprocess, except where a crash is simulated.
"""

from __future__ import annotations

import json
import os

import pytest

from dedupe import repairpacks
from dedupe.packs import BLOB_DATA
from dedupe.walker import walk
from helpers import tree_digest
from test_check import blob_place, env, open_repo, restore_latest, snap, template  # noqa: F401


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
