"""Repository check: structure, optionally the stored data, and what any damage affects.

Order of work (each problem becomes a ``Finding``, see checkreport.py; nothing is printed):

1. Index files and snapshots are fetched from the repository, not the cache (check verifies
   what is stored): each must hash to its name, authenticate and parse. A damaged one is
   reported by name and the check goes on without it.
2. One listing of ``data/``: every indexed pack must exist with the exact size its index
   records imply (blobs from offset 0, then the sealed header of 1 + 48 n bytes, then the
   4-byte header length).
3. Every tree reachable from a snapshot is loaded once (level by level, each level's packs
   fetched concurrently, see checktrees.py); every blob it references must be in the index.
4. Pack headers: one ranged read per pack of exactly the header's length (known from the
   index), concurrently; the decrypted records must equal the index's. Packs read in full
   (step 5) skip this.
5. ``--read-data``: packs are downloaded concurrently; each must hash (BLAKE3) to its name, its
   header must authenticate and agree with the index, and every blob must decrypt, decompress
   and hash to its id. Decryption, zstd and BLAKE3 release the GIL, so threads use every core.
6. Only when something is damaged: the trees are walked again, per snapshot, descending only
   into trees that lead to damaged blobs, to name each (snapshot, path) that depends on them.
7. ``--read-data``: the packs verified intact get today's date in the verification state
   (verifystate.py), which ``stale:x%`` rotates through.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from . import verifystate
from .affected import map_affected
from .backends.base import pack_id_from_name, pack_name
from .checkreport import ERROR, INFO, CheckProgress, CheckResult, Finding
from .checktrees import TreeSource
from .crypto import OVERHEAD, storage_id
from .errors import BackendError, IntegrityError, NotFound, UnsupportedVersion
from .index import SMALL as SMALL_INDEX, BlobLocation, MasterIndex, decode_index_file, load_numpy
from .locks import MARKER, SHARED, Lock, list_locks
from .packs import (BLOB_DATA, BLOB_TREE, BLOB_TYPES, RECORD, RECORD_SIZE, BlobCodec,
                    decode_records, encode_records, parse_header_tail, parse_pack,
                    read_pack_header)
from .snapshot import Snapshot
from .subset import SubsetSpec, select_packs
from .tree import Node, file_blobs

TRAILER_SIZE = 4


def expected_pack_size(records: bytes) -> int:
    """A pack's exact size from its 48-byte records: blob bytes, sealed header, trailer."""
    end = max((r[1] + r[2] for r in RECORD.iter_unpack(records)), default=0)
    return end + OVERHEAD + 1 + len(records) + TRAILER_SIZE


def _type_name(blob_type: int) -> str:
    return BLOB_TYPES.get(blob_type, str(blob_type))


@dataclass
class CheckOptions:
    read_data: bool = False
    subset: SubsetSpec | None = None  # implies read_data; None with read_data: every pack
    check_headers: bool = True
    workers: int = 3  # concurrent pack reads; each holds a pack (more costs memory, not speed, on 2 cores)
    max_affected: int = 1000  # (snapshot, path) pairs kept per finding
    record_state: bool = True  # update the verification state after reading data
    now: datetime | None = None  # verification time to record (tests simulate weeks)
    rng: random.Random | None = None
    hostname: str | None = None
    lock: bool = True  # take a shared lock (False for read-only access)
    lock_wait: float = 600.0  # seconds to wait for an exclusive lock to go away


