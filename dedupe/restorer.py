"""Restore: recreate files, contents and metadata from a snapshot.

Three phases, so every pack is read once and only for the byte ranges needed:

1. Plan (one thread): walk the snapshot, create directories, remove what stands where a file
   goes, create files with holes or hard links at their final size (holes come for free), make
   symlinks, FIFOs, device nodes and hard links, and record for every needed blob the
   (file, offset) places it goes to, grouped by pack.
2. Fill (a thread pool, ``restorefill``): for each pack, fetch the needed ranges (neighbouring
   blobs coalesced into one request), decrypt and verify each blob and ``pwrite`` it to all its
   places; a file made only of blobs is created by the first one written.
3. Finish: a file whose blobs could not all be read is given its full size; file metadata
   (owner, mode, xattrs, times), then directories deepest first, because writing into a
   directory changes its mtime.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from . import restorechild
from .errors import IntegrityError
from .filters import PathMatcher
from .index import BlobLocation
from .packs import BLOB_DATA
from .restorefill import CREATE, PackFiller
from .tree import Node
from .walker import find_node, walk

OVERWRITE_MODES = ("always", "if-changed", "if-newer", "never")
_ZERO_BLOCK = bytes(1024 * 1024)


@dataclass
class RestoreOptions:
    includes: list[PathMatcher] = field(default_factory=list)
    excludes: list[PathMatcher] = field(default_factory=list)
    sparse: bool = False
    overwrite: str = "always"
    dry_run: bool = False
    verify: bool = False
    owners: bool | None = None  # None: restore ownership only when running as root
    # Packs in flight. On two cores 4 once beat 3 by ~4% (the writes spend their time in the
    # kernel, without the GIL); since files are created by their first blob, 3 do as well:
    # over 6 alternating cold 2 GB restores 5.34 s against 5.49 s, peak RSS 6 MiB lower, and
    # half the context switches.
    workers: int = 3
    # Of the workers, how many write packs of small files (see PackFiller; 0: any of them).
    # One, on a local disk; a remote store wants its requests in parallel.
    small_pack_threads: int = 1
    # Or, from a local directory on Linux, the packs of small files are written by a child
    # process beside the threads (restorechild.py). 4 alternating cold restores of the 2 GB
    # corpus: 4.25 -> 3.98 s and 4.35 -> 3.71 s (9.35 -> 6.97 and 8.54 -> 5.96 s during a
    # disk stall); peak memory of both processes (PSS) 93-96 -> 118-123 MiB (restic: 129-132).
    # The child is forked when the restore starts: an application embedding the library whose
    # other threads may hold locks then (in OpenSSL, say) should turn this off.
    small_pack_process: bool = True
    # Largest coalesced read: bounds memory per worker. Remote stores want it large (each
    # request costs money and latency), local disks small (memory matters more).
    max_read: int = 4 * 1024 * 1024


@dataclass
class RestoreProgress:
    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    files_skipped: int = 0
    errors: int = 0


class _Meta(NamedTuple):
    """What phase 3 needs of a node. A restore plans every entry of the snapshot before it
    writes, so whole nodes (names, content lists) would hold tens of MiB on a large tree, and
    even a dict of these seven keys takes three times the memory of this tuple."""
    type: str
    uid: int
    gid: int
    mode: int
    mtime: int | None
    atime: int | None
    xattrs: list | None


def _meta(node: Node) -> _Meta:
    get = node.get
    return _Meta(node["type"], get("uid", -1), get("gid", -1), get("mode", 0o644),
                 get("mtime"), get("atime"), get("xattrs"))


@dataclass(slots=True)
class _Item:
    path: bytes
    meta: _Meta
    node: Node | None = None  # the whole node, kept for --verify only
    remaining: int = 0  # blobs still to write
    size: int = 0
    # Created by the first blob written to it, in the parallel phase (see _create_file).
    lazy: bool = False
    # Created by this restore in a fresh directory: owned by our effective uid and gid.
    ours: bool = False
    # Mode a regular file is created with: its own when the umask keeps it (see _file_mode).
    mode: int = 0o600
    # The mode it has once made, when that is certain (made in a fresh directory, umask known).
    made_with: int | None = None


def _umask() -> int | None:
    """The process's umask, read without setting it (os.umask would, for all threads)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _default_acl(path: bytes) -> bool:
    try:
        os.getxattr(path, "system.posix_acl_default")
    except OSError as exc:
        return exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return True


