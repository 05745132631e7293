"""Counting storage requests by kind, for ``-v`` output, ``--json`` summaries and benchmarks.

Kinds follow S3's price list: PUT, GET, HEAD, LIST, DELETE and other (multipart bookkeeping,
bucket administration). ``request_counts(backend)`` answers for any stack of wrappers:

- if an ``S3Backend`` is at the bottom: the HTTP requests it really sent (retries included);
- otherwise: the calls that reached the innermost ``CountingBackend``
  (one ``list`` call counts as one LIST, whatever its length);
- with neither: all zeros.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Iterator

from .base import Backend, BackendWrapper, ObjectInfo, RangeStream

KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE", "other")


class CountingBackend(BackendWrapper):
    """Counts the protocol calls that pass through it (place it under the retry wrapper so
    that retried calls count as the separate requests they are)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {kind: self._counts.get(kind, 0) for kind in KINDS}

    def put(self, name: str, data: bytes | memoryview, bulk: bool = False) -> None:
        self._count("PUT")
        self.inner.put(name, data, bulk)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._count("GET")
        return self.inner.get(name, offset, length)

    def get_stream(self, name: str, offset: int, length: int) -> RangeStream:
        self._count("GET")
        return self.inner.get_stream(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        self._count("HEAD")
        return self.inner.stat(name)

    def list(self, namespace: str) -> Iterator[ObjectInfo]:
        self._count("LIST")
        return self.inner.list(namespace)

    def delete(self, name: str) -> None:
        self._count("DELETE")
        self.inner.delete(name)


def _layers(backend: Any) -> Iterator[Any]:
    while backend is not None:
        yield backend
        backend = getattr(backend, "inner", None)


def request_counts(backend: Any) -> dict[str, int]:
    """Storage requests made so far through ``backend`` (any stack of wrappers), by kind."""
    layers = list(_layers(backend))
    bottom = layers[-1]
    if callable(getattr(type(bottom), "http_request_counts", None)):
        return dict(bottom.http_request_counts())
    counting = [layer for layer in layers if isinstance(layer, CountingBackend)]
    if counting:
        return counting[-1].counts()
    return {kind: 0 for kind in KINDS}
