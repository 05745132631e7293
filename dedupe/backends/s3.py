"""S3 backend: the chunk store in a bucket on AWS S3 or any S3-compatible server.

Locations::

    s3:BUCKET[/PREFIX]                         AWS (region from AWS_REGION, the profile, ...);
                                               AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL redirect it
    s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]   any S3-compatible endpoint (Ceph RGW, MinIO, ...)

Credentials come only from boto3's standard chain (environment, AWS_PROFILE, shared config,
instance/container roles); they are never part of a location, never stored, never printed.
The client is botocore's own (the core of boto3, with the same chain): boto3's session adds
resource objects and transfer helpers that snap does not use, and importing it cost every
S3 command ~0.06 s.

How the contract is kept on S3:

- Never overwrite: ``PutObject`` carries ``If-None-Match: *`` so the server itself refuses an
  existing name (HTTP 412 -> ``AlreadyExists``), which is also safe against racing writers. A
  server that answers 501 NotImplemented gets HEAD-then-PUT for the rest of the process (racy
  between two writers, but objects are content-addressed, so a racing writer writes the same
  bytes). Multipart uploads HEAD first as well, because some servers (Ceph RGW 16) accept
  ``If-None-Match`` on CompleteMultipartUpload but ignore it.
- Integrity in transit: every PUT and every part carries Content-MD5, which AWS, Ceph RGW,
  MinIO and others verify before storing (BadDigest -> ``TransientError``, sent again). We send
  MD5 rather than the newer ``x-amz-checksum-*`` trailers because older S3-compatible servers
  verify only Content-MD5.
- Atomic visibility: an S3 object appears whole or not at all; a failed multipart upload is
  aborted so its parts do not linger (and ``install_lifecycle_rule`` cleans up after crashes).
- Retries: botocore's own retries are switched off (one attempt per call). The engine wraps the
  backend in ``RetryBackend`` (exponential backoff, full jitter), and two stacked retry layers
  would multiply into retry storms and hide what really happened on the wire. The one
  exception: a part of a multipart upload is sent up to ``PART_ATTEMPTS`` times, so a
  transient failure repeats that part, not the whole object.

Every HTTP request botocore sends (each attempt, each part, each HeadBucket probe) is counted
by kind through its ``before-send`` event; see ``http_request_counts``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
import time
import uuid
from collections import Counter
from typing import Any, Iterator

import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, IncompleteReadError

from ..errors import AlreadyExists, BackendConfigError, BackendError, NotFound, TransientError
from .base import NAMESPACES, BufferedRange, ObjectInfo, check_name, read_exactly
from .s3_errors import ErrorMapper, error_code, is_not_implemented
from .s3_url import check_storage_class, env_endpoint, parse_s3_url

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Objects larger than this go up as multipart uploads (S3 allows at most 5 GiB in one PUT,
#: and a failed 32 MiB PUT is cheap to repeat).
MULTIPART_THRESHOLD = 32 * MiB
PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's limit for every part but the last
MAX_PARTS = 10_000
#: Sends of one part before a transient failure fails the whole upload (the retry wrapper
#: then starts it over); the pause doubles from _PART_PAUSE seconds.
PART_ATTEMPTS = 3
_PART_PAUSE = 0.2

#: Request kinds for counting, by S3 operation. Everything else (multipart bookkeeping,
#: bucket administration) is "other".
REQUEST_KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE", "other")
_KIND_OF_OPERATION = {
    "PutObject": "PUT", "UploadPart": "PUT",
    "GetObject": "GET",
    "HeadObject": "HEAD", "HeadBucket": "HEAD",
    "ListObjectsV2": "LIST", "ListObjects": "LIST", "ListMultipartUploads": "LIST",
    "ListParts": "LIST",
    "DeleteObject": "DELETE", "DeleteObjects": "DELETE",
}

_loader_lock = threading.Lock()
_shared_loader: Any = None


def _new_session() -> botocore.session.Session:
    """A fresh session (credentials are resolved per backend) sharing one model loader: loading
    the S3 service description costs ~0.1 s per session otherwise."""
    global _shared_loader
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = botocore.loaders.create_loader()
        session = botocore.session.get_session()
        session.register_component("data_loader", _shared_loader)
        return session


def _md5_b64(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


class _ViewReader(io.RawIOBase):
    """A read-only, seekable file over a buffer. botocore takes bytes and bytearrays as they
    are but nothing else; the blob saver's packs are views of larger pack buffers, and a
    16 MiB copy per upload in flight cost ~50 MB of peak memory. A file, botocore reads in
    blocks, and seeks back to its start on a retry."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), len(self._view) - self._pos))
        buffer[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)