def _remove(path: bytes) -> None:
    """Remove what is in the way of a restored entry; directories only when empty (as restic
    does: a non-empty one fails with ENOTEMPTY rather than losing files)."""
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    else:
        os.unlink(path)


class Restorer:
    def __init__(self, repo, options: RestoreOptions | None = None, *,
                 progress: RestoreProgress | None = None,
                 on_warning: Callable[[str], None] | None = None) -> None:
        self.repo = repo
        self.opts = options or RestoreOptions()
        self.progress = progress or RestoreProgress()
        self._on_warning = on_warning
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self._by_pack: dict[bytes, dict[bytes, list]] = defaultdict(dict)  # pack -> blob -> places
        self._locs: dict[bytes, BlobLocation] = {}
        self._files: list[_Item] = []
        self._dirs: list[_Item] = []
        self._links: dict[tuple[int, int], bytes] = {}
        self._failed_dirs: set[bytes] = set()
        self._root = b""
        self._real_dirs: set[bytes] = set()  # checked or made by us: real directories
        # Made by this restore's mkdir, so empty but for what the plan puts there: nothing can
        # stand in the way of their entries, which saves an lstat per entry (on a fresh 2 GB
        # restore of 33k entries, ~0.2 s of the ~0.8 s single-threaded plan). Creation never
        # overwrites (mkdir, symlink, O_NOFOLLOW opens), so a concurrent writer makes an entry
        # fail, not escape.
        self._fresh_dirs: set[bytes] = set()
        self._ids = (os.geteuid(), os.getegid())
        self._umask = _umask()
        self._owners = os.geteuid() == 0 if self.opts.owners is None else self.opts.owners

    def _warn(self, message: str) -> None:
        with self._lock:
            self.warnings.append(message)
            self.progress.errors += 1
        if self._on_warning:
            self._on_warning(message)

    # ------------------------------------------------------------------ selection
    def _selected(self, path: bytes) -> bool:
        if any(m.matches(path) for m in self.opts.excludes):
            return False
        return not self.opts.includes or any(m.matches(path) for m in self.opts.includes)

    def _descend(self, path: bytes, node: Node) -> bool:
        if path in self._failed_dirs:
            return False
        if any(m.matches(path) for m in self.opts.excludes):
            return False
        if not self.opts.includes:
            return True
        return any(m.matches(path) or getattr(m, "child_may_match", lambda p: True)(path)
                   for m in self.opts.includes)

    # ------------------------------------------------------------------ entry point
    def restore(self, snapshot, target: str, subpath: str = "/") -> RestoreProgress:
        """Restore ``subpath`` of ``snapshot`` (its contents, for a directory) into ``target``."""
        if self.opts.overwrite not in OVERWRITE_MODES:
            raise ValueError(f"--overwrite must be one of {', '.join(OVERWRITE_MODES)}")
        child = None  # forked before the plan, to share little memory (see restorechild.py)
        if (not self.opts.dry_run and self.opts.small_pack_process
                and restorechild.usable(self.repo.backend)):
            child = restorechild.SmallPackWriter(self._child_filler)
        try:
            self._restore(snapshot, target, subpath, child)
        finally:
            if child is not None:
                child.kill()  # (nothing left to stop once phase 2 finished it)
        return self.progress

    def _restore(self, snapshot, target: str, subpath: str,
                 child: restorechild.SmallPackWriter | None) -> None:
        root = os.fsencode(os.path.abspath(target))
        self._root = root
        start = find_node(self.repo, snapshot.tree, subpath)
        prefix = b"/" + b"/".join(c for c in os.fsencode(subpath).split(b"/") if c)
        if start["type"] != "dir":  # a single file: restored under its own name
            self._plan_entry(root + b"/" + start["name"], prefix, start)
        else:
            if not self.opts.dry_run:
                os.makedirs(root, exist_ok=True)
                with os.scandir(root) as it:
                    # (a set-group-ID target would hand its group to what is made in it)
                    if next(it, None) is None and not os.stat(root).st_mode & stat.S_ISGID:
                        self._fresh_dirs.add(root)
                if _default_acl(root):  # it, not the umask, sets the modes of new files
                    self._umask = None
            cut = len(prefix) if prefix != b"/" else 0
            for path, node in walk(self.repo, start["subtree"], prefix, self._descend):
                self._plan_entry(root + path[cut:], path, node)
        if self.opts.dry_run:
            return
        self._fill(child)
        self._finish_files()
        self._finish_dirs()
        if self.opts.verify:
            self._verify()

    # ------------------------------------------------------------------ phase 1
    def _plan_entry(self, dest: bytes, snap_path: bytes, node: Node) -> None:
        if not self._selected(snap_path):
            return
        if self.opts.dry_run:
            if node["type"] == "file":
                self.progress.files_total += 1
                self.progress.bytes_total += node.get("size", 0)
            return
        try:
            self._create(dest, node)
        except OSError as exc:
            if node["type"] == "dir":
                self._failed_dirs.add(snap_path)  # its contents have nowhere safe to go
            self._warn(f"{os.fsdecode(dest)}: {exc.strerror or exc}")

    def _create(self, dest: bytes, node: Node) -> None:
        ntype = node["type"]
        parent = os.path.dirname(dest)
        self._make_parents(parent)
        fresh = parent in self._fresh_dirs
        if ntype == "dir":
            if fresh:
                os.mkdir(dest)
                self._fresh_dirs.add(dest)
            else:
                # (Not fresh even when made here: the parent may hand down its group.)
                if os.path.lexists(dest) and (os.path.islink(dest) or not os.path.isdir(dest)):
                    # A file or symlink where the snapshot has a directory: never restore
                    # through it (a symlink would send the contents outside the target).
                    if self.opts.overwrite == "never":
                        raise FileExistsError(errno.EEXIST, "exists and is not a directory")
                    os.unlink(dest)
                os.makedirs(dest, exist_ok=True)
            self._real_dirs.add(dest)
            self._dirs.append(_Item(dest, _meta(node), ours=dest in self._fresh_dirs))
            return
        if ntype == "file":
            self._create_file(dest, node, fresh)
            return
        if not fresh and os.path.lexists(dest):
            if self.opts.overwrite == "never":
                self.progress.files_skipped += 1
                return
            _remove(dest)
        if ntype == "symlink":
            os.symlink(node["target"], dest)
        elif ntype == "fifo":
            os.mkfifo(dest, node["mode"])
        elif ntype in ("chardev", "blockdev"):
            kind = stat.S_IFCHR if ntype == "chardev" else stat.S_IFBLK
            os.mknod(dest, kind | node["mode"], node.get("rdev", 0))
        else:  # sockets cannot be restored meaningfully
            return
        self._files.append(_Item(dest, _meta(node), ours=fresh))

    def _make_parents(self, parent: bytes) -> None:
        """Make sure every directory from the target down to ``parent`` is a real directory.

        With --include, the directories above a selected file are not planned themselves, and
        one may exist in the target as a symlink (from an earlier restore, or planted):
        creating the file through it would write outside the target. Such a symlink (or file)
        is replaced by a directory, or, with --overwrite never, the entry fails."""
        if parent in self._real_dirs:
            return
        root = self._root
        if parent == root or not parent.startswith(root + b"/"):
            os.makedirs(parent, exist_ok=True)  # the target itself: the user's choice
            self._real_dirs.add(parent)
            return
        current = root
        for part in parent[len(root) + 1:].split(b"/"):
            current = current + b"/" + part
            if current in self._real_dirs:
                continue
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                os.makedirs(current, exist_ok=True)
            else:
                if not stat.S_ISDIR(st.st_mode):  # a symlink (even to a directory) or a file
                    if self.opts.overwrite == "never":
                        raise FileExistsError(errno.EEXIST,
                                              f"{os.fsdecode(current)} is not a directory")
                    os.unlink(current)
                    os.mkdir(current)
            self._real_dirs.add(current)

    def _skip_existing(self, dest: bytes, node: Node) -> bool:
        mode = self.opts.overwrite
        if mode == "always":
            return False
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return False
        if mode == "never":
            return True
        if mode == "if-newer":
            return st.st_mtime_ns >= node.get("mtime", 0)
        return st.st_size == node.get("size") and st.st_mtime_ns == node.get("mtime")

    def _create_file(self, dest: bytes, node: Node, fresh: bool = False) -> None:
        p = self.progress
        size = node.get("size", 0)
        if not fresh and self._skip_existing(dest, node):
            p.files_skipped += 1
            return
        p.files_total += 1
        p.bytes_total += size
        link_key = (node.get("dev", 0), node.get("inode", 0))
        if node.get("links", 1) > 1 and link_key in self._links:
            if not fresh and os.path.lexists(dest):
                _remove(dest)
            os.link(self._links[link_key], dest)
            p.files_done += 1
            return
        try:
            existing = None if fresh else os.lstat(dest)
        except FileNotFoundError:
            existing = None
        # Whatever is there is replaced, never written through: a file with other links would
        # change the other names too (an earlier restore's hard link), and an old file keeps
        # its extended attributes through a truncate (a renamed file restored over it would
        # get them; found by the round-trip property test).
        if existing is not None:
            _remove(dest)
        parts = node.get("content") or ()
        item = _Item(dest, _meta(node), node if self.opts.verify else None, size=size,
                     ours=fresh)
        item.mode = self._file_mode(item.meta.mode)
        if fresh and self._umask is not None and not item.mode & self._umask:
            item.made_with = item.mode
        holes = []
        blobs = []  # (pack, blob, offset): registered once the file can be made
        offset = 0
        for part in parts:
            if part.__class__ is int:  # a hole
                holes.append((offset, part))
                offset += part
                p.bytes_done += part
                continue
            loc = self._locs.get(part)
            if loc is None:
                loc = self.repo.index.lookup(part, BLOB_DATA)
                if loc is None:
                    raise IntegrityError(f"{os.fsdecode(dest)}: blob {part.hex()[:16]} is missing from the index")
                self._locs[part] = loc
            blobs.append((loc.pack_id, part, offset))
            offset += loc.raw_length
        # A file made only of blobs, not hard-linked, is created by the first of its blobs to
        # be written (open with O_CREAT in the thread pool): it grows to its size by itself,
        # and this single thread does not open, truncate and close every file just so the
        # pool can open it again.
        # (Not with --sparse: a zero blob is skipped, so it could not create or grow the file.)
        item.lazy = (bool(blobs) and not holes and node.get("links", 1) == 1
                     and not self.opts.sparse)
        if not item.lazy:
            fd = os.open(dest, CREATE | os.O_TRUNC, item.mode)
            try:
                os.ftruncate(fd, size)
                if not self.opts.sparse:
                    for hole_offset, length in holes:
                        self._allocate_zeros(fd, hole_offset, length)
            finally:
                os.close(fd)
        by_pack = self._by_pack
        for pack_id, blob, blob_offset in blobs:
            by_pack[pack_id].setdefault(blob, []).append((item, blob_offset))
        item.remaining = len(blobs)
        if node.get("links", 1) > 1:
            self._links[link_key] = dest
        self._files.append(item)
        if item.remaining == 0:
            p.files_done += 1

    @staticmethod
    def _allocate_zeros(fd: int, offset: int, length: int) -> None:
        """Make a hole of a fresh file into allocated zeros (without --sparse, a restored file
        takes its full size on disk). ``fallocate`` does so without writing them: for the
        benchmark corpus's VM image, 210 MB of zeros the single planning thread wrote, and
        the kernel then wrote back to disk."""
        try:
            os.posix_fallocate(fd, offset, length)
            return
        except (AttributeError, OSError):
            pass  # not offered here, or refused: write them (a real error recurs there)
        while length > 0:
            n = os.pwrite(fd, _ZERO_BLOCK[:min(length, len(_ZERO_BLOCK))], offset)
            offset += n
            length -= n

    # ------------------------------------------------------------------ phase 2
    def _child_filler(self, warn: Callable[[str], None]) -> PackFiller:
        """The filler of the child process (restorechild.py), built in the child. Its
        reads are of small blobs: 1 MiB at most each is enough (less memory)."""
        return PackFiller(self.repo, {}, None, workers=1,
                          max_read=min(self.opts.max_read, 1024 * 1024),
                          sparse=self.opts.sparse, warn=warn, lock=threading.Lock())

    def _fill(self, child: restorechild.SmallPackWriter | None) -> None:
        PackFiller(self.repo, self._locs, self.progress, workers=self.opts.workers,
                   max_read=self.opts.max_read, sparse=self.opts.sparse, warn=self._warn,
                   small_threads=self.opts.small_pack_threads,
                   lock=self._lock).fill(self._by_pack, child)

    # ------------------------------------------------------------------ phase 3
    def _apply_metadata(self, path: bytes, meta: _Meta, ours: bool = False,
                        made_with: int | None = None) -> None:
        """``made_with``: the mode a file this restore made was created with."""
        if self._owners:
            uid, gid = meta.uid, meta.gid
            # What this restore made is owned by our ids: nothing to check when they match.
            if not (ours and uid in (-1, self._ids[0]) and gid in (-1, self._ids[1])):
                self._set_owner(path, uid, gid)
        if meta.type != "symlink" and made_with != meta.mode:
            os.chmod(path, meta.mode)
        for name, value in meta.xattrs or ():
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    self._warn(f"{os.fsdecode(path)}: cannot set xattr: {exc.strerror}")
        if meta.mtime is not None:
            atime = meta.atime if meta.atime is not None else meta.mtime
            os.utime(path, ns=(atime, meta.mtime), follow_symlinks=False)

    def _file_mode(self, mode: int) -> int:
        """The mode to create a regular file with: its final one when the umask leaves it
        whole and it lets us write (no set-ID or sticky bits, which a chown would clear), so
        that phase 3 need not chmod it (a syscall per file on the one thread); else 0o600."""
        if (self._umask is not None and not mode & ~0o777 and mode & 0o600 == 0o600
                and not mode & self._umask):
            return mode
        return 0o600

    def _set_owner(self, path: bytes, uid: int, gid: int) -> None:
        try:
            # An entry is often owned as it should be already, and an lstat is cheaper than
            # a chown, which dirties the inode (in a 2 GB restore of 31k files: the metadata
            # phase 1.0 s -> 0.85 s of ~6 s).
            st = os.lstat(path)
            if uid not in (-1, st.st_uid) or gid not in (-1, st.st_gid):
                os.lchown(path, uid, gid)
        except OSError as exc:
            self._warn(f"{os.fsdecode(path)}: cannot set owner: {exc.strerror}")

    def _finish_files(self) -> None:
        for item in self._files:
            try:
                if item.lazy and item.remaining:  # blobs were lost: the file at full size
                    fd = os.open(item.path, CREATE, item.mode)
                    try:
                        os.ftruncate(fd, item.size)
                    finally:
                        os.close(fd)
                self._apply_metadata(item.path, item.meta, item.ours, item.made_with)
            except OSError as exc:
                self._warn(f"{os.fsdecode(item.path)}: {exc.strerror}")

    def _finish_dirs(self) -> None:
        for item in sorted(self._dirs, key=lambda i: i.path.count(b"/"), reverse=True):
            try:
                self._apply_metadata(item.path, item.meta, item.ours)
            except OSError as exc:
                self._warn(f"{os.fsdecode(item.path)}: {exc.strerror}")

    # ------------------------------------------------------------------ --verify
    def _verify(self) -> None:
        key = self.repo.key
        for item in self._files:
            node = item.node
            if node is None or item.meta.type != "file":
                continue
            try:
                with open(item.path, "rb") as f:
                    for part in node.get("content") or ():
                        if isinstance(part, int):
                            if f.read(part).strip(b"\0"):
                                raise IntegrityError("hole holds data")
                            continue
                        data = f.read(self._locs[part].raw_length)
                        if key.blob_id(data) != part:
                            raise IntegrityError("content differs from the snapshot")
                    if f.read(1):
                        raise IntegrityError("file is longer than in the snapshot")
            except (OSError, IntegrityError) as exc:
                self._warn(f"verify {os.fsdecode(item.path)}: {exc}")

