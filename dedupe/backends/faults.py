"""Fault injection for any backend: transient errors, latency and "reset after success".

Used by tests (and usable by hand to rehearse a flaky network) to show that the retry wrapper
and the engine above it survive a bad connection. Each call of an operation in ``ops`` fails
with probability ``error_rate``, in one of two ways chosen at random:

- *before*: the request never reached the server, nothing happened;
- *after*: the operation was carried out, then the connection "reset" before the reply came
  back (a put stored the object, a delete removed it, a get read it). This is the case that
  catches naive retry logic: the retried put meets its own object.

``list`` can also fail half-way, after handing out some entries, and a ``get_stream`` in the
middle of its range (an "after" fault there).

Only ``TransientError`` is raised, as a real backend does for such failures.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Callable, Iterator

from ..errors import TransientError
from .base import Backend, BackendWrapper, ObjectInfo, RangeStream

ALL_OPS = ("put", "get", "stat", "list", "delete")


class FaultInjectingBackend(BackendWrapper):
    def __init__(self, inner: Backend, error_rate: float = 0.05, latency: float = 0.0,
                 seed: int | None = None, ops: tuple[str, ...] | list[str] = ALL_OPS) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
        unknown = set(ops) - set(ALL_OPS)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; known: {ALL_OPS}")
        super().__init__(inner)
        self.error_rate = error_rate
        self.latency = latency
        self.ops = frozenset(ops)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        #: Injected faults so far, by "<op>:<before|after|midway>".
        self.injected: Counter[str] = Counter()

    def _draw(self, op: str) -> str | None:
        """None (no fault) or when the fault strikes: "before" or "after" the operation."""
        if self.latency:
            time.sleep(self.latency)
        if op not in self.ops:
            return None
        with self._lock:
            if self._rng.random() >= self.error_rate:
                return None
            return "before" if self._rng.random() < 0.5 else "after"

    def _fault(self, op: str, when: str, name: str | None) -> TransientError:
        with self._lock:
            self.injected[f"{op}:{when}"] += 1
        return TransientError(f"injected fault ({op} {when}) for {name}", name)

    def put(self, name: str, data: bytes | memoryview, bulk: bool = False) -> None:
        when = self._draw("put")
        if when == "before":
            raise self._fault("put", when, name)
        self.inner.put(name, data, bulk)
        if when == "after":
            raise self._fault("put", when, name)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        when = self._draw("get")
        if when == "before":
            raise self._fault("get", when, name)
        data = self.inner.get(name, offset, length)
        if when == "after":
            raise self._fault("get", when, name)
        return data

    def get_stream(self, name: str, offset: int, length: int) -> RangeStream:
        """A "get" fault strikes before the stream opens, or midway: the read that reaches
        half the range raises, as a connection cut during the body would."""
        when = self._draw("get")
        if when == "before":
            raise self._fault("get", when, name)
        stream = self.inner.get_stream(name, offset, length)
        if when == "after":
            return _BrokenMidway(stream, length // 2, lambda: self._fault("get", "midway", name))
        return stream

    def stat(self, name: str) -> ObjectInfo:
        when = self._draw("stat")
        if when == "before":
            raise self._fault("stat", when, name)
        info = self.inner.stat(name)
        if when == "after":
            raise self._fault("stat", when, name)
        return info

    def list(self, namespace: str) -> Iterator[ObjectInfo]:
        when = self._draw("list")
        if when == "before":
            raise self._fault("list", when, namespace)
        items = self.inner.list(namespace)
        if when == "after":
            # Fail half-way: hand out a few entries, then break off as a dropped connection does.
            with self._lock:
                stop_after = self._rng.randrange(0, 4)
            for i, info in enumerate(items):
                if i == stop_after:
                    raise self._fault("list", "midway", namespace)
                yield info
            raise self._fault("list", "midway", namespace)
        yield from items

    def delete(self, name: str) -> None:
        when = self._draw("delete")
        if when == "before":
            raise self._fault("delete", when, name)
        self.inner.delete(name)
        if when == "after":
            raise self._fault("delete", when, name)


class _BrokenMidway:
    def __init__(self, inner: RangeStream, good: int, fault: Callable[[], TransientError]) -> None:
        self._inner, self._good, self._fault = inner, good, fault

    def read(self, n: int) -> bytes:
        if n > self._good:
            raise self._fault()
        self._good -= n
        return self._inner.read(n)

    def close(self) -> None:
        self._inner.close()
