"""Backup: walk source paths, store new file content and trees, write a snapshot.

One producer thread (the caller's) walks the tree, reads and chunks files and hashes chunks;
new blobs go to ``BlobSaver``, whose threads compress, encrypt and upload them. Trees are built
bottom-up as each directory completes, so memory holds only the directories on the current
path. A file whose size, mtime, ctime and inode equal its entry in the parent snapshot (and
whose blobs are all still indexed) is not read again.

Absolute source paths are kept whole: backing up ``/var/www`` gives a root tree holding
``var`` holding ``www``, like restic, so restores recreate them under the target.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Callable, Protocol

from .chunker import Chunker
from .errors import Interrupted, SourceError
from .locks import SHARED, Lock
from .prefetch import Prefetcher
from .packs import BLOB_DATA, BLOB_TREE
from .repository import Repository, default_identity
from .snapshot import Snapshot
from .tree import Node, decode_tree, encode_tree, file_blobs, node_from_stat, node_type, read_xattrs

CACHEDIR_TAG = (b"CACHEDIR.TAG", b"Signature: 8a477f597d28d172789f06886806bc55")
_O_NOATIME = getattr(os, "O_NOATIME", 0)


class PathMatcher(Protocol):
    def matches(self, path: bytes) -> bool: ...


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
    current: str = ""
    started: float = field(default_factory=time.monotonic)


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
        self.chunker = Chunker(cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max)
        self.small = cfg.chunk_min
        self.key = repo.key
        self.index = repo.index
        self.warnings: list[str] = []
        self._hardlinks: dict[tuple[int, int], list] = {}
        self._dry_seen: set[tuple[int, bytes]] = set()
        self._saver = None
        self._added = {"data_blobs": 0, "tree_blobs": 0}
        self._root_devs: set[int] = set()

    # ------------------------------------------------------------------ helpers
    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        self.progress.errors += 1
        if self._on_warning:
            self._on_warning(message)

    def _save(self, blob_type: int, data: bytes | memoryview, blob_id: bytes | None = None) -> bytes:
        bid = blob_id or self.key.blob_id(data)
        if self.opts.dry_run:
            key = (blob_type, bid)
            if key not in self._dry_seen and not self.index.has(bid, blob_type):
                self._dry_seen.add(key)
                self._added["data_blobs" if blob_type == BLOB_DATA else "tree_blobs"] += 1
        elif self._saver.save(blob_type, bid, data):
            self._added["data_blobs" if blob_type == BLOB_DATA else "tree_blobs"] += 1
        return bid

    def _excluded(self, path: bytes, st: os.stat_result | None) -> bool:
        for m in self.opts.excludes:
            if m.matches(path):
                return True
        if st is not None and self.opts.exclude_larger_than is not None:
            if stat.S_ISREG(st.st_mode) and st.st_size > self.opts.exclude_larger_than:
                return True
        return False

    def _dir_excluded_by_marker(self, path: bytes) -> bool:
        markers = list(self.opts.exclude_if_present)
        if self.opts.exclude_caches:
            markers.append(CACHEDIR_TAG)
        for name, header in markers:
            try:
                with open(os.path.join(path, name), "rb") as f:
                    if header is None or f.read(len(header)) == header:
                        return True
            except OSError:
                continue
        return False

    def _load_parent_tree(self, tree_id: bytes | None) -> dict[bytes, Node]:
        if tree_id is None:
            return {}
        try:
            return {n["name"]: n for n in decode_tree(self.repo.load_blob(BLOB_TREE, tree_id))}
        except Exception as exc:  # a damaged parent only costs re-reading
            self._warn(f"cannot load parent tree {tree_id.hex()[:12]}: {exc}")
            return {}

    # ------------------------------------------------------------------ files
    def _unchanged(self, node: Node, prev: Node | None) -> bool:
        if self.opts.force or prev is None or prev.get("type") != "file":
            return False
        if prev.get("size") != node["size"] or prev.get("mtime") != node["mtime"]:
            return False
        if not self.opts.ignore_ctime and prev.get("ctime") != node["ctime"]:
            return False
        if not self.opts.ignore_inode and prev.get("inode") != node["inode"]:
            return False
        return all(self.index.has(b, BLOB_DATA) for b in file_blobs(prev))

    def _file(self, path: bytes, st: os.stat_result, node: Node, prev: Node | None) -> bool:
        """Fill ``node['content']``. Returns False if the file could not be read."""
        p = self.progress
        if self._unchanged(node, prev):
            node["content"] = prev["content"]
            p.files_unmodified += 1
            p.bytes_done += st.st_size
            return True
        link_key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and link_key in self._hardlinks:
            node["content"], node["size"] = self._hardlinks[link_key]
        else:
            try:
                self._read_file(path, st, node)
            except OSError as exc:
                self._warn(f"{_fs(path)}: cannot read: {exc.strerror or exc}")
                return False
            if st.st_nlink > 1:
                self._hardlinks[link_key] = [node["content"], node["size"]]
        if prev is None:
            p.files_new += 1
        else:
            p.files_changed += 1
        return True

    def _open(self, path: bytes) -> int:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(path, flags | _O_NOATIME)
        except PermissionError:
            if not _O_NOATIME:
                raise
            return os.open(path, flags)  # O_NOATIME needs ownership; read anyway

    def _read_file(self, path: bytes, st: os.stat_result, node: Node) -> None:
        fd = self._open(path)
        try:
            content: list = []
            total = 0
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                # At most the size stat saw: a file appended to faster than we read it must
                # not keep the backup going (the mtime check below still warns). Pseudo-files
                # (/proc, /sys) report size 0 and are read to their end.
                if st.st_size <= self.small:
                    data = f.read(st.st_size or -1)
                    while 0 < len(data) < st.st_size:  # a short read (network file systems)
                        more = f.read(st.st_size - len(data))
                        if not more:
                            break
                        data += more
                    if len(data) > self.small:
                        content, total = self._chunk_stream(f, data)
                    elif data:
                        content.append(self._save(BLOB_DATA, data))
                        total = len(data)
                elif st.st_blocks * 512 < st.st_size:
                    content, total = self._chunk_sparse(fd, f)
                else:
                    content, total = self._chunk_stream(_Limited(f, st.st_size))
            after = os.fstat(fd)
        finally:
            os.close(fd)
        self.progress.bytes_read += total
        self.progress.bytes_done += total
        if total != st.st_size or after.st_mtime_ns != st.st_mtime_ns:
            self._warn(f"{_fs(path)}: file changed while it was read")
        node["size"] = total
        node["content"] = content

    def _chunk_stream(self, f: BinaryIO, first: bytes = b"") -> tuple[list, int]:
        content = []
        total = 0
        for chunk in self.chunker.chunks(f, first):
            content.append(self._save(BLOB_DATA, chunk))
            total += len(chunk)
            if self._cancelled():
                raise Interrupted("backup interrupted")
        return content, total

    def _chunk_sparse(self, fd: int, f: BinaryIO) -> tuple[list, int]:
        """Chunk the data regions the OS reports; record holes as zero-byte runs."""
        content: list = []
        total = 0
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                data_start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                data_start = end
            if data_start > pos:
                content.append(data_start - pos)
                total += data_start - pos
            if data_start >= end:
                break
            hole = os.lseek(fd, data_start, os.SEEK_HOLE)
            f.seek(data_start)
            part, n = self._chunk_stream(_Limited(f, hole - data_start))
            content.extend(part)
            total += n
            pos = data_start + n
            if n < hole - data_start:
                break  # truncated while reading
        return content, total

    # ------------------------------------------------------------------ directories
    def _entry(self, path: bytes, name: bytes, st: os.stat_result, prev: Node | None,
               parent_dev: int) -> Node | None:
        ntype = node_type(st.st_mode)
        if ntype is None:
            return None
        node = node_from_stat(name, st, ntype)
        self.progress.current = _fs(path)
        if ntype == "dir":
            if self.opts.one_file_system and st.st_dev != parent_dev and st.st_dev not in self._root_devs:
                subtree = self._save(BLOB_TREE, encode_tree([]))  # mount point, kept empty
            else:
                subtree = self._dir(path, prev.get("subtree") if prev and prev.get("type") == "dir" else None)
            node["subtree"] = subtree
        elif ntype == "file":
            if not self._file(path, st, node, prev):
                return None
            self.progress.files_done += 1
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
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            self._warn(f"{_fs(path)}: cannot list directory: {exc.strerror}")
            entries = []
        dev = None
        chosen = []
        for entry in entries:
            child = entry.path
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                self._warn(f"{_fs(child)}: cannot stat: {exc.strerror}")
                continue
            if self._excluded(child, st):
                continue
            if stat.S_ISDIR(st.st_mode) and self._dir_excluded_by_marker(child):
                continue
            chosen.append((entry, st))
        self._prefetch.ahead(chosen, prev_nodes, self.opts.force)
        for entry, st in chosen:
            if dev is None:
                dev = os.lstat(path).st_dev if self.opts.one_file_system else 0
            node = self._entry(entry.path, entry.name, st, prev_nodes.get(entry.name), dev)
            if node is not None:
                nodes.append(node)
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
                node = self._entry(path, name, st, prev, st.st_dev)
            else:
                node = node_from_stat(name, st, "dir")
                prev_sub = prev.get("subtree") if prev and prev.get("type") == "dir" else None
                node["subtree"] = self._virtual_dir(path, sub, prev_sub)
            if node is not None:
                nodes.append(node)
        return self._save(BLOB_TREE, encode_tree(nodes))

    # ------------------------------------------------------------------ entry points
    def _run(self, build_root: Callable[[bytes | None], bytes], paths: list[str],
             parent: Snapshot | None, extra_summary: dict | None = None) -> BackupResult:
        started = datetime.now().astimezone()
        t0 = time.monotonic()
        with Prefetcher() as self._prefetch:
            return self._run_locked(build_root, paths, parent, started, t0, extra_summary)

    def _run_locked(self, build_root, paths, parent, started, t0, extra_summary) -> BackupResult:
        if self.opts.dry_run:
            root = build_root(parent.tree if parent else None)
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
                    root = build_root(parent.tree if parent else None)
                    saver.flush()  # packs, then index: before the snapshot names them
                finally:
                    self._saver = None
                stats = dict(saver.stats)
            lock.check()
            return self._finish(root, paths, parent, started, t0, stats, extra_summary)
        finally:
            lock.release()

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

    def backup(self, sources: list[str]) -> BackupResult:
        """Back up files and directories; relative paths are made absolute first."""
        abs_paths = sorted({os.path.normpath(os.path.abspath(s)) for s in sources})
        existing = [s for s in abs_paths if os.path.lexists(s)]
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
        return self._run(build, existing, parent)

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
            content, total = self._chunk_stream(stream)
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


class _Limited:
    """A read-only view of the next ``limit`` bytes of a raw file."""

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self.f, self.left = f, limit

    def fileno(self) -> int:  # lets the chunker ask the kernel to read ahead
        return self.f.fileno()

    def readinto(self, buf) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(buf)[:self.left]
        n = self.f.readinto(view) or 0
        self.left -= n
        return n
