"""Repairs: rebuild the index from pack headers; rewrite snapshots around lost data.

``repair_index``: every pack header holds the same 48-byte records an index file does, so the
index can always be rebuilt from ``data/``: list it once, read each header with one ranged read
(concurrently), write new index files that name every existing index file in ``supersedes``,
and only then delete the old ones. A crash at any point leaves a loadable repository: before
the new files exist the old ones rule, afterwards the old ones are ignored as superseded.
A pack whose header cannot be read keeps its entry from a readable old index file when its size
agrees with it; otherwise it is left out and reported (its blobs are then lost: see below).

``repair_snapshots`` (restic's semantics): a new snapshot is written in which every file whose
content references a blob that is not indexed, or whose pack is gone from ``data/``, keeps only
its available blobs (its size shrinks to match; holes stay), and a directory whose tree cannot
be loaded becomes an empty directory. The new snapshot keeps time, host, paths and parent, gains
the tag ``repaired`` and records the first original in ``original``. Originals are kept unless
``forget``; a snapshot whose root tree is unreadable cannot be repaired and is only removed
with ``forget``. Snapshots without damage are left alone.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .backends.base import pack_id_from_name, pack_name
from .checker import expected_pack_size
from .errors import BackendError, IntegrityError, LockError, NotFound, SnapError, UnsupportedVersion
from .index import decode_index_file
from .locks import EXCLUSIVE, MARKER, Lock, list_locks
from .packs import BLOB_DATA, BLOB_TREE, BlobEntry, decode_records, read_pack_header
from .snapshot import Snapshot
from .tree import Node, canonical, decode_tree, encode_tree

MAX_RECORDS_PER_INDEX = 100_000  # about 5 MB per index file


@dataclass
class RepairIndexResult:
    packs: int = 0
    blobs: int = 0
    written: list[str] = field(default_factory=list)  # new index file names
    removed: list[str] = field(default_factory=list)  # old index file names deleted
    from_old_index: list[str] = field(default_factory=list)  # packs kept from an old index
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (pack name, reason)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"message_type": "summary", "packs": self.packs, "blobs": self.blobs,
                "index_files_written": self.written, "index_files_removed": self.removed,
                "packs_from_old_index": self.from_old_index,
                "packs_skipped": [{"pack": n, "reason": r} for n, r in self.skipped],
                "warnings": self.warnings}


def _old_records(repo, names: list[str]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name in names:
        try:
            body = decode_index_file(repo.key, repo.backend.get(name), name)
        except (BackendError, IntegrityError, UnsupportedVersion):
            continue
        for pid, records in body["packs"]:
            out.setdefault(pid, records)
    return out


@contextmanager
def exclusively(repo, command: str, lock: bool = True) -> Iterator[None]:
    """Run the body under the exclusive lock (unless ``lock`` is false), released after."""
    held = exclusive_lock(repo, command) if lock else None
    try:
        yield
    finally:
        if held is not None:
            held.release()


def exclusive_lock(repo, command: str) -> Lock:
    """Repairs rewrite what every other client relies on: they run alone."""
    lock = Lock(repo, EXCLUSIVE, command)
    if lock.try_exclusive() is None:
        live = [lk for lk in list_locks(repo) if lk.kind != MARKER and not lk.stale()]
        holder = live[0].describe() if live else "another client"
        raise LockError(f"repository is in use ({holder}); {command} needs exclusive access: "
                        "retry when it is done, or remove stale locks with 'snap unlock'")
    return lock


def repair_index(repo, *, workers: int = 8, lock: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> RepairIndexResult:
    """Rebuild the index from pack headers. ``progress(done, total)`` after each pack."""
    with exclusively(repo, "repair index", lock):
        return _repair_index(repo, workers, progress)


def _repair_index(repo, workers: int,
                  progress: Callable[[int, int], None] | None) -> RepairIndexResult:
    result = RepairIndexResult()
    old = sorted(o.name for o in repo.backend.list("index"))
    fallback = _old_records(repo, old)
    packs = []
    for obj in repo.backend.list("data"):
        pid = pack_id_from_name(obj.name)
        if pid is None:
            result.warnings.append(f"{obj.name}: not named like a pack, ignored")
        else:
            packs.append((pid, obj.size))
    packs.sort()
    done = 0

    def read(item: tuple[bytes, int]) -> tuple[bytes, list[BlobEntry] | None, str]:
        pid, size = item
        name = pack_name(pid.hex())
        try:
            return pid, read_pack_header(repo.key, repo.backend, name, size), ""
        except NotFound:
            return pid, None, "deleted while repairing"
        except (IntegrityError, UnsupportedVersion, BackendError) as exc:
            records = fallback.get(pid)
            if records is not None and expected_pack_size(records) == size:
                return pid, decode_records(records, name), "from-old-index"
            return pid, None, f"header unreadable ({exc})"

    entries: list[tuple[bytes, list[BlobEntry]]] = []
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="snap-repair") as pool:
        futures = [pool.submit(read, p) for p in packs]
        try:
            for fut in futures:
                pid, found, note = fut.result()
                name = pack_name(pid.hex())
                if found is None:
                    result.skipped.append((name, note))
                else:
                    entries.append((pid, found))
                    if note:
                        result.from_old_index.append(name)
                done += 1
                if progress:
                    progress(done, len(packs))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    supersedes = [bytes.fromhex(n.split("/", 1)[1]) for n in old]
    batch: list[tuple[bytes, list[BlobEntry]]] = []
    records = 0
    for pid, found in entries:
        batch.append((pid, found))
        records += len(found)
        result.packs += 1
        result.blobs += len(found)
        if records >= MAX_RECORDS_PER_INDEX:
            # Not superseding yet: until the last new file exists the old ones must rule.
            result.written.append(f"index/{repo.write_index(batch)}")
            batch, records = [], 0
    # The last file, possibly empty, names what the new files supersede.
    result.written.append(f"index/{repo.write_index(batch, supersedes)}")
    for name in old:  # only now that the new files are durable
        try:
            repo.backend.delete(name)
            result.removed.append(name)
        except NotFound:
            pass
        except BackendError as exc:
            result.warnings.append(f"cannot delete {name} ({exc}); it is superseded and ignored")
    repo.reload_index()  # this process continues with the rebuilt index
    return result


# ---------------------------------------------------------------------------- snapshots


@dataclass
class SnapshotRepair:
    original: Snapshot
    status: str  # "ok" (nothing lost), "repaired", "unrepairable"
    changes: list[tuple[bytes, str]] = field(default_factory=list)  # (path, what was done)
    new: Snapshot | None = None
    forgotten: bool = False

    def to_json(self) -> dict:
        return {"snapshot": self.original.id, "status": self.status,
                "new_snapshot": self.new.id if self.new else None, "forgotten": self.forgotten,
                "changes": [{"path": p.decode("utf-8", "backslashreplace"), "change": c}
                            for p, c in self.changes]}


class _Rewriter:
    def __init__(self, repo, present: set[bytes], saver) -> None:
        self.repo = repo
        self.present = present
        self.saver = saver  # None on a dry run
        self.memo: dict[bytes, tuple[bytes | None, list[tuple[bytes, str]]]] = {}

    def _raw_length(self, blob_id: bytes) -> int | None:
        loc = self.repo.index.lookup(blob_id, BLOB_DATA)
        if loc is None or loc.pack_id not in self.present:
            return None
        return loc.raw_length

    def _save(self, nodes: list[Node]) -> bytes:
        data = encode_tree(nodes)
        tree_id = self.repo.key.blob_id(data)
        if self.saver is not None:
            self.saver.save(BLOB_TREE, tree_id, data)
        return tree_id

    def _load(self, tree_id: bytes) -> list[Node] | None:
        loc = self.repo.index.lookup(tree_id, BLOB_TREE)
        if loc is None or loc.pack_id not in self.present:
            return None
        try:
            return decode_tree(self.repo.load_blob(BLOB_TREE, tree_id), f"tree {tree_id.hex()}")
        except SnapError:
            return None

    def _file(self, node: Node) -> tuple[Node, str | None]:
        kept, size, lost = [], 0, False
        for item in node.get("content") or ():
            if isinstance(item, int):
                kept.append(item)
                size += item
                continue
            raw = self._raw_length(item)
            if raw is None:
                lost = True
            else:
                kept.append(item)
                size += raw
        if not lost and size == node.get("size", 0):
            return node, None
        new = dict(node)
        new["content"], new["size"] = kept, size
        return canonical(new), "removed missing content" if lost else "fixed incorrect size"

    def tree(self, tree_id: bytes) -> tuple[bytes | None, list[tuple[bytes, str]]]:
        """(new tree id or None when unreadable, changes with paths relative to this tree)."""
        if tree_id in self.memo:
            return self.memo[tree_id]
        nodes = self._load(tree_id)
        if nodes is None:
            self.memo[tree_id] = (None, [])
            return self.memo[tree_id]
        changes: list[tuple[bytes, str]] = []
        out: list[Node] = []
        changed = False
        for node in nodes:
            here = b"/" + node["name"]
            if node["type"] == "file":
                new, what = self._file(node)
                if what:
                    changes.append((here, what))
                    changed = True
                node = new
            elif node["type"] == "dir" and node.get("subtree") is not None:
                sub, below = self.tree(node["subtree"])
                if sub is None:
                    sub = self._save([])
                    changes.append((here, "replaced with empty directory"))
                changes.extend((here + p, what) for p, what in below)
                if sub != node["subtree"]:
                    node = dict(node)
                    node["subtree"] = sub
                    changed = True
            out.append(node)
        result = (self._save(out) if changed else tree_id, changes)
        self.memo[tree_id] = result
        return result


def repair_snapshots(repo, snapshots: list[Snapshot], *, forget: bool = False,
                     dry_run: bool = False, lock: bool = True,
                     on_snapshot: Callable[[SnapshotRepair], None] | None = None,
                     ) -> list[SnapshotRepair]:
    """Rewrite ``snapshots`` without their lost data (see the module docstring)."""
    with exclusively(repo, "repair snapshots", lock and not dry_run):
        return _repair_snapshots(repo, snapshots, forget, dry_run, on_snapshot)


def _repair_snapshots(repo, snapshots: list[Snapshot], forget: bool, dry_run: bool,
                      on_snapshot: Callable[[SnapshotRepair], None] | None,
                      ) -> list[SnapshotRepair]:
    present = {pid for pid in (pack_id_from_name(o.name) for o in repo.backend.list("data")) if pid}
    repo.reload_index()  # as of now, under the lock (a damaged index file raises here)
    results: list[SnapshotRepair] = []
    saver = None if dry_run else repo.new_saver()
    try:
        rewriter = _Rewriter(repo, present, saver)
        for snap in snapshots:
            new_root, changes = rewriter.tree(snap.tree)
            if new_root is None:
                results.append(SnapshotRepair(snap, "unrepairable",
                                              [(b"/", "root directory unreadable")]))
            elif new_root == snap.tree:
                results.append(SnapshotRepair(snap, "ok"))
            else:
                tags = list(snap.tags) + ([] if "repaired" in snap.tags else ["repaired"])
                new = Snapshot(time=snap.time, tree=new_root, paths=list(snap.paths),
                               hostname=snap.hostname, username=snap.username, uid=snap.uid,
                               gid=snap.gid, tags=tags, parent=snap.parent,
                               original=snap.original or snap.id, summary=dict(snap.summary))
                results.append(SnapshotRepair(snap, "repaired", changes, new))
        if saver is not None:
            saver.flush()  # trees (and their index) before the snapshots naming them
    finally:
        if saver is not None:
            saver.close()
    for r in results:
        if not dry_run and r.new is not None:
            repo.save_snapshot(r.new)
        if forget and r.status != "ok":
            if not dry_run:
                repo.delete_snapshot(r.original.id)
            r.forgotten = True
        if on_snapshot is not None:
            on_snapshot(r)
    return results
