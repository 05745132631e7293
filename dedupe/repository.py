"""An opened repository: keys, config, index, snapshots and blob reads.

Writes of blobs go through ``BlobSaver`` (see blobsaver.py); this module writes the small
objects (config, keys, index files, snapshots), each sealed and named by the hash of its
stored bytes, and reads everything back with verification.
"""

from __future__ import annotations

import getpass
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from . import __version__
from .backends.base import Backend, pack_name
from .blobsaver import BlobSaver
from .cache import Cache, default_cache_root
from .config import Config
from .crypto import KdfParams, MasterKey, parse_key_file, storage_id, unwrap_master_key, wrap_master_key
from .errors import (
    IntegrityError, KeyManagementError, NoRepository, NotFound, RepositoryExists, SnapError,
    SnapshotNotFound, UnsupportedVersion, WrongPassword,
)
from .index import MasterIndex, decode_index_file, encode_index_file
from .packs import BLOB_TREE, RECORD_SIZE, BlobCodec, BlobEntry
from .snapshot import Snapshot


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _identity() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except Exception:
        user = ""
    return socket.gethostname(), user


@dataclass(frozen=True)
class KeyInfo:
    id: str
    created: str
    hostname: str
    username: str
    current: bool
    damaged: bool = False  # fails its hash check or cannot be parsed


_OBJECT_ID = re.compile(r"[0-9a-f]{64}")


def _listed_names(backend: Backend, namespace: str) -> list[str]:
    """Names in a namespace, each ``<namespace>/<64 hex>``. Listings come from storage that
    may be hostile: a name such as ``snapshots/../../x`` must never reach a local path (the
    cache) or be taken for an object snap wrote."""
    names = []
    for obj in backend.list(namespace):
        if not _OBJECT_ID.fullmatch(obj.name[len(namespace) + 1:]):
            raise IntegrityError(f"{obj.name!r} is not a snap object name (foreign or tampered)",
                                 obj.name)
        names.append(obj.name)
    return names


def _read_key_file(backend: Backend, name: str) -> bytes:
    """A key file, verified against its name (the hash also covers the plaintext metadata
    and the KDF parameters, which the AEAD tag does not)."""
    if not _OBJECT_ID.fullmatch(name.split("/", 1)[1]):
        raise IntegrityError(f"{name!r} is not a snap object name (foreign or tampered)", name)
    raw = backend.get(name)
    if storage_id(raw) != name.rsplit("/", 1)[1]:
        raise IntegrityError(f"{name}: content does not match its name (damaged)", name)
    return raw


