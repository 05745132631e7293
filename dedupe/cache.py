"""Local cache of immutable repository objects (index, snapshots, tree packs).

Objects are immutable and named by the BLAKE3 hash of their bytes, so a cached file is valid
exactly when its bytes still hash to its name: there is nothing to invalidate, only damage to
detect (and then the entry is dropped and fetched again). Entries of objects deleted from the
repository are removed by ``prune_namespace`` when a listing (index, snapshots) or the loaded
index (tree packs) shows they are gone.

Location: ``$SNAP_CACHE_DIR`` or ``$XDG_CACHE_HOME/snap`` or ``~/.cache/snap``, then one
directory per repository id.
"""

from __future__ import annotations

import os
import threading
import uuid

from .backends.base import check_name
from .crypto import storage_id


def default_cache_root() -> str:
    root = os.environ.get("SNAP_CACHE_DIR")
    if root:
        return root
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "snap")


class Cache:
    def __init__(self, root: str, repo_id: str) -> None:
        self.dir = os.path.join(root, repo_id)
        # The file of the last ``get_range``, kept open: a walk reads tree after tree from
        # the same few packs, and open/seek/read/close cost 11 us a tree against 2 for pread.
        self._open: tuple[str, int] | None = None
        self._open_lock = threading.Lock()

    def _path(self, name: str) -> str | None:
        """Local path of an entry, or None for a name that could leave the cache directory
        (names come from storage listings, which a hostile server controls: an unchecked
        ``snapshots/../../x`` here would let a bucket read or delete local files)."""
        try:
            check_name(name)
        except ValueError:
            return None
        return os.path.join(self.dir, *name.split("/"))

    def get(self, name: str) -> bytes | None:
        path = self._path(name)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if storage_id(data) != name.rsplit("/", 1)[-1]:
            self.remove(name)
            return None
        return data

    def get_range(self, name: str, offset: int, length: int) -> bytes | None:
        """Bytes of a cached object WITHOUT verifying the whole object: only for callers that
        authenticate what they read (blobs carry an AEAD tag) and ``remove`` it if that fails."""
        with self._open_lock:
            if self._open is None or self._open[0] != name:
                path = self._path(name)
                if path is None:
                    return None
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return None
                self._close_open()
                self._open = (name, fd)
            try:
                return os.pread(self._open[1], length, offset)
            except OSError:
                return None

    def _close_open(self, name: str | None = None) -> None:
        """Close the kept file (only if it is ``name``'s, when given). Under ``_open_lock``."""
        if self._open is not None and (name is None or self._open[0] == name):
            os.close(self._open[1])
            self._open = None

    def close(self) -> None:
        with self._open_lock:
            self._close_open()

    def put(self, name: str, data: bytes) -> None:
        """Best effort: a cache that cannot be written only costs speed."""
        path = self._path(name)
        if path is None:
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            with self._open_lock:  # a kept file of this name is about to be replaced
                self._close_open(name)
                os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def has(self, name: str) -> bool:
        path = self._path(name)
        return path is not None and os.path.exists(path)

    def remove(self, name: str) -> None:
        path = self._path(name)
        if path is None:
            return
        with self._open_lock:  # a damaged copy must not stay readable through a kept file
            self._close_open(name)
        try:
            os.unlink(path)
        except OSError:
            pass

    def prune_namespace(self, namespace: str, keep: set[str]) -> None:
        """Drop cached objects of ``namespace`` whose names are not in ``keep``."""
        top = os.path.join(self.dir, namespace)
        for dirpath, _dirs, files in os.walk(top):
            rel = os.path.relpath(dirpath, self.dir).replace(os.sep, "/")
            for f in files:
                name = f"{rel}/{f}"
                if name not in keep:
                    self.remove(name)
