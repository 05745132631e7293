"""S3 repository locations (``s3:BUCKET/PREFIX``, ``s3:https://HOST/BUCKET/PREFIX``), the
endpoint from the environment, and storage classes: what the user wrote, checked before any
client is made."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import BackendConfigError

STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR")
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_AWS_HOST_RE = re.compile(r"^s3([.-][a-z0-9-]+)*\.amazonaws\.com(\.cn)?$")


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # without leading or trailing "/"; "" for the bucket's root
    endpoint: str | None  # scheme://host[:port] when the URL names one


def parse_s3_url(url: str) -> S3Location:
    """Split an ``s3:`` repository URL; ``BackendConfigError`` says what is wrong with it."""
    forms = "expected s3:BUCKET/PREFIX or s3:https://HOST[:PORT]/BUCKET/PREFIX"
    if not url.startswith("s3:"):
        raise BackendConfigError(f"not an S3 location: {url!r} ({forms})")
    rest = url[3:]
    endpoint = None
    if rest.startswith(("http://", "https://")):
        parts = urlsplit(rest)
        if parts.username is not None or parts.password is not None:
            # Do not echo the URL: it holds what looks like a secret.
            raise BackendConfigError(
                "credentials must not be part of the repository URL: give them in "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        try:
            port = parts.port
        except ValueError:
            raise BackendConfigError(f"invalid port in {url!r} ({forms})") from None
        if not parts.hostname:
            raise BackendConfigError(f"no host in {url!r} ({forms})")
        if parts.query or parts.fragment:
            raise BackendConfigError(f"unexpected '?' or '#' in {url!r} ({forms})")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        endpoint = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
        rest = parts.path
    elif rest.startswith("//"):
        rest = rest[2:]  # s3://BUCKET/PREFIX, as the AWS CLI writes it
    rest = rest.strip("/")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise BackendConfigError(f"no bucket in {url!r} ({forms})")
    if endpoint is None and _AWS_HOST_RE.match(bucket):
        raise BackendConfigError(
            f"{url!r} names the host {bucket!r} where a bucket is expected: write "
            f"s3:BUCKET/PREFIX for AWS, or s3:https://{bucket}/BUCKET/PREFIX")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise BackendConfigError(
            f"invalid bucket name {bucket!r} in {url!r}: bucket names are 3-63 characters of "
            f"lowercase letters, digits, '.', '-' and '_' ({forms})")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise BackendConfigError(f"invalid prefix {prefix!r} in {url!r}: no empty, '.' or '..' "
                                 f"path components")
    return S3Location(bucket, prefix, endpoint)


def env_endpoint() -> str | None:
    """The endpoint AWS's own tools would use from the environment, if any."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def check_storage_class(storage_class: str | None) -> str | None:
    if storage_class is None:
        return None
    sc = storage_class.strip().upper()
    if sc in ARCHIVE_CLASSES:
        raise BackendConfigError(
            f"storage class {sc} is not supported: objects in it cannot be read without a "
            f"restore request first, so restore, check and prune would fail; use GLACIER_IR "
            f"(instant retrieval) or one of {', '.join(STORAGE_CLASSES)}")
    if sc not in STORAGE_CLASSES:
        raise BackendConfigError(f"unknown S3 storage class {storage_class!r}: use one of "
                                 f"{', '.join(STORAGE_CLASSES)}")
    return sc
