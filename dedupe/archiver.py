"""Backup: walk source paths, store new file content and trees, write a snapshot.

The caller's thread walks the tree; files that must be read are queued to ``FileSaver``,
whose threads read, chunk and hash them; new blobs go to ``BlobSaver``, whose threads
compress, encrypt and upload them. Trees are built bottom-up: a directory's tree is written
once its files are back, so memory holds only the directories on the current path. A file
whose size, mtime, ctime and inode equal its entry in the parent snapshot (and whose blobs
are all still indexed) is not read again; a directory whose new nodes equal the parent's
keeps the parent's tree id without encoding it again.

Absolute source paths are kept whole: backing up ``/var/www`` gives a root tree holding
``var`` holding ``www``, like restic, so restores recreate them under the target.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any, BinaryIO, Callable

from .earlyreads import Admission, EarlyReads, on_lane
from .errors import Interrupted, SourceError
from .exclusions import Exclusions
from .filesaver import WHOLE_FILE_MAX, DirReads, FileSaver, ReadSlot
from .filters import PathMatcher
from .locks import SHARED, Lock
from .prefetch import POSITION_EVERY, Prefetcher
from .packs import BLOB_DATA, BLOB_TREE
from .repository import Repository, default_identity
from .snapshot import Snapshot
from .statahead import StatAhead
from .tree import Node, decode_tree, encode_tree, node_from_stat, node_type, read_xattrs

# Stat-ahead (statahead.py) pays for its process start (~15 ms of the other core) only when
# the parent snapshot had about this many entries or more.
STAT_AHEAD_MIN_ENTRIES = 2000
_NAME = attrgetter("name")


@dataclass
class BackupOptions:
    excludes: list[PathMatcher] = field(default_factory=list)  # any match excludes
    exclude_if_present: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    exclude_caches: bool = False
    exclude_larger_than: int | None = None
    one_file_system: bool = False
    force: bool = False  # re-read every file
    ignore_ctime: bool = False
    ignore_inode: bool = False
    dry_run: bool = False
    tags: list[str] = field(default_factory=list)
    hostname: str | None = None
    time: datetime | None = None
    parent: Snapshot | None = None  # None: the latest with the same host and paths
    no_parent: bool = False
    lock_wait: float = 600.0  # seconds to wait while a prune holds the exclusive lock
    read_concurrency: int = 2  # threads reading files (restic's --read-concurrency)
    with_atime: bool = False  # store access times (restic's --with-atime); see node_from_stat
    count_totals: bool = False  # fill BackupProgress.total_* (for an ETA); see statahead.py


@dataclass
class BackupProgress:
    """Counters the producer updates; a UI reads them from another thread whenever it likes."""
    files_done: int = 0
    dirs_done: int = 0
    bytes_done: int = 0  # bytes of files processed (read or unchanged)
    bytes_read: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    errors: int = 0
    current_path: bytes = b""  # set per entry; decoded only when a UI asks (``current``)
    started: float = field(default_factory=time.monotonic)
    # With BackupOptions.count_totals: regular files and bytes below the sources, counted
    # beside the backup (excluded ones too: an estimate); totals_done once all are counted.
    total_files: int = 0
    total_bytes: int = 0
    totals_done: bool = False

    @property
    def current(self) -> str:
        return os.fsdecode(self.current_path)


@dataclass
class BackupResult:
    snapshot: Snapshot | None  # None on --dry-run
    summary: dict[str, Any]
    warnings: list[str]

    @property
    def complete(self) -> bool:
        return not self.warnings


def _fs(path: bytes) -> str:
    return os.fsdecode(path)


def _sources(sources: list[str]) -> tuple[list[str], list[str]]:
    """(every source made absolute and normalised, sorted; those that exist)."""
    abs_paths = sorted({os.path.normpath(os.path.abspath(s)) for s in sources})
    return abs_paths, [s for s in abs_paths if os.path.lexists(s)]


def _stat_ahead_limit(parent: Snapshot | None, opts: BackupOptions) -> int | None:
    """Entries a warming-only helper may walk, or None when none is worth starting: without
    a parent (or with --force) every file is read anyway, and a small tree is walked fast."""
    if parent is None or opts.force:
        return None
    s = parent.summary if isinstance(parent.summary, dict) else {}
    counts = [s.get(k) for k in ("total_files_processed", "dirs_new", "dirs_changed",
                                 "dirs_unmodified")]
    entries = sum(c for c in counts if isinstance(c, int))
    return 2 * entries + 10_000 if entries >= STAT_AHEAD_MIN_ENTRIES else None


def start_stat_ahead(sources: list[str], opts: BackupOptions) -> StatAhead | None:
    """The stat-ahead helper for a backup of ``sources`` with ``opts``, started before the
    repository is opened, so that its walk overlaps the key derivation and the index load
    (a cold unchanged re-backup of the 2 GB benchmark corpus: 0.865 -> 0.79 s, 5 pairs).
    It reports large files too, for early reads, in case there turns out to be no parent.
    Pass it to ``Archiver.backup``, which closes it; until then it walks without a limit.
    None when no source exists."""
    existing = _sources(sources)[1]
    return (StatAhead(existing, count=opts.count_totals, large=WHOLE_FILE_MAX)
            if existing else None)


class Archiver:
    def __init__(self, repo: Repository, options: BackupOptions | None = None, *,
                 progress: BackupProgress | None = None,
                 on_warning: Callable[[str], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> None:
        self.repo = repo
        self.opts = options or BackupOptions()
        self.progress = progress or BackupProgress()
        self._on_warning = on_warning
        self._cancelled = cancelled or (lambda: False)
        cfg = repo.config
        self._files = FileSaver(self._save, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max,
                                workers=self.opts.read_concurrency, cancelled=self._cancelled)
        self.key = repo.key
        self.index = repo.index
        self.warnings: list[str] = []
        self._hardlinks: dict[tuple[int, int], list | ReadSlot] = {}  # [content, size] once read
        self._dry_seen: set[tuple[int, bytes]] = set()
        self._count_lock = threading.Lock()  # _save runs on the reader threads too
        self._saver = None
        self._added = {"data_blobs": 0, "tree_blobs": 0}
        self._root_devs: set[int] = set()
        o = self.opts
        self._exclusions = Exclusions(o.excludes, larger_than=o.exclude_larger_than,
                                      if_present=o.exclude_if_present, caches=o.exclude_caches)
        self._early: EarlyReads | None = None  # large files read ahead (an initial backup)
        self._sources: list[bytes] = []
        self._unreported = 0  # bytes of files walked since the last position (prefetch.py)

    # ------------------------------------------------------------------ helpers
    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        self.progress.errors += 1
        if self._on_warning:
            self._on_warning(message)

    def _save(self, blob_type: int, data: bytes | memoryview, blob_id: bytes | None = None) -> bytes:
        bid = blob_id or self.key.blob_id(data)
        kind = "data_blobs" if blob_type == BLOB_DATA else "tree_blobs"
        if self.opts.dry_run:
            key = (blob_type, bid)
            with self._count_lock:
                if key not in self._dry_seen and not self.index.has(bid, blob_type):
                    self._dry_seen.add(key)
                    self._added[kind] += 1
        elif self._saver.save(blob_type, bid, data, background=on_lane()):
            with self._count_lock:
                self._added[kind] += 1
        return bid

    def _load_parent_tree(self, tree_id: bytes | None) -> dict[bytes, Node]:
        if tree_id is None:
            return {}
        try:
            return {n["name"]: n for n in decode_tree(self.repo.load_blob(BLOB_TREE, tree_id))}
        except Exception as exc:  # a damaged parent only costs re-reading
            self._warn(f"cannot load parent tree {tree_id.hex()[:12]}: {exc}")
            return {}

    # ------------------------------------------------------------------ files
    def _same_metadata(self, st: os.stat_result, prev: Node | None) -> bool:
        """A regular file whose size, mtime, ctime and inode (unless ignored) are its node's
        in the parent snapshot: presumed unchanged, not read again."""
        if self.opts.force or prev is None or prev.get("type") != "file":
            return False
        if prev.get("size") != st.st_size or prev.get("mtime") != st.st_mtime_ns:
            return False
        if not self.opts.ignore_ctime and prev.get("ctime") != st.st_ctime_ns:
            return False
        if not self.opts.ignore_inode and prev.get("inode") != st.st_ino:
            return False
        return True

    def _blobs_indexed(self, prev: Node) -> bool:
        has = self.index.has
        for b in prev.get("content") or ():  # (the hot loop of an unchanged re-backup)
            if b.__class__ is bytes and not has(b, BLOB_DATA):
                return False
        return True

    def _file(self, path: bytes, st: os.stat_result, node: Node, prev: Node | None,
              reads: DirReads, same: bool) -> None:
        """Fill ``node['content']`` now (unchanged file, known hard link), or read the file
        (a small one) or queue it for the readers; ``_finish_reads`` completes the node.
        ``same``: _same_metadata."""
        p = self.progress
        if same and self._blobs_indexed(prev):
            node["content"] = prev["content"]
            p.files_unmodified += 1
            p.bytes_done += st.st_size
            p.files_done += 1
            return
        key = (st.st_dev, st.st_ino)
        link = self._hardlinks.get(key) if st.st_nlink > 1 else None
        if isinstance(link, list):  # a hard link to a file already read
            node["content"], node["size"] = link
            p.files_new += prev is None
            p.files_changed += prev is not None
            p.files_done += 1
        elif link is not None:  # ... to a file still being read: share its result
            reads.add(path, st, node, (prev is None, True), same_as=link)
        else:
            ahead = None
            if self._early is not None and st.st_size > WHOLE_FILE_MAX and st.st_nlink == 1:
                ahead = self._early.take(path, st)
            pending = reads.add(path, st, node, (prev is None, False), same_as=ahead)
            if st.st_nlink > 1:
                self._hardlinks[key] = pending

    def _finish_reads(self, reads: DirReads, nodes: list[Node]) -> list[Node]:
        """Wait for the directory's queued files; drop the nodes of unreadable ones."""
        p = self.progress
        dropped = []
        for path, st, node, (is_new, linked), res in reads.results():
            if isinstance(res, OSError):
                self._warn(f"{_fs(path)}: cannot read: {res.strerror or res}")
                dropped.append(id(node))
                continue
            node["size"], node["content"] = res.size, res.content
            if not linked:
                if res.changed:
                    self._warn(f"{_fs(path)}: file changed while it was read")
                if st.st_nlink > 1:
                    self._hardlinks[(st.st_dev, st.st_ino)] = [res.content, res.size]
                p.bytes_read += res.size
                p.bytes_done += res.size
            p.files_new += is_new
            p.files_changed += not is_new
            p.files_done += 1
        if dropped:
            gone = set(dropped)
            nodes = [n for n in nodes if id(n) not in gone]
        return nodes

    # ------------------------------------------------------------------ directories
    def _entry(self, path: bytes, name: bytes, st: os.stat_result, prev: Node | None,
               parent_dev: int, reads: DirReads, same: bool = False) -> Node | None:
        ntype = node_type(st.st_mode)
        if ntype is None:
            return None
        node = node_from_stat(name, st, ntype, self.opts.with_atime)
        self.progress.current_path = path
        if ntype == "dir":
            if self.opts.one_file_system and st.st_dev != parent_dev and st.st_dev not in self._root_devs:
                subtree = self._save(BLOB_TREE, encode_tree([]))  # mount point, kept empty
            else:
                subtree = self._dir(path, prev.get("subtree") if prev and prev.get("type") == "dir" else None)
            node["subtree"] = subtree
        elif ntype == "file":
            self._file(path, st, node, prev, reads, same)
        elif ntype == "symlink":
            try:
                node["target"] = os.readlink(path)
            except OSError as exc:
                self._warn(f"{_fs(path)}: cannot read link: {exc.strerror}")
                return None
        if (prev is not None and not self.opts.ignore_ctime and prev.get("type") == ntype
                and prev.get("ctime") == node["ctime"] and prev.get("inode") == node["inode"]):
            # Changing an xattr changes ctime: same inode and ctime means same xattrs, and
            # skipping listxattr matters when most files are unchanged.
            xattrs = prev.get("xattrs")
        else:
            xattrs = read_xattrs(path)
        if xattrs:
            node["xattrs"] = xattrs
        return node

    def _dir(self, path: bytes, prev_tree: bytes | None) -> bytes:
        if self._cancelled():
            raise Interrupted("backup interrupted")
        prev_nodes = self._load_parent_tree(prev_tree)
        nodes = []
        try:
            entries = sorted(os.scandir(path), key=_NAME)
        except OSError as exc:
            self._warn(f"{_fs(path)}: cannot list directory: {exc.strerror}")
            entries = []
        dev = None
        chosen = []
        to_read = []  # (path, size) of the files that will be read: hinted to the kernel
        for entry in entries:
            child = entry.path
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                self._warn(f"{_fs(child)}: cannot stat: {exc.strerror}")
                continue
            if self._exclusions.entry(child, st):
                continue
            prev = prev_nodes.get(entry.name)
            same = False
            if stat.S_ISREG(st.st_mode):
                same = self._same_metadata(st, prev)
                if not same and st.st_size:
                    to_read.append((child, st.st_size))
            elif stat.S_ISDIR(st.st_mode) and self._exclusions.marked(child):
                continue
            chosen.append((entry, st, prev, same))
        if to_read:
            self._prefetch.ahead(to_read)
        reads = DirReads(self._files)
        walking = self._prefetch.walking
        for entry, st, prev, same in chosen:
            if walking:  # tell the helper walking ahead where the walker is
                self._unreported += st.st_size
                if self._unreported >= POSITION_EVERY:
                    self._prefetch.passed(entry.path)
                    self._unreported = 0
            if dev is None:
                dev = os.lstat(path).st_dev if self.opts.one_file_system else 0
            node = self._entry(entry.path, entry.name, st, prev, dev, reads, same)
            if node is not None:
                nodes.append(node)
        nodes = self._finish_reads(reads, nodes)
        if (prev_tree is not None and len(nodes) == len(prev_nodes)
                and nodes == list(prev_nodes.values())
                and (self.opts.dry_run or self._saver.known(BLOB_TREE, prev_tree))):
            # The same nodes: keep the tree without encoding and hashing it again. Asking
            # the saver keeps the rule that nothing new may point into packs a concurrent
            # prune marked for deletion (``has`` ignores those; then the tree is re-saved).
            tree_id = prev_tree
        else:
            tree_id = self._save(BLOB_TREE, encode_tree(nodes))
        p = self.progress
        p.dirs_done += 1
        if prev_tree is None:
            p.dirs_new += 1
        elif prev_tree == tree_id:
            p.dirs_unmodified += 1
        else:
            p.dirs_changed += 1
        return tree_id

    def _virtual_dir(self, prefix: bytes, children: dict, prev_tree: bytes | None) -> bytes:
        """A directory on the way to a source path: holds only the chosen children."""
        prev_nodes = self._load_parent_tree(prev_tree)
        nodes = []
        reads = DirReads(self._files)
        for name in sorted(children):
            path = prefix + b"/" + name if prefix != b"/" else b"/" + name
            try:
                st = os.lstat(path)
            except OSError as exc:
                self._warn(f"{_fs(path)}: {exc.strerror}")
                continue
            prev = prev_nodes.get(name)
            sub = children[name]
            if sub is None:  # a source path itself
                self._root_devs.add(st.st_dev)
                same = stat.S_ISREG(st.st_mode) and self._same_metadata(st, prev)
                node = self._entry(path, name, st, prev, st.st_dev, reads, same)
            else:
                node = node_from_stat(name, st, "dir", self.opts.with_atime)
                prev_sub = prev.get("subtree") if prev and prev.get("type") == "dir" else None
                node["subtree"] = self._virtual_dir(path, sub, prev_sub)
            if node is not None:
                nodes.append(node)
        return self._save(BLOB_TREE, encode_tree(self._finish_reads(reads, nodes)))

    # ------------------------------------------------------------------ entry points
    def _run(self, build_root: Callable[[bytes | None], bytes], paths: list[str],
             parent: Snapshot | None, extra_summary: dict | None = None) -> BackupResult:
        started = datetime.now().astimezone()
        t0 = time.monotonic()
        try:
            with Prefetcher() as self._prefetch:
                return self._run_locked(build_root, paths, parent, started, t0, extra_summary)
        finally:
            self._files.close()

    def _run_locked(self, build_root, paths, parent, started, t0, extra_summary) -> BackupResult:
        if self.opts.dry_run:
            root = self._build(build_root, parent)
            stats = {"packs_written": 0, "bytes_added_stored": 0}
            return self._finish(root, paths, parent, started, t0, stats, extra_summary)
        lock = Lock(self.repo, SHARED, "backup")
        markers = lock.acquire_shared(wait=self.opts.lock_wait)
        try:
            # Packs a concurrent prune marked for deletion must not gain new users.
            self.index.set_avoided_packs({p for m in markers for p in m.packs})
            with self.repo.new_saver() as saver:
                self._saver = saver
                try:
                    root = self._build(build_root, parent)
                    self._files.drop_windows()  # (no file is read any more)
                    saver.flush()  # packs, then index: before the snapshot names them
                finally:
                    self._saver = None
                stats = dict(saver.stats)
            lock.check()
            return self._finish(root, paths, parent, started, t0, stats, extra_summary)
        finally:
            lock.release()

    def _build(self, build_root: Callable[[bytes | None], bytes], parent: Snapshot | None) -> bytes:
        """The root tree, with the early reads (if any) going on beside the walk."""
        early = self._early
        if early is None:
            return build_root(parent.tree if parent else None)
        # Every file is read: the prefetch helper hints the files the lane does not read
        # by walking ahead of the walker itself (see prefetch.py).
        self._prefetch.walk(self._sources, WHOLE_FILE_MAX)
        early.start()
        try:
            return build_root(parent.tree if parent else None)
        finally:
            early.close()  # before the packs are flushed: nothing may save blobs after

    def _finish(self, root: bytes, paths: list[str], parent: Snapshot | None,
                started: datetime, t0: float, stats: dict, extra_summary: dict | None) -> BackupResult:
        host, user = default_identity()
        p = self.progress
        summary = {
            "backup_start": started.isoformat(),
            "backup_end": datetime.now().astimezone().isoformat(),
            "files_new": p.files_new, "files_changed": p.files_changed,
            "files_unmodified": p.files_unmodified, "dirs_new": p.dirs_new,
            "dirs_changed": p.dirs_changed, "dirs_unmodified": p.dirs_unmodified,
            "data_blobs": self._added["data_blobs"], "tree_blobs": self._added["tree_blobs"],
            "data_added": stats.get("bytes_added_stored", 0),
            "packs_written": stats.get("packs_written", 0),
            "total_files_processed": p.files_done, "total_bytes_processed": p.bytes_done,
            "bytes_read": p.bytes_read, "errors": len(self.warnings),
            "total_duration": round(time.monotonic() - t0, 3),
        }
        summary.update(extra_summary or {})
        if self.opts.dry_run:
            return BackupResult(None, summary, self.warnings)
        snap = Snapshot(
            time=self.opts.time or started, tree=root, paths=paths,
            hostname=self.opts.hostname or host, username=user, uid=os.getuid(),
            gid=os.getgid(), tags=list(self.opts.tags), parent=parent.id if parent else None,
            summary=summary)
        self.repo.save_snapshot(snap)
        return BackupResult(snap, summary, self.warnings)

    def backup(self, sources: list[str], stat_ahead: StatAhead | None = None) -> BackupResult:
        """Back up files and directories; relative paths are made absolute first.
        ``stat_ahead``: the helper ``start_stat_ahead`` started for the same sources and
        options; this backup keeps it only where it would have started one, and closes it."""
        try:
            return self._backup(sources, stat_ahead)
        finally:
            if stat_ahead is not None:
                stat_ahead.close()

    def _backup(self, sources: list[str], early: StatAhead | None) -> BackupResult:
        abs_paths, existing = _sources(sources)
        if not existing:  # the error alone names them: no warnings before it
            raise SourceError("no source path exists: " + ", ".join(abs_paths))
        for s in abs_paths:
            if s not in existing:
                self._warn(f"{s}: does not exist")
        trie: dict = {}
        for s in existing:
            parts = [os.fsencode(c) for c in s.split("/") if c]
            node = trie
            for c in parts[:-1]:
                node = node.setdefault(c, {})
                if node is None:
                    break
            else:
                if parts:
                    node[parts[-1]] = None  # a source: everything below it
        if any(s == "/" for s in existing):
            build = lambda prev: self._dir(b"/", prev)  # noqa: E731 - whole filesystem
        else:
            build = lambda prev: self._virtual_dir(b"/", trie, prev)  # noqa: E731
        parent = self._parent(existing)
        self._early = None
        if parent is None or self.opts.force:  # every file is read: the large ones early
            self._sources = sorted(os.fsencode(s) for s in existing)
            self._early = EarlyReads(Admission(self._exclusions, self._sources),
                                     self._files.read_or_error, self._files.stop)
        helper = self._helper(existing, parent, early)
        try:
            return self._run(build, existing, parent)
        finally:
            if self._early is not None:  # (closed by _build, unless the backup failed first)
                self._early.close()  # first: the helper's reader may wait in its offer
            if helper is not None:
                helper.close()
            self._early = None

    def _helper(self, paths: list[str], parent: Snapshot | None,
                early: StatAhead | None) -> StatAhead | None:
        """The process that counts totals, if asked for, reports the large files to read
        early when every file is read (no parent, or --force), and warms the inode cache:
        with a parent snapshot most files are usually unchanged and the walk is bound by
        metadata reads. Only warming, its lead is bounded by the parent's entry count.
        ``early``, if given, is used instead of a new one, or closed when none is wanted."""
        lane = self._early
        limit = None
        if not self.opts.count_totals and lane is None:
            limit = _stat_ahead_limit(parent, self.opts)
            if limit is None:
                if early is not None:
                    early.close()  # now, rather than walking on until the backup ends
                return None
        helper = early or StatAhead(paths, limit or 0, count=self.opts.count_totals,
                                    large=WHOLE_FILE_MAX if lane is not None else 0)
        if self.opts.count_totals:
            helper.on_totals(self._totals)
        helper.on_large(lane.offer if lane is not None else None)
        if early is not None and limit is not None:
            early.set_limit(limit)
        return helper

    def _totals(self, files: int, size: int, done: bool) -> None:
        p = self.progress
        p.total_files, p.total_bytes, p.totals_done = files, size, done

    def _parent(self, paths: list[str]) -> Snapshot | None:
        if self.opts.no_parent:
            return None
        if self.opts.parent is not None:
            return self.opts.parent
        host = self.opts.hostname or socket.gethostname()
        candidates = [s for s in self.repo.list_snapshots()
                      if s.hostname == host and sorted(s.paths) == sorted(paths)]
        return max(candidates, key=lambda s: (s.time, s.id)) if candidates else None

    def backup_stream(self, stream: BinaryIO, filename: str,
                      finished: Callable[[], None] | None = None) -> BackupResult:
        """Back up one stream (stdin, a command's output) as ``/<filename>``.

        ``finished`` runs once the stream is consumed, before anything names the data; if it
        raises (say, the producing command failed), no snapshot is written.
        """
        name = os.fsencode(filename.strip("/")) or b"stdin"
        if b"/" in name:
            raise SourceError("--stdin-filename must be a plain file name")

        def build(_prev: bytes | None) -> bytes:
            now = time.time_ns()
            content, total = self._files.chunk_stream(stream)
            if finished is not None:
                finished()
            self.progress.bytes_read = self.progress.bytes_done = total
            self.progress.files_done = self.progress.files_new = 1
            node = {"name": name, "type": "file", "mode": 0o600, "uid": os.getuid(),
                    "gid": os.getgid(), "user": "", "group": "", "size": total,
                    "mtime": now, "atime": now, "ctime": now, "inode": 0, "dev": 0,
                    "links": 1, "content": content}
            return self._save(BLOB_TREE, encode_tree([node]))

        return self._run(build, ["/" + os.fsdecode(name)], None)

