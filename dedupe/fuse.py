"""A repository as a read-only FUSE filesystem (``snap mount``), over mfusepy and libfuse3.

Layout: see ``fuselayout``. Everything is lazy: listing snapshots reads no trees, a directory's
tree is decoded on first access (decoded trees are kept in an LRU shared by all snapshots, since
unchanged directories have the same tree id everywhere), and a read fetches only the blobs that
overlap it (``filereader``). libfuse runs the callbacks on a pool of threads, so one slow S3
read does not hold up other readers; every structure here is safe to use from several threads.

Inode numbers are a hash of the path inside the mount, so they are stable for the whole mount
(not across mounts) without a table that grows with every file visited. Files with more than one link share the
hash of (snapshot, device, inode) instead, so hard links look like hard links to ``du``,
``cp -a`` and ``tar``.

Nothing here prints. A read that fails verification returns EIO and logs one line through
``logging`` (logger ``dedupe.fuse``); wrong bytes are never returned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import logging
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from typing import Callable

from .errors import Interrupted, MountError, SnapError
from .filereader import ContentReader, FileContent, LoadingLRU, ReadCursor
from .fuselayout import Entry, Link, VDir, build_layout, time_ns
from .packs import BLOB_TREE
from .snapshot import Snapshot
from .tree import Node
from .walker import load_tree

log = logging.getLogger("dedupe.fuse")

_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
              "fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK,
              "socket": stat.S_IFSOCK}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)
STAT_KEYS = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
             "st_rdev", "st_atime", "st_mtime", "st_ctime")
FILL_DIR_PLUS = 2  # enum fuse_fill_dir_flags: the stat passed to the filler is complete
READDIR_PLUS = 1  # enum fuse_readdir_flags: the kernel asked for attributes too


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
                 blob_cache_bytes: int = 64 << 20, readahead: int = 2) -> None:
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
        self._next_fh = itertools.count(1)
        self._paths: dict[str, tuple] = {}
        self._paths_max = 500_000
        self._refresh_lock = threading.Lock()
        self._index_names = self._list_index_names()
        self._layout = self._build(repo.list_snapshots())
        self._refreshed = time.monotonic()
        self.ready = threading.Event()
        #: Looking this name up in the root ends the session (see ``serve``).
        self.exit_name = f".snap-unmount-{uuid.uuid4().hex}"
        self._on_init: Callable[[], None] | None = None

    # ------------------------------------------------------------------ snapshot list
    def _build(self, snaps: list[Snapshot]) -> VDir:
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
            snaps = self.repo.list_snapshots()
            names = self._list_index_names()
            if names != self._index_names:
                self.repo.reload_index()
                self._index_names = names
            self._layout = self._build(snaps)
            self._paths.clear()  # names may now point elsewhere (a snapshot was forgotten)
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
        hit = self._paths.get(path)
        if hit is not None:
            return hit
        obj: Entry | Node = self._layout
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
        self._remember(path, obj, snap)
        return obj, snap

    def _remember(self, path: str, obj, snap: Snapshot | None) -> None:
        # The kernel sends full paths for every call (getattr, two getxattr per file for
        # ls -l...): a flat map makes repeated lookups one dict access. Bounded crudely.
        if len(self._paths) >= self._paths_max:
            self._paths.clear()
        self._paths[path] = (obj, snap)

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
    def init(self, path: str) -> None:
        _serving.set()
        self.ready.set()
        if self._on_init is not None:
            self._on_init()

    def destroy(self, path: str) -> None:
        pass

    def getattr(self, path: str, fh: int | None = None) -> dict:
        if path == "/" + self.exit_name:
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
            return 0
        raise _err(errno.ENOTDIR)

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def readdir(self, path: str, fh: int) -> list:  # mfusepy registers readdir by this name
        return [name for name, _ in self.readdir_plus(path, False)]

    def readdir_plus(self, path: str, plus: bool = True) -> list[tuple]:
        """[(name, stat tuple or None)] including "." and ".."; with ``plus`` False only the
        type bits are given (a 1-tuple of the mode)."""
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
            remember(child, node, snap)
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
            raise _err(_ENOATTR)
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
            raise _err(errno.EISDIR if not isinstance(obj, (dict, Link)) else errno.EINVAL)
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


# ---------------------------------------------------------------------------- serving


def _libfuse3_path() -> str | None:
    return os.environ.get("FUSE_LIBRARY_PATH") or ctypes.util.find_library("fuse3")


def fuse_problem() -> str | None:
    """Why a mount cannot work on this machine (one line), or None."""
    if not os.path.exists("/dev/fuse"):
        return ("FUSE is not available: /dev/fuse is missing (load the fuse kernel module; "
                "in a container, pass the device /dev/fuse in)")
    if _libfuse3_path() is None:
        return "FUSE is not available: libfuse3 is not installed (apt-get install fuse3)"
    if shutil.which("fusermount3") is None:
        return "FUSE is not available: fusermount3 is not installed (apt-get install fuse3)"
    return None


def _mfusepy():
    path = _libfuse3_path()
    if path is None:
        raise MountError("libfuse3 is not installed (apt-get install fuse3)")
    # mfusepy picks its library when first imported and prefers libfuse 2 if both are
    # installed; libfuse 2 has no READDIRPLUS and no fusermount3.
    os.environ.setdefault("FUSE_LIBRARY_PATH", path)
    try:
        import mfusepy
    except (OSError, AttributeError) as exc:
        raise MountError(f"cannot load libfuse3: {exc}") from None
    if mfusepy.fuse_version_major != 3:
        raise MountError(f"mfusepy loaded libfuse {mfusepy.fuse_version_major}, snap mount needs "
                         "libfuse3 (apt-get install fuse3; unset FUSE_LIBRARY_PATH)")
    return mfusepy


def _exit_session() -> None:
    import mfusepy

    mfusepy.fuse_exit()


_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
               4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}
_log_hook = None
_libfuse_errors: list[str] = []
_serving = threading.Event()


def _route_libfuse_log() -> None:
    """Send libfuse's messages (normally printed on stderr) to ``logging``; keep the last
    errors for the MountError of a failed mount."""
    global _log_hook
    if _log_hook is not None:
        return
    try:
        lib = ctypes.CDLL(_libfuse3_path())
        libc = ctypes.CDLL(None)
        vsnprintf = libc.vsnprintf
        vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

        @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
        def hook(level, fmt, args):  # va_list arrives as a pointer on x86-64 and arm64
            buf = ctypes.create_string_buffer(2048)
            vsnprintf(buf, len(buf), fmt, args)
            msg = buf.value.decode("utf-8", "replace").strip()
            if msg.startswith("Ignoring invalid max threads"):
                level = 7  # libfuse 3.14 rejects its own default; harmless
            if level <= 3 and not _serving.is_set():
                # Before the mount is up, an error is why mounting failed: it becomes the
                # MountError's message rather than a second line on stderr.
                del _libfuse_errors[:-4]
                _libfuse_errors.append(msg)
                level = 7
            log.log(_LOG_LEVELS.get(level, logging.DEBUG), "libfuse: %s", msg)

        lib.fuse_set_log_func(hook)
        _log_hook = hook  # keep the callback alive for the life of the process
    except (OSError, AttributeError):
        pass  # older libfuse3: messages stay on stderr


_tls = threading.local()


def _address(data: bytes) -> int:
    """Address of a bytes object's buffer (valid while ``data`` is referenced)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value