class Repository:
    def __init__(self, backend: Backend, key: MasterKey, config: Config, key_id: str,
                 cache: Cache | None) -> None:
        self.backend = backend
        self.key = key
        self.config = config
        self.key_id = key_id
        self.cache = cache
        self.codec = BlobCodec(key, config.compression_level)
        self._index: MasterIndex | None = None
        self._index_ids: set[str] = set()
        self._index_listed: set[str] = set()
        self._index_lock = threading.Lock()

    # ---------------------------------------------------------------- create / open
    @classmethod
    def init(cls, backend: Backend, password: bytes, config: Config | None = None, *,
             kdf: KdfParams = KdfParams(), cache_root: str | None = None,
             no_cache: bool = False) -> "Repository":
        """Create a repository. Refuses a location that holds a config or keys already."""
        config = (config or Config()).validate()
        try:
            backend.stat("config")
            raise RepositoryExists(f"a repository already exists at {backend.location}")
        except NotFound:
            pass
        if next(iter(backend.list("keys")), None) is not None:
            raise RepositoryExists(f"{backend.location} already holds key files")
        master = MasterKey.generate()
        host, user = _identity()
        # Key first, config last: a crash between them leaves no config, so the location does
        # not look like a repository and init can be run again after removing the key.
        raw_key = wrap_master_key(master, password, kdf, hostname=host, username=user,
                                  created=_now())
        key_id = storage_id(raw_key)
        backend.put(f"keys/{key_id}", raw_key)
        backend.put("config", config.encode(master))
        cache = None if no_cache else Cache(cache_root or default_cache_root(), config.id)
        return cls(backend, master, config, key_id, cache)

    @classmethod
    def open(cls, backend: Backend, password: bytes | Callable[[], bytes], *,
             cache_root: str | None = None, no_cache: bool = False) -> "Repository":
        """Open with a password, or a callable asked for it only once the location turned
        out to hold a repository (no prompt for a mistyped path)."""
        try:
            raw_config = backend.get("config")
        except NotFound:
            raise NoRepository(f"no repository at {backend.location} (run 'snap init' first?)") from None
        names = [o.name for o in backend.list("keys")]
        if not names:
            raise NoRepository(f"{backend.location} has a config but no key files")
        if callable(password):
            password = password()
        master = key_id = None
        damaged: list[SnapError] = []
        for name in sorted(names):
            try:
                master = unwrap_master_key(_read_key_file(backend, name), password, name)
                key_id = name.split("/", 1)[1]
                break
            except WrongPassword:
                continue
            except NotFound:
                continue  # removed by another session since the listing
            except (IntegrityError, UnsupportedVersion) as exc:
                # One damaged (or newer) key file must not lock out the other passwords.
                damaged.append(exc)
        if master is None or key_id is None:
            if damaged:
                raise IntegrityError(f"no intact key file matches the password; "
                                     f"{len(damaged)} damaged: {damaged[0]}")
            raise WrongPassword("wrong password: no key file of the repository matches it")
        config = Config.decode(master, raw_config)
        cache = None if no_cache else Cache(cache_root or default_cache_root(), config.id)
        return cls(backend, master, config, key_id, cache)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.backend.close()

    def new_saver(self, **kwargs) -> BlobSaver:
        return BlobSaver(self, **kwargs)

    # ---------------------------------------------------------------- small objects
    def cache_put(self, name: str, data: bytes) -> None:
        if self.cache is not None:
            self.cache.put(name, data)

    def _get_verified(self, name: str, use_cache: bool = True) -> bytes:
        """Fetch an object named by its hash, from the cache when there, and verify it."""
        if use_cache and self.cache is not None:
            data = self.cache.get(name)
            if data is not None:
                return data
        data = self.backend.get(name)
        if storage_id(data) != name.rsplit("/", 1)[1]:
            raise IntegrityError(f"{name}: content does not match its name (damaged)", name)
        if use_cache:
            self.cache_put(name, data)
        return data

    def _put_sealed(self, namespace: str, sealed: bytes, cache: bool = True) -> str:
        oid = storage_id(sealed)
        name = f"{namespace}/{oid}"
        self.backend.put(name, sealed)
        if cache:
            self.cache_put(name, sealed)
        return oid

    # ---------------------------------------------------------------- keys
    def list_keys(self) -> list[KeyInfo]:
        out = []
        for obj in self.backend.list("keys"):
            kid = obj.name.split("/", 1)[1]
            if not _OBJECT_ID.fullmatch(kid):
                continue  # not a key file (and no name to hand to delete)
            try:
                d = parse_key_file(_read_key_file(self.backend, obj.name), obj.name)
            except (IntegrityError, UnsupportedVersion):
                # Listed (and so removable with 'key remove'), not hidden and not fatal.
                out.append(KeyInfo(kid, "", "", "", kid == self.key_id, damaged=True))
                continue
            out.append(KeyInfo(kid, d.get("created", ""), d.get("hostname", ""),
                               d.get("username", ""), kid == self.key_id))
        return sorted(out, key=lambda k: (k.created, k.id))

    def add_key(self, password: bytes, kdf: KdfParams = KdfParams()) -> str:
        host, user = _identity()
        raw = wrap_master_key(self.key, password, kdf, hostname=host, username=user,
                              created=_now())
        kid = storage_id(raw)
        self.backend.put(f"keys/{kid}", raw)
        return kid

    def remove_key(self, key_id: str) -> str:
        keys = self.list_keys()
        matches = [k for k in keys if k.id.startswith(key_id)] if key_id else []
        if len(matches) != 1:
            raise KeyManagementError(f"no unique key matches {key_id!r}")
        target = matches[0]
        if target.current:
            raise KeyManagementError(
                "refusing to remove the key in use; open the repository with another "
                "password to remove it, or use 'snap key passwd'")
        if len(keys) < 2:
            raise KeyManagementError("refusing to remove the last key")
        self.backend.delete(f"keys/{target.id}")
        return target.id

    def change_password(self, new_password: bytes, kdf: KdfParams = KdfParams()) -> str:
        """Add a key for the new password, then remove the current one (in that order)."""
        old = self.key_id
        new = self.add_key(new_password, kdf)
        self.key_id = new
        self.backend.delete(f"keys/{old}")
        return new

    # ---------------------------------------------------------------- index
    @property
    def index(self) -> MasterIndex:
        if self._index is None:
            with self._index_lock:
                if self._index is None:
                    self._index = self._load_index()
        return self._index

    def reload_index(self) -> MasterIndex:
        """Load the index afresh (prune: after listing snapshots, so none is missed)."""
        with self._index_lock:
            self._index_ids = set()
            self._index = self._load_index()
        return self._index

    def invalidate_index(self) -> None:
        """Forget the in-memory index; the next use loads it from storage. A failed write
        session calls this: its durable packs may be in memory without any index file naming
        them, and deduplicating against them would make snapshots reference lost blobs."""
        with self._index_lock:
            self._index = None
            self._index_ids = set()

    def index_ids(self) -> set[str]:
        """Ids of the index files in use (not superseded)."""
        self.index  # noqa: B018 - loads it
        return set(self._index_ids)

    def listed_index_ids(self) -> set[str]:
        """Every index file present at load time, superseded ones included. A new index
        that supersedes must name all of these: if it named only the active ones, deleting
        the file that superseded an old one would bring that old one back to life."""
        self.index  # noqa: B018 - loads it
        return set(self._index_listed)

    def _load_index(self, progress: Callable[[int, int], None] | None = None) -> MasterIndex:
        def fetch(name: str):
            try:
                return name, decode_index_file(self.key, self._get_verified(name), name)
            except NotFound:
                return name, None

        for _attempt in range(5):
            names = _listed_names(self.backend, "index")
            with ThreadPoolExecutor(8) as pool:
                files = list(pool.map(fetch, names))
            # A file that vanished after the listing was superseded and deleted by a
            # concurrent prune, which writes the superseding file first: list again.
            if all(body is not None for _, body in files):
                break
        else:
            missing = next(name for name, body in files if body is None)
            raise NotFound(f"{missing} keeps disappearing while the index loads", missing)
        if self.cache is not None:
            self.cache.prune_namespace("index", set(names))
        self._index_listed = {name.split("/", 1)[1] for name in names}
        superseded = {s.hex() for _, body in files for s in body["supersedes"]}
        index = MasterIndex(expected_blobs=sum(
            len(records) // RECORD_SIZE for name, body in files
            if name.split("/", 1)[1] not in superseded for _, records in body["packs"]))
        for name, body in files:
            iid = name.split("/", 1)[1]
            if iid in superseded:
                continue
            self._index_ids.add(iid)
            for pack_id, records in body["packs"]:
                index.add_pack_records(pack_id, records)
        index.maybe_compact()  # small repositories stay in a dict (no numpy import)
        if self.cache is not None:
            # Tree packs another client's prune deleted (this client's own prune removes
            # its entries as it goes). As restic does; a pack a concurrent backup in another
            # process cached but has not indexed yet is only fetched again when needed.
            self.cache.prune_namespace("data", {pack_name(p.hex()) for p in index.packs()})
        return index

    def write_index(self, packs: Iterable[tuple[bytes, list[BlobEntry]]],
                    supersedes: Iterable[bytes] = ()) -> str:
        iid = self._put_sealed("index", encode_index_file(self.key, packs, supersedes))
        self._index_ids.add(iid)
        return iid

    # ---------------------------------------------------------------- blobs
    def load_blob(self, blob_type: int, blob_id: bytes) -> bytes:
        loc = self.index.lookup(blob_id, blob_type)
        if loc is None:
            raise IntegrityError(f"blob {blob_id.hex()} is not in the index", blob_id.hex())
        name = pack_name(loc.pack_id.hex())
        what = f"blob {blob_id.hex()[:16]} in {name}"
        if blob_type == BLOB_TREE and self.cache is not None:
            # Read only the blob's range from the cached pack: hashing the whole pack on every
            # tree load made a cached tree ~100x slower than an uncached one. The blob's AEAD
            # tag and id check cover the bytes read; a damaged copy is dropped and fetched again.
            stored = self.cache.get_range(name, loc.offset, loc.length)
            if stored is not None and len(stored) == loc.length:
                try:
                    return self.codec.decode(loc.entry(blob_id), stored, what)
                except IntegrityError:
                    self.cache.remove(name)
            pack = self._get_verified(name)
            stored = pack[loc.offset:loc.offset + loc.length]
        else:
            stored = self.backend.get(name, loc.offset, loc.length)
        if len(stored) != loc.length:
            raise IntegrityError(f"{what}: pack is shorter than the index says", name)
        return self.codec.decode(loc.entry(blob_id), stored, what)

    # ---------------------------------------------------------------- snapshots
    def save_snapshot(self, snap: Snapshot) -> str:
        snap.program_version = snap.program_version or f"snap {__version__}"
        snap.id = self._put_sealed("snapshots", snap.encode(self.key))
        return snap.id

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        name = f"snapshots/{snapshot_id}"
        try:
            raw = self._get_verified(name)
        except NotFound:
            raise SnapshotNotFound(f"snapshot {snapshot_id} not found") from None
        return Snapshot.decode(self.key, raw, snapshot_id)

    def snapshot_ids(self) -> list[str]:
        ids = [n.split("/", 1)[1] for n in _listed_names(self.backend, "snapshots")]
        if self.cache is not None:
            self.cache.prune_namespace("snapshots", {f"snapshots/{i}" for i in ids})
        return ids

    def list_snapshots(self) -> list[Snapshot]:
        """All snapshots, oldest first (one forgotten while we list is left out)."""
        def load(sid: str) -> Snapshot | None:
            try:
                return self.load_snapshot(sid)
            except SnapshotNotFound:
                return None

        with ThreadPoolExecutor(8) as pool:
            snaps = [s for s in pool.map(load, self.snapshot_ids()) if s is not None]
        return sorted(snaps, key=lambda s: (s.time, s.id))

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.backend.delete(f"snapshots/{snapshot_id}")
        if self.cache is not None:
            self.cache.remove(f"snapshots/{snapshot_id}")

    def find_snapshot(self, ref: str, snapshots: list[Snapshot] | None = None, *,
                      filter_fn: Callable[[Snapshot], bool] | None = None) -> Snapshot:
        """Resolve a full id, a unique prefix, or ``latest`` (after ``filter_fn``)."""
        snaps = snapshots if snapshots is not None else self.list_snapshots()
        if filter_fn is not None:
            snaps = [s for s in snaps if filter_fn(s)]
        if ref == "latest":
            if not snaps:
                raise SnapshotNotFound("no snapshot matches 'latest'")
            return max(snaps, key=lambda s: (s.time, s.id))
        matches = [s for s in snaps if s.id.startswith(ref.lower())] if ref else []
        if not matches:
            raise SnapshotNotFound(f"no snapshot matches {ref!r}")
        if len(matches) > 1:
            raise SnapshotNotFound(f"snapshot prefix {ref!r} is ambiguous ({len(matches)} match)")
        return matches[0]


def default_identity() -> tuple[str, str]:
    """(hostname, username) recorded in snapshots and key files."""
    return _identity()

