"""When ``check --read-data`` last verified each pack: the rotation behind ``stale:x%``.

Kept in two places holding the same bytes: ``state/<id>`` objects in the repository, so a
check from another machine continues the rotation, and copies under ``state/`` in the local
cache, so the rotation continues even where the repository cannot be written (append-only
credentials). Objects are immutable like everything else: each run that verified packs writes
a fresh object holding the merged times, then deletes the objects it merged. Merging takes the
latest time per pack, which is commutative and idempotent, so leftovers of a crash or of two
concurrent runs are harmless: the next run merges them all.

Format (docs/format.md, "Verification state"):

    name    state/<hex BLAKE3 of the stored bytes>
    stored  seal(plaintext, AAD_STATE = b"snap state v1")   (nonce || XChaCha20-Poly1305)
    plain   msgpack map {"v": 1, "kind": "verified-packs", "time": ISO 8601 with offset,
                         "hostname": str, "packs": bin}
    packs   40-byte records, sorted by pack id: pack id (32 bytes) || u64 LE unix seconds (UTC)
            of the last read that verified the pack's name, header and every blob

Readers ignore unknown map keys and skip objects of another ``kind``; a ``v`` other than 1 is
an error. Only packs present in the repository when the object was written are listed.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone

import msgpack

from .crypto import AAD_STATE, MasterKey, storage_id
from .errors import BackendError, IntegrityError, NotFound, UnsupportedVersion

STATE_VERSION = 1
STATE_KIND = "verified-packs"
NAMESPACE = "state"
_RECORD = struct.Struct("<32sQ")


def encode_state(key: MasterKey, times: dict[bytes, int], *, created: datetime,
                 hostname: str) -> bytes:
    records = b"".join(_RECORD.pack(p, t) for p, t in sorted(times.items()))
    body = {"v": STATE_VERSION, "kind": STATE_KIND, "time": created.isoformat(),
            "hostname": hostname, "packs": records}
    return key.seal(msgpack.packb(body), AAD_STATE)


def decode_state(key: MasterKey, raw: bytes, name: str) -> dict[bytes, int] | None:
    """Pack id -> unix time; None for a state object of another kind."""
    plain = key.open(raw, AAD_STATE, name)
    try:
        body = msgpack.unpackb(plain)
        version = body["v"]
    except Exception:
        raise IntegrityError(f"{name}: malformed state object", name) from None
    if version != STATE_VERSION:
        raise UnsupportedVersion(f"{name}: state version {version} is not supported")
    if body.get("kind") != STATE_KIND:
        return None
    records = body.get("packs")
    if not isinstance(records, bytes) or len(records) % _RECORD.size:
        raise IntegrityError(f"{name}: malformed state object", name)
    return dict(_RECORD.iter_unpack(records))


def merge_times(into: dict[bytes, int], more: dict[bytes, int]) -> None:
    for pack, t in more.items():
        if t > into.get(pack, -1):
            into[pack] = t


@dataclass
class LoadedState:
    times: dict[bytes, int] = field(default_factory=dict)
    repo_names: list[str] = field(default_factory=list)  # merged, to delete after saving
    cache_names: list[str] = field(default_factory=list)
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (repository name, reason)


def _cached_names(repo) -> list[str]:
    if repo.cache is None:
        return []
    try:
        return [f"{NAMESPACE}/{n}" for n in os.listdir(os.path.join(repo.cache.dir, NAMESPACE))
                if not n.startswith(".")]
    except OSError:
        return []


def load_state(repo) -> LoadedState:
    """Merge every state object of the repository and of the local cache."""
    out = LoadedState()
    for obj in repo.backend.list(NAMESPACE):
        try:
            raw = repo.backend.get(obj.name)
            if storage_id(raw) != obj.name.rsplit("/", 1)[-1]:
                raise IntegrityError(f"{obj.name}: content does not match its name", obj.name)
            times = decode_state(repo.key, raw, obj.name)
        except NotFound:
            continue  # deleted by a concurrent run after it merged it
        except (IntegrityError, UnsupportedVersion) as exc:
            out.damaged.append((obj.name, str(exc)))
            out.repo_names.append(obj.name)  # replaced by the next object written
            continue
        if times is not None:
            merge_times(out.times, times)
            out.repo_names.append(obj.name)
    for name in _cached_names(repo):
        raw = repo.cache.get(name)  # None when damaged (the cache drops it)
        if raw is None:
            continue
        try:
            times = decode_state(repo.key, raw, name)
        except (IntegrityError, UnsupportedVersion):
            repo.cache.remove(name)
            continue
        if times is not None:
            merge_times(out.times, times)
            out.cache_names.append(name)
    return out


def save_state(repo, loaded: LoadedState, times: dict[bytes, int], *, hostname: str,
               now: datetime | None = None) -> tuple[str | None, list[str]]:
    """Write ``times`` as a new state object, then delete the merged ones (in that order).

    Returns (new object name or None, warnings). A repository that refuses the write is a
    warning, not an error: the cached copy keeps the rotation going on this machine.
    """
    warnings: list[str] = []
    raw = encode_state(repo.key, times, created=now or datetime.now(timezone.utc),
                       hostname=hostname)
    name = f"{NAMESPACE}/{storage_id(raw)}"
    written = None
    try:
        repo.backend.put(name, raw)
        written = name
    except BackendError as exc:
        warnings.append(f"cannot store the verification state in the repository ({exc}); "
                        "kept in the local cache only")
    if repo.cache is not None:
        repo.cache.put(name, raw)
        for old in loaded.cache_names:
            if old != name:
                repo.cache.remove(old)
    if written:
        for old in loaded.repo_names:
            try:
                repo.backend.delete(old)
            except NotFound:
                pass  # a concurrent run deleted it first
            except BackendError as exc:
                warnings.append(f"cannot delete the old verification state {old}: {exc}")
    return written, warnings