def _pin_thread_state() -> None:
    """Keep this libfuse worker's Python thread state for the thread's life.

    ctypes runs each callback between PyGILState_Ensure and PyGILState_Release; on a thread
    Python did not create, that builds and tears down a thread state on every call. One extra
    Ensure that is never released makes the state permanent.
    """
    ctypes.pythonapi.PyGILState_Ensure.restype = ctypes.c_int
    ctypes.pythonapi.PyGILState_Ensure()
    _tls.pinned = True


def _fuse_class(mfusepy):
    class PlusFUSE(mfusepy.FUSE):
        """mfusepy's FUSE whose readdir gives the kernel every entry's attributes
        (FUSE_FILL_DIR_PLUS): ``ls -l`` of a large directory then needs no LOOKUP per entry."""

        def _wrapper(self, func, *args, **kwargs):
            if not getattr(_tls, "pinned", False):
                _pin_thread_state()
            return super()._wrapper(func, *args, **kwargs)

        def read(self, path, buf, size, offset, fip):
            # Straight from the cached blobs into libfuse's buffer: one copy, not three.
            dest = ctypes.cast(buf, ctypes.c_void_p).value
            pos = 0
            for data, lo, hi in self.operations.read_segments(size, offset, fip.contents.fh):
                n = hi - lo
                if data is None:
                    ctypes.memset(dest + pos, 0, n)
                else:
                    if type(data) is not bytes:  # noqa: E721 - _address needs real bytes
                        data = bytes(data)
                    ctypes.memmove(dest + pos, _address(data) + lo, n)
                pos += n
            return pos

        def getxattr(self, path, name, value, size, *args):
            # Without an exception for the common "no such attribute" answer: ls -l asks
            # two of them (SELinux label, ACL) for every file.
            data = self.operations.xattr(path.decode(self.encoding, self.errors),
                                         name.decode(self.encoding, self.errors))
            if data is None:
                return -_ENOATTR
            if not value:
                return len(data)
            if len(data) > size:
                return -errno.ERANGE
            ctypes.memmove(value, data, len(data))
            return len(data)

        def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
            plus = bool(flags & READDIR_PLUS)
            entries = self.operations.readdir_plus(path.decode(self.encoding, self.errors), plus)
            st = mfusepy.c_stat()
            size = ctypes.sizeof(st)
            addr = ctypes.addressof(st)
            atime, mtime, ctime = st.st_atimespec, st.st_mtimespec, st.st_ctimespec
            encoding, errors = self.encoding, self.errors
            for name, t in entries:
                raw = name.encode(encoding, errors)
                if t is None:
                    full = filler(buf, raw, None, 0, 0)
                elif len(t) == 1:
                    ctypes.memset(addr, 0, size)
                    st.st_mode = t[0]
                    full = filler(buf, raw, st, 0, 0)
                else:
                    # Field by field: mfusepy's set_st_attrs costs several times more, and a
                    # 10,000-entry directory pays it 10,000 times.
                    (st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                     st.st_blocks, st.st_rdev) = t[:8]
                    atime.tv_sec, atime.tv_nsec = divmod(t[8], 1_000_000_000)
                    mtime.tv_sec, mtime.tv_nsec = divmod(t[9], 1_000_000_000)
                    ctime.tv_sec, ctime.tv_nsec = divmod(t[10], 1_000_000_000)
                    full = filler(buf, raw, st, 0, FILL_DIR_PLUS if plus else 0)
                if full:
                    break
            return 0

    return PlusFUSE