class Checker:
    def __init__(self, repo, options: CheckOptions | None = None, *,
                 progress: CheckProgress | None = None,
                 on_finding: Callable[[Finding], None] | None = None) -> None:
        self.repo = repo
        self.opts = options or CheckOptions()
        self.progress = progress or CheckProgress()
        self._on_finding = on_finding
        self._lock = threading.Lock()
        self._key = repo.key
        self._codec = BlobCodec(self._key, repo.config.compression_level)
        self.result = CheckResult(findings=[])
        self._index = MasterIndex()
        self._records: dict[bytes, bytes] = {}  # indexed pack -> its records
        self._snapshots: list[Snapshot] = []
        self._present: dict[bytes, int] = {}  # listed pack -> size
        self._lost_packs: dict[bytes, Finding] = {}  # all blobs count as lost
        self._bad: dict[tuple[int, bytes], Finding] = {}  # (type, id) -> finding
        self._used_data: set[bytes] = set()
        self._trees: set[bytes] = set()
        self._missing_blobs: list[Finding] = []
        self._trees_from = TreeSource(repo, self._index, self._codec, self._present,
                                      self._pool_map)
        self._marked: set[bytes] = set()  # packs a prune marked for deletion

    # ------------------------------------------------------------------ helpers
    def _report(self, finding: Finding) -> Finding:
        with self._lock:
            self.result.findings.append(finding)
            if finding.severity == ERROR:
                self.progress.errors += 1
        if self._on_finding is not None:
            self._on_finding(finding)
        return finding

    def _error(self, kind: str, message: str, **kw) -> Finding:
        return self._report(Finding(kind, ERROR, message, **kw))

    def _pool_map(self, fn: Callable, items: Iterable) -> list:
        """``map`` over a thread pool that cancels what is queued if the caller is interrupted."""
        pool = ThreadPoolExecutor(max(1, self.opts.workers), thread_name_prefix="snap-check")
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch_verified(self, name: str) -> bytes:
        raw = self.repo.backend.get(name)
        if storage_id(raw) != name.rsplit("/", 1)[-1]:
            raise IntegrityError(f"{name}: content does not match its name (damaged)", name)
        return raw

    # ------------------------------------------------------------------ entry point
    def run(self) -> CheckResult:
        """Check under a shared lock (an immediate prune would delete packs under us)."""
        if not self.opts.lock:
            self._marked = {p for m in list_locks(self.repo) if m.kind == MARKER for p in m.packs}
            return self._run()
        lock = Lock(self.repo, SHARED, "check")
        markers = lock.acquire_shared(wait=self.opts.lock_wait)
        self._marked = {p for m in markers for p in m.packs}
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> CheckResult:
        opts = self.opts
        read_data = opts.read_data or opts.subset is not None
        self._load_index()
        self._load_snapshots()
        self._list_packs()
        self._walk_trees()
        self._information()
        selected: list[bytes] = []
        state = None
        if read_data:
            state = verifystate.load_state(self.repo)
            for name, reason in state.damaged:
                self._error("state_damaged", f"{name}: {reason} (this run replaces it)",
                            object=name)
            candidates = {p: self._present[p] for p in self._records if p in self._present}
            spec = opts.subset or SubsetSpec("all")
            selected = select_packs(spec, candidates, state.times, opts.rng)
            self.result.subset = spec.describe()
            self.result.selected_packs = len(selected)
        if opts.check_headers:
            chosen = set(selected)
            self._check_headers([p for p in self._records if p in self._present
                                 and p not in chosen and p not in self._lost_packs])
        verified = self._read_packs(selected) if selected else []
        self._map_affected()
        if state is not None and opts.record_state and verified:
            self._save_state(state, verified)
        self.progress.phase = "done"
        self.result.duration = time.monotonic() - self.progress.started
        return self.result

    # ------------------------------------------------------------------ 1. index, snapshots
    def _load_index(self) -> None:
        self.progress.phase = "index"
        def fetch(name: str):
            try:
                return name, decode_index_file(self._key, self._fetch_verified(name), name), None
            except NotFound:
                return name, None, None
            except (IntegrityError, UnsupportedVersion) as exc:
                return name, None, exc

        for _attempt in range(3):
            names = [o.name for o in self.repo.backend.list("index")]
            files = self._pool_map(fetch, names)
            # A file that vanished was superseded by a prune that ran meanwhile; its
            # successor may not have been listed yet, so list and load again.
            if all(body is not None or exc is not None for _, body, exc in files):
                break
        superseded = {s.hex() for _, body, _ in files if body for s in body["supersedes"]}
        leftovers = []
        for name, body, exc in files:
            if exc is not None:
                self._error("index_damaged", f"{exc}; the packs it lists appear unindexed "
                            "(run 'snap repair index')", object=name)
                continue
            if body is None:
                continue
            if name.split("/", 1)[1] in superseded:
                leftovers.append(name)
                continue
            self.result.index_files += 1
            for pack_id, records in body["packs"]:
                known = self._records.get(pack_id)
                if known is None:
                    self._records[pack_id] = records
                    self._index.add_pack_records(pack_id, records)
                elif known != records:
                    self._error("index_conflict", f"{name} describes pack "
                                f"{pack_name(pack_id.hex())} differently from another index "
                                "file (run 'snap repair index')", object=name)
        self._index.maybe_compact()  # small indexes stay in a dict: no numpy import
        self.result.packs = len(self._records)
        self.result.blobs = len(self._index)
        if leftovers:
            self._report(Finding("index_superseded", INFO, f"{len(leftovers)} index files are "
                                 "superseded but still present (an interrupted repair; harmless)",
                                 count=len(leftovers), objects=sorted(leftovers)))

    def _load_snapshots(self) -> None:
        self.progress.phase = "snapshots"
        names = [o.name for o in self.repo.backend.list("snapshots")]

        def fetch(name: str):
            try:
                sid = name.split("/", 1)[1]
                return Snapshot.decode(self._key, self._fetch_verified(name), sid), None
            except NotFound:
                return None, None  # forgotten meanwhile
            except (IntegrityError, UnsupportedVersion) as exc:
                return None, (name, exc)

        for snap, problem in self._pool_map(fetch, names):
            if problem is not None:
                self._error("snapshot_damaged", str(problem[1]), object=problem[0])
            elif snap is not None:
                self._snapshots.append(snap)
        self._snapshots.sort(key=lambda s: (s.time, s.id))
        self.result.snapshots = self.progress.snapshots = len(self._snapshots)

    # ------------------------------------------------------------------ 2. pack listing
    def _list_packs(self) -> None:
        self.progress.phase = "packs"
        unexpected = []
        for obj in self.repo.backend.list("data"):
            pid = pack_id_from_name(obj.name)
            if pid is None:
                unexpected.append(obj.name)
            else:
                self._present[pid] = obj.size
        pruned = []
        for pid, records in self._records.items():
            name = pack_name(pid.hex())
            blobs = len(records) // RECORD.size
            size = self._present.get(pid)
            if size is None and pid in self._marked:
                pruned.append(name)  # unused, marked, and deleted by a prune meanwhile
                continue
            if size is None:
                self._lost_packs[pid] = self._error(
                    "pack_missing", f"pack {name} is missing (the index lists {blobs} blobs in it)",
                    object=name)
                continue
            want = expected_pack_size(records)
            if size != want:
                self._lost_packs[pid] = self._error(
                    "pack_size", f"pack {name} has {size} bytes, its index implies {want}",
                    object=name)
        if pruned:
            self._report(Finding("packs_pruned", INFO, f"{len(pruned)} unused packs marked for "
                                 "deletion were deleted by a prune while checking",
                                 count=len(pruned), objects=sorted(pruned)))
        unindexed = sorted(pack_name(p.hex()) for p in self._present if p not in self._records)
        if unindexed:
            self._report(Finding("packs_unindexed", INFO, f"{len(unindexed)} packs are not in "
                                 "any index (an interrupted backup, or a lost index file: "
                                 "'snap repair index' adds them)", count=len(unindexed),
                                 objects=unindexed))
        if unexpected:
            self._report(Finding("objects_unexpected", INFO, f"{len(unexpected)} objects under "
                                 "data/ are not named like packs", count=len(unexpected),
                                 objects=sorted(unexpected)))

    # ------------------------------------------------------------------ 3. trees
    def _load_tree_reporting(self, tree_id: bytes, loc: BlobLocation | None) -> list[Node] | None:
        try:
            nodes = self._trees_from.load(tree_id, loc)
        except LookupError:
            f = self._error("blob_missing", f"tree {tree_id.hex()} is not in any index "
                            "(the directories and files below it are not checked)",
                            blob=tree_id, blob_type=BLOB_TREE)
            with self._lock:
                self._bad[(BLOB_TREE, tree_id)] = f
                self._missing_blobs.append(f)
            return None
        except (IntegrityError, UnsupportedVersion) as exc:
            f = self._error("tree_damaged", str(exc), blob=tree_id, blob_type=BLOB_TREE,
                            object=getattr(exc, "name", None))
            with self._lock:
                self._bad[(BLOB_TREE, tree_id)] = f
            return None
        except NotFound:
            return None  # its pack is missing: reported with the pack
        except BackendError as exc:
            self._error("tree_unreadable", f"tree {tree_id.hex()}: {exc}", blob=tree_id,
                        blob_type=BLOB_TREE)
            return None
        with self._lock:
            self.progress.trees += 1
        return nodes

    def _walk_trees(self) -> None:
        self.progress.phase = "trees"
        level = list(dict.fromkeys(s.tree for s in self._snapshots))
        self._trees.update(level)
        while level:
            following = []
            for tree_id, loc in self._trees_from.in_pack_order(level):
                for node in self._load_tree_reporting(tree_id, loc) or ():
                    kind = node["type"]
                    if kind == "file":
                        for bid in file_blobs(node):
                            if bid not in self._used_data:
                                self._used_data.add(bid)
                                if not self._index.has(bid, BLOB_DATA):
                                    self._missing_data_blob(bid)
                    elif kind == "dir":
                        sub = node.get("subtree")
                        if sub is not None and sub not in self._trees:
                            self._trees.add(sub)
                            following.append(sub)
            level = following
        self.result.trees = self.progress.trees

    def _missing_data_blob(self, blob_id: bytes) -> None:
        f = self._error("blob_missing", f"data blob {blob_id.hex()} is not in any index",
                        blob=blob_id, blob_type=BLOB_DATA)
        with self._lock:
            self._bad[(BLOB_DATA, blob_id)] = f
            self._missing_blobs.append(f)

    # ------------------------------------------------------------------ information
    def _information(self) -> None:
        total = sum(len(r) for r in self._records.values()) // RECORD_SIZE
        # A set of ids for small repositories (importing numpy costs more than the count);
        # numpy's sort-based unique above that, where a set of bytes would cost ~100 B a blob.
        seen: set[bytes] | None = set() if total < SMALL_INDEX else None
        unused = unused_bytes = 0
        for records in self._records.values():
            for bid, _off, length, _raw, btype, _c, _r in RECORD.iter_unpack(records):
                if seen is not None:
                    seen.add(bid)
                used = self._used_data if btype == BLOB_DATA else self._trees
                if bid not in used:
                    unused += 1
                    unused_bytes += length
        if seen is not None:
            extra = total - len(seen)
        else:
            np = load_numpy()
            ids = np.frombuffer(b"".join(self._records.values()),
                                dtype=np.dtype([("id", "V32"), ("rest", "V16")]))["id"]
            extra = total - len(np.unique(ids))
        if extra:
            self._report(Finding("blobs_duplicate", INFO, f"{extra} extra copies of blobs "
                                 "are stored (prune can remove them)", count=extra))
        if unused:
            self._report(Finding("blobs_unused", INFO, f"{unused} blobs ({unused_bytes} bytes) "
                                 "are not used by any snapshot (prune removes them)", count=unused))
        if self._missing_blobs:
            self._locate_unindexed()

    def _locate_unindexed(self) -> None:
        """Missing blobs may sit in packs no index lists: say so, so repair index is the fix."""
        orphans = [(p, s) for p, s in self._present.items() if p not in self._records]
        if not orphans:
            return

        def header(item):
            pid, size = item
            try:
                return pid, read_pack_header(self._key, self.repo.backend, pack_name(pid.hex()), size)
            except (BackendError, IntegrityError, UnsupportedVersion):
                return pid, []

        where = {e.id: pid for pid, entries in self._pool_map(header, orphans) for e in entries}
        for f in self._missing_blobs:
            pid = where.get(f.blob)
            if pid is not None:
                f.message += (f" (pack {pack_name(pid.hex())} holds it but no index lists "
                              "that pack: run 'snap repair index')")

    # ------------------------------------------------------------------ 4. headers
    def _check_header(self, pack_id: bytes) -> None:
        name = pack_name(pack_id.hex())
        records, size = self._records[pack_id], self._present[pack_id]
        tail_len = OVERHEAD + 1 + len(records) + TRAILER_SIZE
        try:
            tail = self.repo.backend.get(name, size - tail_len, tail_len)
            entries, needed = parse_header_tail(self._key, tail, size, name)
            if needed != tail_len - TRAILER_SIZE or encode_records(entries) != records:
                self._error("pack_header", f"pack {name}: header does not match the index "
                            "(run 'snap repair index')", object=name)
        except NotFound:
            if pack_id not in self._marked:  # else: pruned meanwhile, as intended
                self._lost_packs[pack_id] = self._error("pack_missing", f"pack {name} is "
                                                        "missing", object=name)
        except (IntegrityError, UnsupportedVersion) as exc:
            self._error("pack_header", f"pack {name}: header damaged: {exc}", object=name)
        except BackendError as exc:
            self._error("pack_unreadable", f"pack {name}: {exc}", object=name)
        with self._lock:
            self.progress.packs_done += 1
            self.result.headers_read += 1

    def _check_headers(self, packs: list[bytes]) -> None:
        self.progress.phase = "headers"
        self.progress.packs_total, self.progress.packs_done = len(packs), 0
        self._pool_map(self._check_header, packs)

    # ------------------------------------------------------------------ 5. data
    def _verify_pack(self, pack_id: bytes) -> bool:
        """Download a pack and verify everything in it. True when it is intact."""
        name = pack_name(pack_id.hex())
        try:
            data = self.repo.backend.get(name)
        except NotFound:
            if pack_id not in self._lost_packs and pack_id not in self._marked:
                self._lost_packs[pack_id] = self._error("pack_missing", f"pack {name} is missing",
                                                        object=name)
            return False
        except BackendError as exc:
            self._lost_packs[pack_id] = self._error("pack_unreadable", f"pack {name}: {exc}",
                                                    object=name)
            return False
        ok = pack_id not in self._lost_packs  # a wrong size is damage even if blobs are fine
        self._lost_packs.pop(pack_id, None)  # read in full: blob verdicts below are precise
        if storage_id(data) != pack_id.hex():
            ok = False
            self._error("pack_name", f"pack {name}: content does not match its name (damaged)",
                        object=name)
        records = self._records[pack_id]
        try:
            header = parse_pack(self._key, data, name)
            if encode_records(header) != records:
                ok = False
                self._error("pack_header", f"pack {name}: header does not match the index",
                            object=name)
        except (IntegrityError, UnsupportedVersion) as exc:
            ok = False
            self._error("pack_header", f"pack {name}: header damaged: {exc}", object=name)
        view = memoryview(data)
        for e in decode_records(records, name):
            what = f"{_type_name(e.type)} blob {e.id.hex()} in {name}"
            try:
                if e.offset + e.length > len(data):
                    raise IntegrityError(f"{what}: pack is shorter than the index says")
                self._codec.decode(e, view[e.offset:e.offset + e.length], what)
            except Exception as exc:  # any failure of one blob is a finding, not a crash
                ok = False
                msg = str(exc) if isinstance(exc, (IntegrityError, UnsupportedVersion)) \
                    else f"{what}: {type(exc).__name__}: {exc}"
                f = self._error("blob_damaged", msg, object=name, blob=e.id, blob_type=e.type)
                with self._lock:
                    self._bad[(e.type, e.id)] = f
        with self._lock:
            self.progress.packs_done += 1
            self.progress.bytes_done += len(data)
            self.result.packs_read += 1
            self.result.bytes_read += len(data)
            self.result.read_packs.append(name)
        return ok

    def _read_packs(self, packs: list[bytes]) -> list[bytes]:
        self.progress.phase = "read"
        self.progress.packs_total, self.progress.packs_done = len(packs), 0
        self.progress.bytes_total = sum(self._present.get(p, 0) for p in packs)
        self.progress.bytes_done = 0
        results = self._pool_map(self._verify_pack, packs)
        return [p for p, ok in zip(packs, results) if ok]

    # ------------------------------------------------------------------ 6. affected paths
    def _lost(self) -> dict[tuple[int, bytes], Finding]:
        bad = dict(self._bad)
        if not self._lost_packs:
            return bad
        intact: dict[tuple[int, bytes], bool] = {}
        for pid, records in self._records.items():  # copies elsewhere keep a blob available
            if pid not in self._lost_packs:
                for r in RECORD.iter_unpack(records):
                    intact[(r[4], r[0])] = True
        for pid, finding in self._lost_packs.items():
            for r in RECORD.iter_unpack(self._records[pid]):
                key = (r[4], r[0])
                if key not in bad and key not in intact:
                    bad[key] = finding
        return bad

    def _map_affected(self) -> None:
        bad = self._lost()
        if bad:
            self.progress.phase = "affected"
            map_affected(self._snapshots, bad, self._trees_from.load, self.opts.max_affected)

    # ------------------------------------------------------------------ 7. state
    def _save_state(self, state: verifystate.LoadedState, verified: list[bytes]) -> None:
        self.progress.phase = "state"
        now = self.opts.now or datetime.now(timezone.utc)
        times = {p: t for p, t in state.times.items() if p in self._present}
        stamp = int(now.timestamp())
        for p in verified:
            times[p] = stamp
        host = self.opts.hostname or socket.gethostname()
        name, warnings = verifystate.save_state(self.repo, state, times, hostname=host, now=now)
        self.result.state_object = name
        self.result.warnings.extend(warnings)


def check(repo, options: CheckOptions | None = None, **kwargs) -> CheckResult:
    """Run a check; see ``Checker``."""
    return Checker(repo, options, **kwargs).run()
