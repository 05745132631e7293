"""Prune: delete packs no snapshot needs and repack mostly-unused ones, safely beside backups.

Two modes, chosen by who else is active (see locks.py for the protocol):

- immediate: no other live lock. Prune takes the exclusive lock and frees space in this run.
- deferred: other clients (backups) are active. Prune never deletes anything a running backup
  could come to use: it writes a delete marker naming the packs it found unused; backups
  that start later never dedupe against marked packs; a later prune (once every lock older
  than the marker is gone) deletes the marked packs that are still unused and keeps the rest.

Within a run the order is fixed so that a crash at any instant leaves every remaining snapshot
complete: (1) check the locks and markers, (2) list snapshots and collect the blobs they use,
(3) load the index afresh (so every listed snapshot's blobs are visible), (4) list packs,
(5) repack: copy still-used blobs out of packs about to go, into new packs plus an index file,
(6) write new index files that supersede the old ones (the last new file carries the
``supersedes`` list, so the old ones stay valid until every new one exists), (7) delete packs,
(8) delete the superseded index files and processed markers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from .backends.base import pack_id_from_name, pack_name
from .errors import IntegrityError, NotFound
from .index import BlobLocation
from .locks import EXCLUSIVE, MARKER, SHARED, Lock, list_locks, remove_lock, write_marker
from .packs import BLOB_DATA, BLOB_TREE, BlobEntry
from .tree import file_blobs
from .walker import load_tree

INDEX_FILE_PACKS = 4000  # packs per new index file (keeps single files a few MB)


@dataclass
class PruneOptions:
    max_unused: float = 0.05  # tolerated unused share, relative to the used bytes (restic's rule)
    max_repack_size: int | None = None
    dry_run: bool = False
    repack_trees: bool = True  # tree packs are small and cached: always keep them tight


@dataclass
class PackUsage:
    size: int = 0  # stored bytes of blobs
    used: int = 0
    unused: int = 0
    used_blobs: list[tuple[bytes, BlobLocation]] = field(default_factory=list)
    unused_blobs: int = 0
    blob_type: int = BLOB_DATA


@dataclass
class PruneResult:
    mode: str = "immediate"  # or "deferred", "dry-run"
    snapshots: int = 0
    packs_total: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_marked: int = 0
    packs_kept_from_markers: int = 0
    orphan_packs: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0
    bytes_repacked: int = 0
    bytes_unused_after: int = 0
    markers_processed: int = 0
    index_files_written: int = 0


def used_blobs(repo, snapshots, progress: Callable[[int], None] | None = None) -> set[bytes]:
    """Every blob id (trees and data) reachable from ``snapshots``."""
    used: set[bytes] = set()
    stack = [s.tree for s in snapshots]
    while stack:
        tid = stack.pop()
        if tid in used:
            continue
        used.add(tid)
        for node in load_tree(repo, tid):
            if node["type"] == "dir" and node.get("subtree"):
                stack.append(node["subtree"])
            used.update(file_blobs(node))
        if progress:
            progress(len(used))
    return used


class Pruner:
    def __init__(self, repo, options: PruneOptions | None = None, *,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.repo = repo
        self.opts = options or PruneOptions()
        self.result = PruneResult()
        self._event = on_event or (lambda msg: None)

    # ------------------------------------------------------------------ planning
    def _usage(self, used: set[bytes], marked: set[bytes]) -> dict[bytes, PackUsage]:
        """Per-pack used/unused bytes. Of a blob stored several times, the copy kept is one
        outside marked packs when there is one, so marked packs drain instead of refilling."""
        packs: dict[bytes, PackUsage] = defaultdict(PackUsage)
        kept: set[bytes] = set()
        blobs = list(self.repo.index.iter_blobs())
        blobs.sort(key=lambda b: b[1].pack_id in marked)  # stable: unmarked copies first
        for bid, loc in blobs:
            u = packs[loc.pack_id]
            u.size += loc.length
            u.blob_type = loc.type
            if bid in used and bid not in kept:
                kept.add(bid)
                u.used += loc.length
                u.used_blobs.append((bid, loc))
            else:
                u.unused += loc.length
                u.unused_blobs += 1
        missing = used - kept
        if missing:
            sample = next(iter(missing)).hex()[:16]
            raise IntegrityError(f"{len(missing)} blobs used by snapshots are not in the index "
                                 f"(e.g. {sample}); run 'snap check' and 'snap repair index' "
                                 "before pruning")
        return packs

    def _choose_repack(self, usage: dict[bytes, PackUsage], exclude: set[bytes]) -> set[bytes]:
        partial = [(pid, u) for pid, u in usage.items()
                   if u.used and u.unused and pid not in exclude]
        chosen: set[bytes] = set()
        budget = self.opts.max_repack_size
        if self.opts.repack_trees:
            for pid, u in partial:
                if u.blob_type == BLOB_TREE:
                    chosen.add(pid)
        used_total = sum(u.used for u in usage.values())
        unused_left = sum(u.unused for pid, u in partial if pid not in chosen)
        limit = self.opts.max_unused * used_total
        for pid, u in sorted(partial, key=lambda x: x[1].unused / x[1].size, reverse=True):
            if unused_left <= limit:
                break
            if pid in chosen:
                continue
            if budget is not None:
                if u.size > budget:
                    continue
                budget -= u.size
            chosen.add(pid)
            unused_left -= u.unused
        self.result.bytes_unused_after = max(unused_left, 0)
        return chosen

    # ------------------------------------------------------------------ entry point
    def run(self) -> PruneResult:
        repo = self.repo
        res = self.result
        if self.opts.dry_run:
            res.mode = "dry-run"
            self._execute(lock=None, immediate=True)
            return res
        lock = Lock(repo, EXCLUSIVE, "prune")
        if lock.try_exclusive() is None:
            lock = Lock(repo, SHARED, "prune")
            lock.acquire_shared()
            res.mode = "deferred"
            self._event("other clients are active: unused packs are marked now and deleted "
                        "by a later prune")
            try:
                self._execute(lock, immediate=False)
            finally:
                lock.release()
        else:
            try:
                self._execute(lock, immediate=True)
            finally:
                lock.release()
        return res

    def _execute(self, lock: Lock | None, immediate: bool) -> None:
        repo, res, dry = self.repo, self.result, self.opts.dry_run
        # (1) locks and markers, before the snapshot listing (see module docstring)
        locks = list_locks(repo, skip=lock.info.id if lock is not None else "")
        markers = [lk for lk in locks if lk.kind == MARKER]
        live = [lk for lk in locks if lk.kind != MARKER and not lk.stale()]
        ripe = markers if immediate else [m for m in markers
                                          if all(lk.created > m.created for lk in live)]
        waiting = {p for m in markers if m not in ripe for p in m.packs}
        # (2) snapshots and the blobs they use
        self._event("loading snapshots and walking trees")
        snapshots = repo.list_snapshots()
        res.snapshots = len(snapshots)
        # (3) a fresh index: every listed snapshot's index files exist by now
        repo.reload_index()
        used = used_blobs(repo, snapshots)
        usage = self._usage(used, marked={p for m in markers for p in m.packs})
        index_ids = repo.listed_index_ids()  # superseded leftovers too: see listed_index_ids
        # (4) packs in storage
        # Objects not named like packs are not ours to delete (check reports them).
        stored = {pid: o.size for o in repo.backend.list("data")
                  if (pid := pack_id_from_name(o.name)) is not None}
        res.packs_total = len(stored)
        orphans = {p for p in stored if p not in usage}
        res.orphan_packs = len(orphans)
        unused = {p for p, u in usage.items() if not u.used}
        ripe_packs = {p for m in ripe for p in m.packs}
        if immediate:
            delete_now = unused | orphans
            repack = self._choose_repack(usage, exclude=set())
        else:
            # Only what a ripe marker named and is still unused (or still unindexed).
            delete_now = {p for p in ripe_packs if p in unused or (p in orphans and p in stored)}
            res.packs_kept_from_markers = len(ripe_packs - delete_now)
            repack = self._choose_repack(usage, exclude=waiting | ripe_packs)
        res.packs_repacked = len(repack)
        res.bytes_repacked = sum(usage[p].used for p in repack)
        res.blobs_removed = sum(usage[p].unused_blobs for p in (delete_now | repack) if p in usage)
        if dry:
            res.packs_deleted = len(delete_now)
            res.bytes_freed = sum(stored.get(p, 0) for p in delete_now) + \
                sum(usage[p].unused for p in repack)
            return
        # (5) repack
        repack_index_ids = self._repack(repack, usage) if repack else []
        if immediate:
            gone = delete_now | repack
        else:
            new_marked = (unused | orphans | repack) - waiting - ripe_packs
            if new_marked:
                write_marker(repo, new_marked)
                res.packs_marked = len(new_marked)
            gone = delete_now
        if gone:
            # (6) superseding index without the packs about to go
            # Every pack the index knows now (repack's new packs included) but the doomed.
            keep = set(repo.index.packs()) - gone
            res.index_files_written += write_full_index(
                repo, keep, supersedes=index_ids | set(repack_index_ids))
            # (7) delete packs
            for p in gone:
                self._delete(pack_name(p.hex()))
                if repo.cache is not None:
                    repo.cache.remove(pack_name(p.hex()))
            res.packs_deleted = len(gone - repack)
            res.bytes_freed = sum(stored.get(p, 0) for p in gone) - res.bytes_repacked
            # (8) superseded index files, processed markers
            for iid in index_ids | set(repack_index_ids):
                self._delete(f"index/{iid}")
        for m in ripe:
            remove_lock(repo, m.id)
        res.markers_processed = len(ripe)

    # ------------------------------------------------------------------ steps
    def _delete(self, name: str) -> None:
        try:
            self.repo.backend.delete(name)
        except NotFound:
            pass  # another prune got there first

    def _repack(self, repack: set[bytes], usage: dict[bytes, PackUsage]) -> list[str]:
        repo = self.repo
        self._event(f"repacking {len(repack)} packs")
        with repo.new_saver() as saver:
            for pid in sorted(repack):
                u = usage[pid]
                name = pack_name(pid.hex())
                data = repo.backend.get(name)
                for bid, loc in u.used_blobs:
                    stored = data[loc.offset:loc.offset + loc.length]
                    plain = repo.codec.decode(loc.entry(bid), stored, f"blob {bid.hex()[:16]} in {name}")
                    saver.save(loc.type, bid, plain, force=True)
            saver.flush()
            return list(saver.index_files)


def write_full_index(repo, keep: set[bytes], supersedes: set[str]) -> int:
    """Write index files for every kept pack, the last of them naming what it supersedes
    (the old files stay valid until every new one exists); returns how many were written.
    Prune writes one without the packs it deletes, and so does ``repair packs``."""
    entries: dict[bytes, list[BlobEntry]] = defaultdict(list)
    for bid, loc in repo.index.iter_blobs():
        if loc.pack_id in keep:
            entries[loc.pack_id].append(loc.entry(bid))
    # Records in pack order: an index entry is then a byte copy of the pack header.
    packs = sorted((pid, sorted(es, key=lambda e: e.offset)) for pid, es in entries.items())
    chunks = [packs[i:i + INDEX_FILE_PACKS] for i in range(0, len(packs), INDEX_FILE_PACKS)] or [[]]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        repo.write_index(chunk, supersedes=[bytes.fromhex(s) for s in supersedes] if last else ())
    return len(chunks)
