"""The storage contract every backend (local directory, S3, wrappers) fulfils.

A backend is a flat key/value store of immutable objects. Names are ``/``-separated relative
paths made of the namespaces below; a backend never interprets the bytes it stores.

    config                 the repository configuration (encrypted)
    keys/<id>              password-wrapped master keys
    snapshots/<id>         snapshot manifests
    index/<id>             index files
    data/<2 hex>/<id>      packs (the first two hex digits of the id shard the namespace)
    locks/<id>             reserved for locks and prune markers
    state/<id>             check's per-pack verification times (see dedupe/verifystate.py)

Contract (each method states what callers may rely on):

- ``put(name, data, bulk=False)`` creates the object or raises ``AlreadyExists``; it never
  replaces an existing object, and a reader never observes a partial object under ``name``
  (after a crash the object either exists whole or not at all). ``bulk=True`` marks a data pack:
  a backend may store it in a cheaper storage class. Returns once the object is durable.
- ``get(name, offset=0, length=None)`` returns the whole object, or ``length`` bytes from
  ``offset`` (fewer only if the object ends first), as ``bytes`` or, for large reads, a
  ``bytearray`` the caller owns. Raises ``NotFound``.
- ``get_stream(name, offset, length)`` is ``get`` for a large range used piece by piece
  (restore): a ``RangeStream`` whose ``read(n)`` returns exactly ``n`` bytes, in order, and
  whose ``close()`` releases it, so that memory holds one piece and not the range. ``read``
  raises ``TransientError`` for a broken connection and ``BackendError`` when the object ends
  first; nothing retries mid-stream (a caller reads the rest with ``get``). Opening raises
  ``NotFound``. Wrappers that cannot stream fall back to ``get`` (``BufferedRange``).
- ``stat(name)`` returns the object's ``ObjectInfo``. Raises ``NotFound``.
- ``list(namespace)`` yields ``ObjectInfo`` for every object whose name starts with
  ``namespace + "/"``, in no particular order. An empty or missing namespace yields nothing.
- ``delete(name)`` removes the object. Raises ``NotFound`` if it does not exist.
- ``close()`` releases connections; the backend must not be used afterwards.

Every method may raise ``PermissionDenied`` (not retryable), ``TransientError`` (worth
retrying; the retry wrapper does so) or another ``BackendError``. Methods are safe to call from
several threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

from ..errors import BackendError

NAMESPACES = ("keys", "snapshots", "index", "data", "locks", "state")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    size: int


@runtime_checkable
class Backend(Protocol):
    #: Human readable location, e.g. ``/srv/backups`` or ``s3:bucket/prefix``. Never secret.
    location: str

    def put(self, name: str, data: bytes | memoryview, bulk: bool = False) -> None: ...

    def get(self, name: str, offset: int = 0,
            length: int | None = None) -> bytes | bytearray: ...

    def get_stream(self, name: str, offset: int, length: int) -> "RangeStream": ...

    def stat(self, name: str) -> ObjectInfo: ...

    def list(self, namespace: str) -> Iterator[ObjectInfo]: ...

    def delete(self, name: str) -> None: ...

    def close(self) -> None: ...


class RangeStream(Protocol):
    def read(self, n: int) -> bytes: ...

    def close(self) -> None: ...


def read_exactly(read: Callable[[int], bytes], n: int) -> bytes | None:
    """``n`` bytes from successive ``read(k)`` calls, or None if the source ends first."""
    data = read(n)
    while len(data) < n:
        more = read(n - len(data))
        if not more:
            return None
        data += more
    return data


class BufferedRange:
    """A range read whole, handed out as a stream: for wrappers that cannot stream."""

    def __init__(self, data: bytes | bytearray, name: str) -> None:
        self._data, self._pos, self._name = data, 0, name

    def read(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise BackendError(f"{self._name} ends before the range read from it", self._name)
        out = bytes(self._data[self._pos:end])
        self._pos = end
        return out

    def close(self) -> None:
        self._data = b""


class BackendWrapper:
    """Base of the wrappers (retry, counting, faults): holds ``inner``, closes it, and hands
    every attribute it does not define to it, so backend-specific extras
    (``create_bucket_if_missing``, ``http_request_counts``, ...) reach through a stack."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location

    def close(self) -> None:
        self.inner.close()

    def get_stream(self, name: str, offset: int, length: int) -> RangeStream:
        # Through this wrapper's own ``get``, so a wrapper that does not stream keeps its
        # behaviour (the ones in this package stream).
        return BufferedRange(self.get(name, offset, length), name)

    def __getattr__(self, attr: str) -> Any:
        # Only called for missing attributes; "inner" missing means a half-built wrapper
        # (copy/pickle): delegating would recurse forever.
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)


def pack_name(pack_id_hex: str) -> str:
    """Object name of a pack: ``data/<first 2 hex digits>/<64 hex digits>``."""
    return f"data/{pack_id_hex[:2]}/{pack_id_hex}"


_HEX = frozenset("0123456789abcdef")


def pack_id_from_name(name: str) -> bytes | None:
    """The pack id of a ``data/`` object name, or None for a name that is not a pack's (a
    stray file, a wrong shard): such objects are never read, deleted or repacked as packs."""
    parts = name.split("/")
    if (len(parts) == 3 and len(parts[2]) == 64 and set(parts[2]) <= _HEX
            and parts[1] == parts[2][:2]):
        return bytes.fromhex(parts[2])
    return None


def check_name(name: str) -> str:
    """Reject names that could escape the repository root or are not in a namespace."""
    parts = name.split("/")
    if name == "config":
        return name
    if (
        len(parts) < 2
        or parts[0] not in NAMESPACES
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in name
        or "\0" in name
    ):
        raise ValueError(f"invalid object name: {name!r}")
    return name