def _body(data: bytes | bytearray | memoryview, view: memoryview):
    """What to hand botocore as a PUT body without copying ``data`` (``view``: its bytes)."""
    return data if isinstance(data, (bytes, bytearray)) else _ViewReader(view)


_PIECE = 1024 * 1024  # bytes per read of a large body


def _read_body(body, size: int | None) -> bytes | bytearray:
    """A reply body; a large one read into a buffer of its announced size, a piece at a time.
    ``read()`` holds every received piece and their join at once, twice the object's size
    per connection at its peak (with 16 MiB packs and five connections, the 300 MB S3
    benchmark's restore peaked at 143 MiB that way, 140 MiB this way; larger packs gain
    more). A body that ends early raises botocore's IncompleteReadError."""
    if not size or size < 2 * _PIECE:
        return body.read()
    buf = bytearray(size)
    view = memoryview(buf)
    pos = 0
    while pos < size:
        n = body.readinto(view[pos:pos + _PIECE])  # (botocore raises at an early end)
        if not n:
            raise IncompleteReadError(actual_bytes=pos, expected_bytes=size)
        pos += n
    return buf


class _BodyRange:
    """``S3Backend.get_stream``: the reply body, read blob by blob. Restoring a whole pack per
    GET held the pack in memory per connection (16 MiB each, five connections)."""

    def __init__(self, body, name: str, fail) -> None:
        self._body, self._name, self._fail = body, name, fail

    def read(self, n: int) -> bytes:
        try:
            data = read_exactly(self._body.read, n)
            if data is None:  # (botocore raises first when the body is shorter than announced)
                raise IncompleteReadError(actual_bytes=0, expected_bytes=n)
        except (BotoCoreError, OSError) as exc:
            raise self._fail(exc, "get", self._name) from None
        return data

    def close(self) -> None:
        self._body.close()  # unread bytes: the connection is dropped, not reused


