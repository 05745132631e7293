"""Retrying wrapper: exponential backoff with full jitter on ``TransientError`` only.

Permanent errors (``NotFound``, ``AlreadyExists``, ``PermissionDenied``, configuration errors,
``ValueError`` for bad names) pass through at once: repeating them only delays the message.

Full jitter (sleep a uniform random time in ``[0, min(max_delay, base_delay * 2**attempt)]``)
spreads the retries of many threads hitting the same throttled server, instead of having them
come back in lock-step waves.

Two places where "the request failed" does not mean "nothing happened":

- ``put``: a PUT can be stored by the server and the reply lost (connection reset, timeout).
  The retry then meets ``AlreadyExists`` for the object *we* just wrote. After a transient
  failure of our own, an existing object of the same size counts as success. Why that is
  safe: object names are content-derived (packs, index files, snapshots are named by the hash
  of what they hold; keys and config by fresh random ids), so another writer putting different
  bytes under the same name in that window is practically impossible; the size check still
  catches the impossible case of a different object (and a short one left by a broken server).
  Comparing the bytes would need a GET of the whole object, which is what the repository's
  ``check`` is for.
- ``delete``: likewise, a retry that finds the object gone after a transient failure of our own
  delete has succeeded.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, Iterator, TypeVar

from ..errors import AlreadyExists, NotFound, TransientError
from .base import Backend, BackendWrapper, ObjectInfo, RangeStream

T = TypeVar("T")


class RetryBackend(BackendWrapper):
    def __init__(self, inner: Backend, attempts: int = 6, base_delay: float = 0.2,
                 max_delay: float = 10.0, *, sleep: Callable[[float], None] = time.sleep,
                 seed: int | None = None) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        super().__init__(inner)
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._retries = 0  # total retries done, for statistics and tests

    @property
    def retries(self) -> int:
        return self._retries

    def _backoff(self, attempt: int) -> None:
        with self._rng_lock:
            delay = self._rng.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** attempt))
            self._retries += 1
        self._sleep(delay)

    def _call(self, fn: Callable[[], T]) -> T:
        for attempt in range(self.attempts):
            try:
                return fn()
            except TransientError:
                if attempt + 1 >= self.attempts:
                    raise
            self._backoff(attempt)
        raise AssertionError("unreachable")

    def put(self, name: str, data: bytes | memoryview, bulk: bool = False) -> None:
        size = memoryview(data).nbytes
        failed_before = False
        for attempt in range(self.attempts):
            try:
                self.inner.put(name, data, bulk)
                return
            except TransientError:
                failed_before = True
                if attempt + 1 >= self.attempts:
                    raise
            except AlreadyExists:
                # Our earlier attempt may have stored the object before its reply was lost.
                if failed_before and self._call(lambda: self.inner.stat(name)).size == size:
                    return
                raise
            self._backoff(attempt)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(lambda: self.inner.get(name, offset, length))

    def get_stream(self, name: str, offset: int, length: int) -> RangeStream:
        # Opening is retried; a read that fails midway is the caller's (see base.py).
        return self._call(lambda: self.inner.get_stream(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self._call(lambda: self.inner.stat(name))

    def list(self, namespace: str) -> Iterator[ObjectInfo]:
        # A listing that fails half-way is started again; names already handed out are
        # skipped so the caller sees each object once.
        seen: set[str] = set()
        for attempt in range(self.attempts):
            try:
                for info in self.inner.list(namespace):
                    if info.name not in seen:
                        seen.add(info.name)
                        yield info
                return
            except TransientError:
                if attempt + 1 >= self.attempts:
                    raise
            self._backoff(attempt)

    def delete(self, name: str) -> None:
        failed_before = False
        for attempt in range(self.attempts):
            try:
                self.inner.delete(name)
                return
            except TransientError:
                failed_before = True
                if attempt + 1 >= self.attempts:
                    raise
            except NotFound:
                if failed_before:
                    return  # our earlier attempt deleted it; only its reply was lost
                raise
            self._backoff(attempt)
