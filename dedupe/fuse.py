"""A repository as a read-only filesystem (``snap mount``): the FUSE callbacks. Mounting and
serving them through mfusepy and libfuse3 is ``fusemount``'s job.

Layout: see ``fuselayout``. Everything is lazy: listing snapshots reads no trees, a directory's
tree is decoded on first access (decoded trees are kept in an LRU shared by all snapshots, since
unchanged directories have the same tree id everywhere), and a read fetches only the blobs that
overlap it (``filereader``). libfuse runs the callbacks on a pool of threads, so one slow S3
read does not hold up other readers; every structure here is safe to use from several threads.

Inode numbers are a hash of the path inside the mount, so they are stable for the whole mount
(not across mounts) without a table that grows with every file visited. Files with more than
one link share the hash of (snapshot, device, inode) instead, so hard links look like hard
links to ``du``, ``cp -a`` and ``tar``.

Nothing here prints. A read that fails verification returns EIO and logs one line through
``logging`` (logger ``dedupe.fuse``); wrong bytes are never returned.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
import time
import uuid
from typing import Callable

from .errors import SnapError
from .filereader import ContentReader, FileContent, LoadingLRU, ReadCursor
from .fuselayout import Entry, Link, VDir, build_layout, time_ns
from .snapshot import Snapshot
from .tree import Node
from .walker import load_tree

log = logging.getLogger("dedupe.fuse")

_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
              "fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK,
              "socket": stat.S_IFSOCK}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)
CAP_READDIRPLUS_AUTO = 1 << 14  # FUSE_CAP_* flags of libfuse3's fuse_common.h
CAP_CACHE_SYMLINKS = 1 << 23
STAT_KEYS = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
             "st_rdev", "st_atime", "st_mtime", "st_ctime")


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _fs_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def path_ino(path: str) -> int:
    """Inode number of a path: Python's string hash (SipHash, keyed per process), so stable
    for the life of the mount, 63 bits, and nearly free (ls -l of 10,000 files asks 10,000)."""
    if path == "/":
        return 1
    h = hash(path) & 0x7FFF_FFFF_FFFF_FFFF
    return h if h > 1 else h + 2


class SnapshotFS:
    """The filesystem callbacks (mfusepy's ``Operations`` protocol, with ``use_ns``)."""

    use_ns = True  # times in nanoseconds, as stored in nodes

    def __init__(self, repo, snapshot_filter: Callable[[Snapshot], bool] | None = None, *,
                 refresh_interval: float = 30.0, tree_cache_nodes: int = 200_000,
                 blob_cache_bytes: int = 64 << 20, readahead: int = 4) -> None:
        self.repo = repo
        self.filter = snapshot_filter or (lambda s: True)
        self.refresh_interval = refresh_interval
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time_ns()
        self.reader = ContentReader(repo, cache_bytes=blob_cache_bytes, readahead=readahead)
        self.trees: LoadingLRU[bytes, dict[bytes, Node]] = LoadingLRU(
            self._load_dir, tree_cache_nodes, lambda d: len(d) + 1)
        self.contents: LoadingLRU[tuple, FileContent] = LoadingLRU(
            lambda items: FileContent(repo.index, items), 1024)
        self._handles: dict[int, tuple[FileContent, ReadCursor, str]] = {}
        self._listings: dict[int, list[tuple] | None] = {}
        self._next_fh = itertools.count(1)
        self._paths: dict[str, tuple] = {}
        self._paths_max = 100_000  # its nodes may outlive the tree LRU: keep it modest
        self._refresh_lock = threading.Lock()
        self._snap_ids: set[str] = set()
        self._index_names = self._list_index_names()
        self._layout = self._build(repo.list_snapshots())
        self._refreshed = time.monotonic()
        self.ready = threading.Event()
        #: Looking this name up in the root ends the session (see ``serve``).
        self.exit_name = f".snap-unmount-{uuid.uuid4().hex}"
        self._exit_path = "/" + self.exit_name
        self._on_init: Callable[[], None] | None = None

    # ------------------------------------------------------------------ snapshot list
    def _build(self, snaps: list[Snapshot]) -> VDir:
        self._snap_ids = {s.id for s in snaps}
        return build_layout([s for s in snaps if self.filter(s)], self.started)

    def _list_index_names(self) -> set[str]:
        return {o.name for o in self.repo.backend.list("index")}

    def refresh(self, force: bool = False) -> None:
        """Re-read the snapshot list (and the index, if index files changed) at most every
        ``refresh_interval`` seconds; a refresh already running elsewhere is not waited for."""
        if not force and time.monotonic() - self._refreshed < self.refresh_interval:
            return
        if not self._refresh_lock.acquire(blocking=False):
            return
        try:
            self._refreshed = time.monotonic()
            # Snapshots first, then index files: a backup writes its index before its
            # snapshot, so every snapshot seen here has its blobs in the index read next.
            snaps = self.repo.list_snapshots()
            names = self._list_index_names()
            if names != self._index_names:
                self.repo.reload_index()
                self._index_names = names
            if {s.id for s in snaps} != self._snap_ids:
                self._layout = self._build(snaps)
                self._paths.clear()  # entries of the old layout are dead weight now
        except SnapError as exc:
            log.warning("cannot refresh the snapshot list: %s", exc)
        finally:
            self._refresh_lock.release()

    @property
    def layout(self) -> VDir:
        return self._layout

    # ------------------------------------------------------------------ resolving paths
    def _load_dir(self, tree_id: bytes) -> dict[bytes, Node]:
        return {n["name"]: n for n in load_tree(self.repo, tree_id)}

    def _children(self, node_or_snap) -> dict[bytes, Node]:
        tree = node_or_snap.tree if isinstance(node_or_snap, Snapshot) else node_or_snap.get("subtree")
        return self.trees.get(tree) if tree is not None else {}

    def resolve(self, path: str) -> tuple[Entry | Node, Snapshot | None]:
        """(layout entry or tree node, the snapshot it is in). Raises ENOENT/ENOTDIR."""
        layout = self._layout
        hit = self._paths.get(path)
        if hit is not None and hit[2] is layout:
            return hit[0], hit[1]
        obj: Entry | Node = layout
        snap: Snapshot | None = None
        for comp in path.split("/"):
            if not comp:
                continue
            if isinstance(obj, VDir):
                obj = obj.children.get(comp)
                if obj is None:
                    raise _err(errno.ENOENT)
                if isinstance(obj, Snapshot):
                    snap = obj
            elif isinstance(obj, Link):
                raise _err(errno.ENOTDIR)
            elif isinstance(obj, Snapshot) or obj.get("type") == "dir":
                obj = self._children(obj).get(_raw(comp))
                if obj is None:
                    raise _err(errno.ENOENT)
            else:
                raise _err(errno.ENOTDIR)
        self._remember(path, obj, snap, layout)
        return obj, snap

    def _remember(self, path: str, obj, snap: Snapshot | None, layout: VDir) -> None:
        # The kernel sends full paths for every call (getattr, two getxattr per file for
        # ls -l...): a flat map makes repeated lookups one dict access. Entries remember the
        # layout they were resolved in and die with it. Bounded crudely.
        if len(self._paths) >= self._paths_max:
            self._paths.clear()
        self._paths[path] = (obj, snap, layout)

    # ------------------------------------------------------------------ attributes
    def _stat(self, obj, snap: Snapshot | None, path: str) -> tuple:
        """(ino, mode, nlink, uid, gid, size, blocks, rdev, atime, mtime, ctime)."""
        if isinstance(obj, dict):
            ntype = obj.get("type")
            links = obj.get("links") or 1
            if ntype == "file":
                size = obj.get("size", 0)
                if links > 1 and "inode" in obj and snap is not None:
                    ino = path_ino(f"{snap.id}:{obj.get('dev', 0)}:{obj['inode']}")
                else:
                    ino = path_ino(path)
            else:
                size = len(obj.get("target", b"")) if ntype == "symlink" else 0
                ino = path_ino(path)
            mtime = obj.get("mtime", 0)
            return (ino, _TYPE_BITS.get(ntype, stat.S_IFREG) | (obj.get("mode", 0o644) & 0o7777),
                    links, obj.get("uid", 0), obj.get("gid", 0), size, (size + 511) // 512,
                    obj.get("rdev", 0), obj.get("atime", mtime), mtime, obj.get("ctime", mtime))
        if isinstance(obj, VDir):
            mode, nlink, size, mtime = stat.S_IFDIR | 0o555, 2 + obj.subdirs, 0, obj.mtime
        elif isinstance(obj, Snapshot):
            # nlink 1 means "unknown" (find must not assume leaf directories); counting would
            # need the root tree, and listing snapshots reads no trees.
            mode, nlink, size, mtime = stat.S_IFDIR | 0o555, 1, 0, time_ns(obj)
        else:
            mode, nlink, size, mtime = stat.S_IFLNK | 0o777, 1, len(_raw(obj.target)), obj.mtime
        return (path_ino(path), mode, nlink, self.uid, self.gid, size, 0, 0, mtime, mtime, mtime)

    # ------------------------------------------------------------------ callbacks: metadata
    def init_with_config(self, conn, config) -> None:
        # Let the kernel cache symlink targets: every path through snapshots/latest would
        # otherwise cost a READLINK round trip. A changed "latest" has a new mtime, which
        # drops the cached target once attributes are revalidated.
        if conn is not None and conn.capable & CAP_CACHE_SYMLINKS:
            conn.want |= CAP_CACHE_SYMLINKS
        # Attributes with every readdir reply, not only the first page of a listing ("auto"
        # mode): otherwise ls -l of a large directory makes one LOOKUP per entry after it.
        if conn is not None:
            conn.want &= ~CAP_READDIRPLUS_AUTO
        self.init("/")

    def init(self, path: str) -> None:
        self.ready.set()
        if self._on_init is not None:
            self._on_init()

    def destroy(self, path: str) -> None:
        pass

    def getattr(self, path: str, fh: int | None = None) -> dict:
        if path == self._exit_path:
            _exit_session()
            raise _err(errno.ENOENT)
        obj, snap = self._guard(self.resolve, path)
        return dict(zip(STAT_KEYS, self._stat(obj, snap, path)))

    def readlink(self, path: str) -> str:
        obj, _ = self._guard(self.resolve, path)
        if isinstance(obj, Link):
            return obj.target
        if isinstance(obj, dict) and obj.get("type") == "symlink":
            return _fs_name(obj.get("target", b""))
        raise _err(errno.EINVAL)

    def opendir(self, path: str) -> int:
        obj, _ = self._guard(self.resolve, path)
        if isinstance(obj, (VDir, Snapshot)) or (isinstance(obj, dict) and obj.get("type") == "dir"):
            fh = next(self._next_fh)
            self._listings[fh] = None
            return fh
        raise _err(errno.ENOTDIR)

    def releasedir(self, path: str, fh: int) -> int:
        self._listings.pop(fh, None)
        return 0

    def readdir(self, path: str, fh: int) -> list:  # mfusepy registers readdir by this name
        return [name for name, _ in self.readdir_plus(path, False)]

    def listing(self, path: str, fh: int, offset: int) -> list[tuple]:
        """``readdir_plus`` of an open directory, computed once per pass: the kernel reads a
        large directory in many small requests, each resuming at an offset."""
        entries = self._listings.get(fh)
        if entries is None or offset == 0:
            entries = self._listings[fh] = self.readdir_plus(path, True)
        return entries

    def readdir_plus(self, path: str, plus: bool = True) -> list[tuple]:
        """[(name, stat tuple or None)] including "." and ".."; with ``plus`` False only the
        type bits are given (a 1-tuple of the mode)."""
        layout = self._layout  # before resolving: entries tagged with it are never newer
        obj, snap = self._guard(self.resolve, path)
        if isinstance(obj, VDir):
            self.refresh()
            obj, snap = self._guard(self.resolve, path)
        out: list[tuple] = [(".", None), ("..", None)]
        prefix = path.rstrip("/") + "/"
        if isinstance(obj, VDir):
            for name, child in obj.children.items():
                s = child if isinstance(child, Snapshot) else snap
                out.append((name, self._stat(child, s, prefix + name) if plus else None))
            return out
        if not (isinstance(obj, Snapshot) or obj.get("type") == "dir"):
            raise _err(errno.ENOTDIR)
        remember = self._remember
        for raw, node in self._guard(self._children, obj).items():
            name = _fs_name(raw)
            child = prefix + name
            remember(child, node, snap, layout)
            out.append((name, self._stat(node, snap, child) if plus else
                        (_TYPE_BITS.get(node.get("type"), stat.S_IFREG),)))
        return out

    def listxattr(self, path: str) -> list[str]:
        obj, _ = self._guard(self.resolve, path)
        if isinstance(obj, dict):
            return [_fs_name(name) for name, _ in obj.get("xattrs") or ()]
        return []

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self.xattr(path, name)
        if value is None:
            raise _err(ENOATTR)
        return value

    def xattr(self, path: str, name: str) -> bytes | None:
        obj, _ = self._guard(self.resolve, path)
        if isinstance(obj, dict):
            want = _raw(name)
            for xname, value in obj.get("xattrs") or ():
                if xname == want:
                    return value
        return None

    def statfs(self, path: str) -> dict:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0,
                "f_files": 0, "f_ffree": 0, "f_favail": 0, "f_namemax": 255}

    def access(self, path: str, amode: int) -> int:
        self._guard(self.resolve, path)
        if amode & os.W_OK:
            raise _err(errno.EROFS)
        return 0

    # ------------------------------------------------------------------ callbacks: reading
    def open(self, path: str, flags: int) -> int:
        if flags & _WRITE_FLAGS:
            raise _err(errno.EROFS)
        obj, snap = self._guard(self.resolve, path)
        if not isinstance(obj, dict) or obj.get("type") != "file":
            is_dir = isinstance(obj, (VDir, Snapshot)) or (isinstance(obj, dict)
                                                           and obj.get("type") == "dir")
            raise _err(errno.EISDIR if is_dir else errno.EINVAL)
        try:
            # Keyed by content: the same file in many snapshots is one entry.
            fc = self.contents.get(tuple(obj.get("content") or ()))
        except SnapError as exc:
            log.error("%s: cannot open: %s", path, exc)
            raise _err(errno.EIO) from None
        if fc.size != obj.get("size", 0):
            log.warning("%s: content holds %d bytes, the snapshot records %d", path, fc.size,
                        obj.get("size", 0))
        fh = next(self._next_fh)
        self._handles[fh] = (fc, ReadCursor(), path)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return b"".join(bytes(hi - lo) if data is None else memoryview(data)[lo:hi]
                        for data, lo, hi in self.read_segments(size, offset, fh))

    def read_segments(self, size: int, offset: int, fh: int) -> list[tuple[bytes | None, int, int]]:
        """The bytes of a read as ``ContentReader.segments``; failures become EIO + a log line."""
        try:
            fc, cursor, opened = self._handles[fh]
        except KeyError:
            raise _err(errno.EBADF) from None
        try:
            return self.reader.segments(fc, offset, size, cursor)
        except SnapError as exc:
            log.error("%s: read at offset %d failed: %s", opened, offset, exc)
            raise _err(errno.EIO) from None
        except Exception:
            log.exception("%s: read at offset %d failed", opened, offset)
            raise _err(errno.EIO) from None

    def release(self, path: str, fh: int) -> int:
        self._handles.pop(fh, None)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    # ------------------------------------------------------------------ read-only
    def _readonly(self, *args, **kwargs):
        raise _err(errno.EROFS)

    chmod = chown = create = link = mkdir = mknod = rename = rmdir = symlink = truncate = \
        unlink = utimens = write = setxattr = removexattr = fallocate = _readonly

    # ------------------------------------------------------------------ helpers
    def _guard(self, fn, *args):
        """Run a lookup; repository failures (a damaged tree, storage down) become EIO."""
        try:
            return fn(*args)
        except SnapError as exc:
            log.error("%s: %s", args[0] if args and isinstance(args[0], str) else "lookup", exc)
            raise _err(errno.EIO) from None

    def close(self) -> None:
        self.reader.close()


def _exit_session() -> None:
    import mfusepy

    mfusepy.fuse_exit()
