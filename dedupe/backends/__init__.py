"""Storage backends: the contract (``base``), implementations and wrappers.

``open_backend`` turns a repository location into a backend:

    /srv/backups, local:/srv/backups      LocalBackend
    s3:BUCKET/PREFIX, s3:http://HOST/...   S3Backend

``wrap_backend`` puts the standard wrappers around a raw backend for the repository to use:
retries on transient errors, request counting (``request_counts``), and optionally injected
faults for tests.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import BackendConfigError
from .base import NAMESPACES, Backend, ObjectInfo, pack_name
from .counting import CountingBackend, request_counts
from .faults import FaultInjectingBackend
from .local import LocalBackend
from .retry import RetryBackend

__all__ = [
    "Backend", "ObjectInfo", "NAMESPACES", "LocalBackend", "is_local", "open_backend", "pack_name",
    "wrap_backend", "RetryBackend", "CountingBackend", "FaultInjectingBackend", "request_counts",
]


def open_backend(url: str, **options: Any) -> Backend:
    """Open the backend named by ``url``. ``options`` go to backends that take them (S3)."""
    if not url:
        raise BackendConfigError("no repository given (use -r/--repo or SNAP_REPOSITORY)")
    if url.startswith("s3:"):
        from .s3 import S3Backend

        return S3Backend.from_url(url, **options)
    if url.startswith("local:"):
        url = url[len("local:"):]
    scheme = url.split(":", 1)[0]
    if ":" in url and "/" not in scheme and len(scheme) > 1 and not url.startswith("/"):
        raise BackendConfigError(f"unsupported repository type {scheme!r} in {url!r}")
    return LocalBackend(url)


def is_local(backend: Backend) -> bool:
    """Whether ``backend`` is a local directory, under any wrappers (which hold ``inner``)."""
    while (inner := getattr(backend, "inner", None)) is not None:
        backend = inner
    return isinstance(backend, LocalBackend)


def wrap_backend(backend: Backend, *, retry_attempts: int = 6, retry_base_delay: float = 0.2,
                 retry_max_delay: float = 10.0, fault_rate: float | None = None,
                 fault_seed: int | None = None) -> Backend:
    """``backend`` inside the standard stack: Retry(Faults?(Counting?(backend))).

    Counting sits innermost so retried calls count as the separate requests they are; an S3
    backend counts its real HTTP requests itself and gets no ``CountingBackend``. Faults sit
    between the retries and the storage, where a flaky network would be: ``fault_rate`` > 0,
    or when it is None, the environment's ``SNAP_FAULT_RATE`` (and ``SNAP_FAULT_SEED``), so
    that tests and rehearsals can run the real ``snap`` command over a bad connection.
    ``request_counts(wrapped)`` works on the result.
    """
    if fault_rate is None:
        fault_rate, env_seed = _faults_from_environment()
        fault_seed = env_seed if fault_seed is None else fault_seed
    inner: Backend = backend
    if not callable(getattr(type(backend), "http_request_counts", None)):
        inner = CountingBackend(inner)
    if fault_rate:
        inner = FaultInjectingBackend(inner, error_rate=fault_rate, seed=fault_seed)
    return RetryBackend(inner, attempts=retry_attempts, base_delay=retry_base_delay,
                        max_delay=retry_max_delay)


def _faults_from_environment() -> tuple[float, int | None]:
    rate_text = os.environ.get("SNAP_FAULT_RATE", "").strip()
    seed_text = os.environ.get("SNAP_FAULT_SEED", "").strip()
    try:
        rate = float(rate_text) if rate_text else 0.0
        seed = int(seed_text) if seed_text else None
    except ValueError:
        raise BackendConfigError("SNAP_FAULT_RATE must be a number within [0, 1] and "
                                 "SNAP_FAULT_SEED an integer") from None
    if not 0.0 <= rate <= 1.0:
        raise BackendConfigError("SNAP_FAULT_RATE must be within [0, 1]")
    return rate, seed
