"""Storage backends: the contract (``base``), implementations and wrappers.

``open_backend`` turns a repository location into a backend:

    /srv/backups, local:/srv/backups      LocalBackend
    s3:BUCKET/PREFIX, s3:http://HOST/...   S3Backend
"""

from __future__ import annotations

from typing import Any

from ..errors import BackendConfigError
from .base import NAMESPACES, Backend, ObjectInfo, pack_name
from .local import LocalBackend

__all__ = ["Backend", "ObjectInfo", "NAMESPACES", "LocalBackend", "open_backend", "pack_name"]


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