class S3Backend:
    """A repository under ``prefix`` in ``bucket``. Thread-safe; one connection pool."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        storage_class: str | None = None,
        connections: int = 5,
        path_style: bool | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        conditional_put: bool | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        location: str | None = None,
    ) -> None:
        if connections < 1:
            raise BackendConfigError(f"--s3-connections must be at least 1, not {connections}")
        if part_size < MIN_PART_SIZE:
            raise BackendConfigError(f"multipart part size must be at least {MIN_PART_SIZE} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.storage_class = check_storage_class(storage_class)
        self.multipart_threshold = max(multipart_threshold, part_size)
        self.part_size = part_size
        self.location = location or (
            f"s3:{endpoint + '/' if endpoint else ''}{bucket}" + (f"/{self.prefix}" if self.prefix else ""))
        self._base = f"{self.prefix}/" if self.prefix else ""
        #: None: try If-None-Match and fall back on 501; True: always; False: HEAD-then-PUT.
        self._conditional = conditional_put
        #: Set once the bucket is known to exist; until then an ambiguous 404 (HEAD has no body
        #: to say NoSuchBucket) costs one HeadBucket to tell "no such object" from "no bucket".
        self._bucket_known = False
        self._errors = ErrorMapper(bucket, self._base, endpoint)
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()

        session = _new_session()
        region = session.get_config_variable("region")
        if endpoint and not region:
            region = "us-east-1"  # SigV4 needs some region; S3-compatible servers accept this one
        if path_style is None:
            path_style = endpoint is not None  # most S3-compatible servers lack virtual hosts
        config = Config(
            max_pool_connections=connections,
            retries={"total_max_attempts": 1, "mode": "standard"},  # RetryBackend retries
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            tcp_keepalive=True,
            s3={"addressing_style": "path" if path_style else "auto"},
            # We send Content-MD5 ourselves (see the module docstring); no CRC trailers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_appid="snap",
        )
        try:
            self._client = session.create_client("s3", endpoint_url=endpoint,
                                                 region_name=region, config=config)
        except (BotoCoreError, ValueError) as exc:
            raise BackendConfigError(f"cannot set up S3 client for {self.location}: {exc}") from None
        self._client.meta.events.register("before-send.s3", self._count_request)

    @classmethod
    def from_url(cls, url: str, *, storage_class: str | None = None, connections: int = 5,
                 path_style: bool | None = None, **options: Any) -> "S3Backend":
        """Open ``s3:...`` (see the module docstring). ``options`` go to ``__init__``."""
        loc = parse_s3_url(url)
        endpoint = loc.endpoint or env_endpoint()
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise BackendConfigError(f"S3 endpoint {endpoint!r} (from AWS_ENDPOINT_URL*) must start "
                                     f"with http:// or https://")
        location = url.rstrip("/") if loc.endpoint else f"s3:{loc.bucket}" + (
            f"/{loc.prefix}" if loc.prefix else "")
        return cls(loc.bucket, loc.prefix, endpoint=endpoint, storage_class=storage_class,
                   connections=connections, path_style=path_style, location=location, **options)

    # ------------------------------------------------------------------ helpers

    def _key(self, name: str) -> str:
        return self._base + name

    def _count_request(self, event_name: str = "", **_: Any) -> None:
        # Must return None: a value returned from before-send would replace the HTTP response.
        kind = _KIND_OF_OPERATION.get(event_name.rsplit(".", 1)[-1], "other")
        with self._counts_lock:
            self._counts[kind] += 1

    def http_request_counts(self) -> dict[str, int]:
        """HTTP requests sent so far, by kind (PUT, GET, HEAD, LIST, DELETE, other)."""
        with self._counts_lock:
            return {kind: self._counts.get(kind, 0) for kind in REQUEST_KINDS}

    def _fail(self, exc: BaseException, op: str, name: str | None) -> BackendError:
        mapped = self._errors.map(exc, op, name)
        if isinstance(mapped, NotFound) and not self._bucket_known:
            if isinstance(exc, ClientError) and error_code(exc)[0] == "NoSuchKey":
                self._bucket_known = True  # only an existing bucket says NoSuchKey
            else:
                self._check_bucket()  # raises the clearer "bucket missing" error if so
        return mapped

    def _check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code, status = error_code(exc)
            if status == 404 or code == "NoSuchBucket":
                raise self._errors.bucket_missing() from None
            raise self._errors.map(exc, "check", None) from None
        except BotoCoreError as exc:
            raise self._errors.map(exc, "check", None) from None
        self._bucket_known = True

    def _exists(self, name: str) -> bool:
        """HEAD before a PUT. No bucket check on 404: the PUT itself says NoSuchBucket."""
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(name))
            return True
        except ClientError as exc:
            if error_code(exc)[1] == 404:
                return False
            raise self._fail(exc, "stat", name) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "stat", name) from None

    # ------------------------------------------------------------------ contract

    def put(self, name: str, data: bytes | memoryview, bulk: bool = False) -> None:
        check_name(name)
        view = memoryview(data).cast("B")
        extra: dict[str, Any] = {}
        if bulk and self.storage_class not in (None, "STANDARD"):
            extra["StorageClass"] = self.storage_class
        if view.nbytes > self.multipart_threshold:
            self._put_multipart(name, view, extra)
            return
        md5 = _md5_b64(view)
        if self._conditional is not False:
            try:
                self._client.put_object(Bucket=self.bucket, Key=self._key(name),
                                        Body=_body(data, view), ContentMD5=md5,
                                        IfNoneMatch="*", **extra)
                self._bucket_known = True
                return
            except ClientError as exc:
                if not (is_not_implemented(exc) and self._conditional is None):
                    raise self._put_error(exc, name, extra) from None
                log.info("%s does not support conditional PUT; using HEAD before PUT", self.location)
                self._conditional = False
            except BotoCoreError as exc:
                raise self._fail(exc, "put", name) from None
        if self._exists(name):
            raise AlreadyExists(f"object exists: {self._errors.where(name)}", name)
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(name),
                                    Body=_body(data, view), ContentMD5=md5, **extra)
        except (ClientError, BotoCoreError) as exc:
            raise self._put_error(exc, name, extra) from None

    def _put_error(self, exc: BaseException, name: str, extra: dict[str, Any]) -> BackendError:
        if isinstance(exc, ClientError) and "StorageClass" in extra:
            code, _ = error_code(exc)
            if code in ("InvalidStorageClass", "InvalidArgument"):
                return BackendConfigError(
                    f"{self.location}: the server refused storage class {self.storage_class} "
                    f"({code}); choose another --s3-storage-class (S3-compatible servers often "
                    f"know only STANDARD)", name)
        return self._fail(exc, "put", name)

    def _put_multipart(self, name: str, view: memoryview, extra: dict[str, Any]) -> None:
        key = self._key(name)
        if self._exists(name):
            raise AlreadyExists(f"object exists: {self._errors.where(name)}", name)
        part_size = max(self.part_size, -(-view.nbytes // MAX_PARTS))
        try:
            upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                             **extra)["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            raise self._put_error(exc, name, extra) from None
        try:
            parts = []
            for number, offset in enumerate(range(0, view.nbytes, part_size), start=1):
                chunk = view[offset:offset + part_size].tobytes()
                etag = self._upload_part(key, upload_id, number, chunk)
                parts.append({"ETag": etag, "PartNumber": number})
            self._complete_multipart(key, upload_id, parts)
        except BaseException as exc:
            # Parts of an unfinished upload are invisible but billed: abort it (best effort;
            # the lifecycle rule catches what a crash leaves behind).
            self._abort_multipart(key, upload_id)
            if isinstance(exc, (ClientError, BotoCoreError)):
                raise self._put_error(exc, name, extra) from None
            raise

    def _upload_part(self, key: str, upload_id: str, number: int, chunk: bytes) -> str:
        """Send one part, again after a transient failure: the parts sent so far stay
        valid, so only this one is repeated (not the whole object, up to pack size)."""
        md5 = _md5_b64(chunk)
        for attempt in range(PART_ATTEMPTS):
            try:
                return self._client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                PartNumber=number, Body=chunk,
                                                ContentMD5=md5)["ETag"]
            except (ClientError, BotoCoreError) as exc:
                if attempt + 1 == PART_ATTEMPTS or \
                        not isinstance(self._errors.map(exc, "put", None), TransientError):
                    raise
                log.info("part %d of %s failed (%s); sending it again", number, key, exc)
                time.sleep(_PART_PAUSE * 2 ** attempt)
        raise AssertionError("unreachable")

    def _complete_multipart(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        args = dict(Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts})
        if self._conditional is not False:
            try:
                self._client.complete_multipart_upload(**args, IfNoneMatch="*")
                return
            except ClientError as exc:
                if not (is_not_implemented(exc) and self._conditional is None):
                    raise
                self._conditional = False
        self._client.complete_multipart_upload(**args)

    def _abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not abort multipart upload of %s: %s", key, exc)

    def get(self, name: str, offset: int = 0,
            length: int | None = None) -> bytes | bytearray:
        check_name(name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range offset={offset} length={length}")
        if length == 0:
            self.stat(name)  # keep the contract: NotFound for a missing object
            return b""
        args: dict[str, Any] = {}
        if length is not None:
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            args["Range"] = f"bytes={offset}-"
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self._key(name), **args)
            data = _read_body(reply["Body"], reply.get("ContentLength"))
        except ClientError as exc:
            code, status = error_code(exc)
            if status == 416 or code == "InvalidRange":
                return b""  # the object exists but ends before ``offset``
            raise self._fail(exc, "get", name) from None
        except (BotoCoreError, OSError) as exc:
            raise self._fail(exc, "get", name) from None
        self._bucket_known = True
        if args and "ContentRange" not in reply:
            # A server that ignores Range sends the whole object; cut it here.
            data = data[offset:] if length is None else data[offset:offset + length]
        return data

    def get_stream(self, name: str, offset: int, length: int) -> "_BodyRange | BufferedRange":
        """One ranged GET whose body is read as the caller goes (see base.py)."""
        check_name(name)
        if offset < 0 or length <= 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self._key(name),
                                            Range=f"bytes={offset}-{offset + length - 1}")
        except ClientError as exc:
            code, status = error_code(exc)
            if status == 416 or code == "InvalidRange":
                return BufferedRange(b"", name)  # the object ends before ``offset``
            raise self._fail(exc, "get", name) from None
        except (BotoCoreError, OSError) as exc:
            raise self._fail(exc, "get", name) from None
        self._bucket_known = True
        if "ContentRange" not in reply:  # a server that ignores Range: the whole object
            try:
                data = _read_body(reply["Body"], reply.get("ContentLength"))
            except (BotoCoreError, OSError) as exc:
                raise self._fail(exc, "get", name) from None
            return BufferedRange(data[offset:offset + length], name)
        return _BodyRange(reply["Body"], name, self._fail)

    def stat(self, name: str) -> ObjectInfo:
        check_name(name)
        try:
            reply = self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "stat", name) from None
        self._bucket_known = True
        return ObjectInfo(name, int(reply["ContentLength"]))

    def list(self, namespace: str) -> Iterator[ObjectInfo]:
        if namespace not in NAMESPACES:
            raise ValueError(f"unknown namespace {namespace!r}")
        paginator = self._client.get_paginator("list_objects_v2")
        skip = len(self._base)
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(namespace) + "/"):
                for obj in page.get("Contents", ()):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue  # "folder" markers made by web consoles are not objects
                    yield ObjectInfo(key[skip:], int(obj["Size"]))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "list", f"{namespace}/") from None
        self._bucket_known = True

    def delete(self, name: str) -> None:
        # S3 answers DELETE of a missing key with 204 like any other: HEAD first to honour the
        # contract's NotFound. Deletes are rare (prune, key removal, locks), so the extra
        # request is cheap.
        self.stat(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "delete", name) from None

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ administration

    def create_bucket_if_missing(self) -> bool:
        """Create the bucket unless it exists (for ``init``). True if it was created."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            self._bucket_known = True
            return False
        except ClientError as exc:
            code, status = error_code(exc)
            if not (status == 404 or code == "NoSuchBucket"):
                raise self._errors.map(exc, "check", None) from None
        except BotoCoreError as exc:
            raise self._errors.map(exc, "check", None) from None
        args: dict[str, Any] = {}
        region = self._client.meta.region_name
        if self.endpoint is None and region and region not in ("us-east-1", "aws-global"):
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(Bucket=self.bucket, **args)
        except ClientError as exc:
            code, _ = error_code(exc)
            if code == "BucketAlreadyOwnedByYou":
                self._bucket_known = True
                return False
            if code == "BucketAlreadyExists":
                raise BackendConfigError(f"bucket name {self.bucket!r} is taken by another "
                                         f"account: choose another bucket name") from None
            raise self._errors.map(exc, "create bucket", None) from None
        except BotoCoreError as exc:
            raise self._errors.map(exc, "create bucket", None) from None
        self._bucket_known = True
        return True

    def install_lifecycle_rule(self, days: int = 7) -> None:
        """Make the bucket abort multipart uploads left unfinished for ``days`` under our prefix.

        Other rules of the bucket are kept: S3 replaces the whole lifecycle configuration.
        """
        if days < 1:
            raise ValueError("days must be at least 1")
        rule_id = "snap-abort-incomplete-uploads-" + hashlib.sha256(self._base.encode()).hexdigest()[:12]
        try:
            try:
                rules = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
            except ClientError as exc:
                if error_code(exc)[0] != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
            rules = [r for r in rules if r.get("ID") != rule_id]
            rules.append({"ID": rule_id, "Status": "Enabled", "Filter": {"Prefix": self._base},
                          "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days}})
            self._client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})
        except (ClientError, BotoCoreError) as exc:
            raise self._errors.map(exc, "lifecycle configuration", None) from None

    def probe_conditional_put(self) -> bool:
        """Whether the server refuses a second ``If-None-Match: *`` PUT (for ``init``).

        Some S3-compatible servers ignore the header silently; ``init`` can record the answer
        in the repository config and later opens pass ``conditional_put=`` accordingly. The
        probe object lies outside every namespace and is deleted again.
        """
        key = f"{self._base}conditional-put-probe-{uuid.uuid4().hex}"
        args = dict(Bucket=self.bucket, Key=key, Body=b"probe", ContentMD5=_md5_b64(b"probe"))
        try:
            self._client.put_object(**args)
            try:
                self._client.put_object(**args, IfNoneMatch="*")
                return False
            except ClientError as exc:
                if error_code(exc)[1] == 412:
                    return True
                if is_not_implemented(exc):
                    return False
                raise
            finally:
                self._client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._errors.map(exc, "probe", None) from None