def _mounts(mountpoint: str) -> list[str]:
    """The "major:minor" device of every mount at ``mountpoint``, bottom to top."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return [fields[2] for fields in (line.split() for line in f)
                if len(fields) > 4 and _unescape(fields[4]) == target]


def is_mounted(mountpoint: str, device: str | None = None) -> bool:
    """True if something (``device``: that "major:minor" device) is mounted at ``mountpoint``,
    dead FUSE mounts included (``os.path.ismount`` says False there, as stat fails)."""
    try:
        devices = _mounts(mountpoint)
    except OSError:
        return os.path.ismount(mountpoint)
    return bool(devices) if device is None else device in devices[-1:]


def _unescape(field: str) -> str:
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def lazy_unmount(mountpoint: str) -> bool:
    """``fusermount3 -u -z``: detach now, even while files are open. True on success."""
    try:
        return subprocess.run(["fusermount3", "-u", "-z", "-q", mountpoint],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def serve(fs: SnapshotFS, mountpoint: str, *, allow_other: bool = False,
          default_permissions: bool = True, on_ready: Callable[[], None] | None = None,
          stop_timeout: float = 10.0) -> None:
    """Mount ``fs`` at ``mountpoint`` and serve it until it is unmounted from outside
    (``fusermount3 -u``) or this process gets SIGINT, SIGTERM or SIGHUP; then unmount (lazily,
    so open files do not keep the mount alive) and return. ``on_ready`` runs once the mount
    is usable. Call from the main thread.

    Why libfuse runs in a helper thread: the main thread stays in Python, so signals arrive as
    ordinary exceptions (KeyboardInterrupt, ``Interrupted``) wherever they are delivered, and
    shutdown is ordered here. libfuse's own handlers would only wake its loop if the signal
    happened to hit the right thread, and install themselves only after mounting. Shutdown
    looks up a secret name in the root; that callback calls ``fuse_exit`` from inside the
    session, libfuse's loop returns and unmounts.
    """
    mfusepy = _mfusepy()
    _route_libfuse_log()
    options = dict(foreground=True, ro=True, nosuid=True, nodev=True, fsname="snap",
                   subtype="snap", use_ino=True, kernel_cache=True, auto_unmount=True,
                   entry_timeout=10.0, attr_timeout=10.0,
                   default_permissions=default_permissions, allow_other=allow_other)
    fuse_cls = _fuse_class(mfusepy)
    wake = threading.Event()
    result: dict = {}

    def run() -> None:
        _block_signals()  # inherited by libfuse's worker threads
        try:
            fuse_cls(fs, mountpoint, **options)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            result["error"] = exc
        finally:
            result["done"] = True
            wake.set()

    fs._on_init = wake.set
    del _libfuse_errors[:]
    _serving.clear()
    saved = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    thread = threading.Thread(target=run, name="snap-fuse", daemon=True)
    device = None  # "major:minor" of our mount, to never touch another mount at the same path
    try:
        thread.start()
        while True:
            wake.wait()
            wake.clear()
            if fs.ready.is_set() and device is None and "done" not in result:
                device = _device_of(mountpoint)
                if on_ready is not None:
                    on_ready()
            if "done" in result:
                break
    except (KeyboardInterrupt, Interrupted):
        pass
    finally:
        try:
            if thread.is_alive():
                _stop(fs, mountpoint, thread, stop_timeout, device)
            if device is not None and is_mounted(mountpoint, device):
                lazy_unmount(mountpoint)  # libfuse did not get to it (a callback hung)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            fs.close()
    error = result.get("error")
    if isinstance(error, RuntimeError) and not fs.ready.is_set():
        detail = _libfuse_errors[-1] if _libfuse_errors else f"libfuse error {error}"
        raise MountError(f"cannot mount {mountpoint}: {detail}")
    if error is not None and not isinstance(error, RuntimeError):
        raise error


def _device_of(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def _poke_exit(fs: SnapshotFS, mountpoint: str, device: str | None) -> None:
    """Look up the exit name in our mount's root (not in a mount stacked on top of it)."""
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" == device:
            os.stat(fs.exit_name, dir_fd=fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stop(fs: SnapshotFS, mountpoint: str, thread: threading.Thread, timeout: float,
          device: str | None) -> None:
    """End the session: poke it with the exit lookup; after ``timeout`` (a callback stuck on
    storage), detach the mount instead and give up on the session."""
    deadline = time.monotonic() + timeout
    detached = False
    while thread.is_alive():
        try:
            if fs.ready.is_set() and device is None:
                device = _device_of(mountpoint)
            if device is not None and not detached:
                _poke_exit(fs, mountpoint, device)
            thread.join(1.0)
            if thread.is_alive() and time.monotonic() > deadline:
                if detached or device is None:
                    return
                log.warning("the filesystem did not stop within %.0f s; detaching %s",
                            timeout, mountpoint)
                if is_mounted(mountpoint, device):
                    lazy_unmount(mountpoint)
                detached = True
                deadline = time.monotonic() + 5.0
        except (KeyboardInterrupt, Interrupted):
            continue  # already stopping
