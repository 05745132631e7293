"""The storage contract (dedupe/backends/base.py) on every backend, and the backend wrappers.

Runs on a local directory, moto's S3 server and Ceph RGW (see conftest.py), all for real: the
S3 tests speak HTTP to servers on 127.0.0.1.
"""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dedupe.backends import (
    CountingBackend,
    FaultInjectingBackend,
    LocalBackend,
    RetryBackend,
    open_backend,
    pack_name,
    request_counts,
    wrap_backend,
)
from dedupe.backends.s3 import S3Backend
from dedupe.backends.s3_url import parse_s3_url
from conftest import selected_backend_kinds
from dedupe.errors import (
    AlreadyExists,
    BackendConfigError,
    BackendError,
    NotFound,
    PermissionDenied,
    TransientError,
)

MiB = 1024 * 1024


def hexid(rng: random.Random) -> str:
    return "%064x" % rng.getrandbits(256)


def names_in(backend: Any, namespace: str) -> dict[str, int]:
    return {o.name: o.size for o in backend.list(namespace)}


# ------------------------------------------------------------------------------ the contract


def test_put_get_stat_list_delete(backend):
    backend.put("config", b"the config")
    backend.put("keys/k1", b"key one")
    assert backend.get("config") == b"the config"
    assert backend.stat("keys/k1").size == 7
    assert backend.stat("keys/k1").name == "keys/k1"
    assert names_in(backend, "keys") == {"keys/k1": 7}
    backend.delete("keys/k1")
    assert names_in(backend, "keys") == {}
    with pytest.raises(NotFound):
        backend.get("keys/k1")


def test_put_takes_views_of_reused_buffers(backend):
    """The blob saver hands packs over as views of reusable anonymous mappings: stored
    byte for byte, and the buffer may be reused once put returns."""
    import mmap

    from dedupe.backends.base import pack_name

    rng = random.Random(5)
    buf = mmap.mmap(-1, 1 << 20)
    names = []
    for size in (300_000, 0, 70_001):
        data = rng.randbytes(size)
        buf[:size] = data
        names.append((pack_name(hexid(rng)), data))
        backend.put(names[-1][0], memoryview(buf)[:size], bulk=True)
        buf[:size] = bytes(size)  # reused at once
    for name, data in names:
        assert backend.get(name) == data
        assert backend.stat(name).size == len(data)


def test_ranged_get(backend):
    data = bytes(range(256)) * 4
    backend.put("index/i", data)
    assert backend.get("index/i", 10, 5) == data[10:15]
    assert backend.get("index/i", 1000) == data[1000:]
    assert backend.get("index/i", 1020, 100) == data[1020:]  # fewer: the object ends first
    assert backend.get("index/i", len(data), 10) == b""
    assert backend.get("index/i", 5, 0) == b""
    assert backend.get("index/i", 0, len(data)) == data


def test_streamed_range_reads_exact_pieces_in_order(backend):
    data = os.urandom(3 * MiB + 333)
    name = pack_name("ab" * 32)
    backend.put(name, data)
    stream = backend.get_stream(name, 1000, 2 * MiB + 7)
    try:
        assert stream.read(100) == data[1000:1100]
        assert stream.read(MiB) == data[1100:1100 + MiB]
        assert stream.read(MiB - 93) == data[1100 + MiB:1000 + 2 * MiB + 7]
    finally:
        stream.close()
    stream = backend.get_stream(name, len(data) - 10, 10)
    assert stream.read(10) == data[-10:]
    stream.close()


def test_streamed_range_past_the_end_raises(backend):
    backend.put("index/i", b"0123456789")
    stream = backend.get_stream("index/i", 4, 100)  # asks for more than the object holds
    try:
        assert stream.read(6) == b"456789"
        with pytest.raises(BackendError):
            stream.read(1)
    finally:
        stream.close()


def test_streamed_range_of_a_missing_object_is_not_found(backend):
    with pytest.raises(NotFound):
        backend.get_stream(pack_name("cd" * 32), 0, 10)


def test_empty_object(backend):
    backend.put("locks/empty", b"")
    assert backend.get("locks/empty") == b""
    assert backend.stat("locks/empty").size == 0


def test_put_never_overwrites(backend):
    backend.put("snapshots/s1", b"first")
    with pytest.raises(AlreadyExists) as err:
        backend.put("snapshots/s1", b"second, longer")
    assert err.value.name == "snapshots/s1"
    with pytest.raises(AlreadyExists):
        backend.put("snapshots/s1", b"first")
    assert backend.get("snapshots/s1") == b"first"


def test_missing_objects_raise_not_found(backend):
    for call in (lambda: backend.get("config"), lambda: backend.get("data/00/" + "0" * 64, 5, 5),
                 lambda: backend.stat("index/nope"), lambda: backend.delete("locks/nope")):
        with pytest.raises(NotFound) as err:
            call()
        assert err.value.name is not None


def test_invalid_names_are_refused(backend):
    for bad in ("../config", "data", "other/x", "data//x", "data/../config", "/config"):
        with pytest.raises(ValueError):
            backend.put(bad, b"x")
    with pytest.raises(ValueError):
        list(backend.list("nonsense"))


def test_sharded_names_and_empty_namespaces(backend):
    rng = random.Random(1)
    ids = [hexid(rng) for _ in range(20)] + ["00" + "1" * 62, "ff" + "2" * 62]
    for i, pid in enumerate(ids):
        backend.put(pack_name(pid), b"p" * i, bulk=True)
    assert names_in(backend, "data") == {pack_name(pid): i for i, pid in enumerate(ids)}
    for namespace in ("keys", "snapshots", "index", "locks"):
        assert names_in(backend, namespace) == {}


def test_sibling_location_is_separate(repo_location, backend, make_backend):
    # "repo" and "repo2" share a prefix as strings; neither may see the other's objects.
    sibling = make_backend(repo_location.url + "2")
    backend.put("keys/a", b"a")
    sibling.put("keys/b", b"bb")
    assert names_in(backend, "keys") == {"keys/a": 1}
    assert names_in(sibling, "keys") == {"keys/b": 2}


def test_concurrent_puts_from_threads(backend):
    rng = random.Random(2)
    payloads = {pack_name(hexid(rng)): os.urandom(rng.randrange(1, 5000)) for _ in range(48)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: backend.put(item[0], item[1], bulk=True), payloads.items()))
    assert names_in(backend, "data") == {n: len(d) for n, d in payloads.items()}
    with ThreadPoolExecutor(8) as pool:
        got = dict(pool.map(lambda n: (n, backend.get(n)), payloads))
    assert got == payloads


def test_racing_puts_of_one_name_store_exactly_one(backend):
    contenders = [bytes([i]) * 100 for i in range(8)]
    barrier = threading.Barrier(len(contenders))
    outcomes: list[str] = []

    def race(data: bytes) -> None:
        barrier.wait()
        try:
            backend.put("locks/race", data)
            outcomes.append("stored")
        except AlreadyExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=race, args=(d,)) for d in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["exists"] * 7 + ["stored"]
    assert backend.get("locks/race") in contenders


def test_large_object_goes_up_whole(repo_location, make_backend):
    # Small thresholds so that S3 uses a three-part multipart upload (5 MiB is S3's minimum).
    b = make_backend(multipart_threshold=6 * MiB, part_size=5 * MiB)
    data = os.urandom(12 * MiB + 123)
    before = request_counts(b)
    b.put("data/ab/" + "ab" * 32, data, bulk=True)
    after = request_counts(b)
    assert b.get("data/ab/" + "ab" * 32) == data
    assert b.get("data/ab/" + "ab" * 32, 5 * MiB - 10, 20) == data[5 * MiB - 10:5 * MiB + 10]
    # ranges large enough that S3 reads the body a piece at a time
    assert b.get("data/ab/" + "ab" * 32, MiB + 7, 3 * MiB + 5) == data[MiB + 7:4 * MiB + 12]
    assert b.get("data/ab/" + "ab" * 32, 9 * MiB) == data[9 * MiB:]
    with pytest.raises(AlreadyExists):
        b.put("data/ab/" + "ab" * 32, data, bulk=True)
    if repo_location.is_s3:
        assert after["PUT"] - before["PUT"] == 3  # three parts
        assert after["other"] - before["other"] == 2  # create + complete
        uploads = repo_location.server.client().list_multipart_uploads(Bucket=repo_location.bucket)
        assert not uploads.get("Uploads")


# ------------------------------------------------------------------------------ S3 specifics


#: Tests marked so run on the S3 servers only (of those SNAP_TEST_BACKENDS selects).
s3_only = pytest.mark.parametrize(
    "backend_kind", [k for k in selected_backend_kinds() if k != "local"])


class _RawBody:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, *args: Any, **kwargs: Any):
        yield self.body


def canned_reply(request: Any, status: int, code: str, message: str = "") -> Any:
    """An S3 error reply, for answers moto and Ceph do not give on demand. Returned from a
    botocore ``before-send`` hook, it replaces the request on the wire; everything after it
    (botocore's parser, our error mapping, the retry wrapper) runs as for a real reply."""
    from botocore.awsrequest import AWSResponse

    body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>{message}</Message></Error>").encode()
    if request.method == "HEAD":
        body = b""
    return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _RawBody(body))


def fail_first(backend: Any, operation: str, replies: list[tuple[int, str]]) -> None:
    """Make the next len(replies) requests of ``operation`` get these (status, code) replies."""
    pending = list(replies)

    def hook(request, **kwargs):
        if pending:
            status, code = pending.pop(0)
            return canned_reply(request, status, code)
        return None

    backend._client.meta.events.register_first(f"before-send.s3.{operation}", hook)


@s3_only
@pytest.mark.parametrize("status, code", [
    (503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable"),
    (400, "RequestTimeout"), (400, "BadDigest"), (429, "TooManyRequests"),
])
def test_server_side_trouble_is_transient_and_retried(repo_location, make_backend, status, code):
    raw = make_backend()
    raw.put("index/i", b"index bytes")
    fail_first(raw, "GetObject", [(status, code)])
    with pytest.raises(TransientError, match="temporary failure"):
        raw.get("index/i")
    fail_first(raw, "PutObject", [(status, code), (status, code)])
    # (HEAD replies have no body; botocore reads a bare 400 on HEAD as a possible region
    # mismatch and probes the bucket, so HEAD gets a 5xx here.)
    fail_first(raw, "HeadObject", [(503, "")])
    r, sleeps = retrying(raw)
    r.put("index/j", b"more")
    assert r.stat("index/j").size == 4
    assert len(sleeps) == 3
    assert raw.get("index/j") == b"more"


@s3_only
def test_view_body_is_sent_again_after_server_trouble(repo_location, make_backend):
    from dedupe.backends.base import pack_name

    raw = make_backend()
    data = random.Random(6).randbytes(200_000)
    name = pack_name(hexid(random.Random(7)))
    fail_first(raw, "PutObject", [(503, "SlowDown"), (500, "InternalError")])
    r, sleeps = retrying(raw)
    r.put(name, memoryview(bytearray(b"xx" + data))[2:], bulk=True)
    assert len(sleeps) == 2
    assert raw.get(name) == data


@s3_only
@pytest.mark.parametrize("operation, status, code, error", [
    ("GetObject", 403, "AccessDenied", PermissionDenied),
    ("HeadObject", 403, "", PermissionDenied),
    ("PutObject", 403, "InvalidAccessKeyId", PermissionDenied),
    ("GetObject", 400, "ExpiredToken", PermissionDenied),
    ("GetObject", 301, "PermanentRedirect", BackendConfigError),
])
def test_permanent_refusals_fail_fast(repo_location, make_backend, operation, status, code, error):
    raw = make_backend()
    raw.put("index/i", b"index bytes")
    fail_first(raw, operation, [(status, code)] * 10)
    r, sleeps = retrying(raw)
    call = {"GetObject": lambda: r.get("index/i"), "HeadObject": lambda: r.stat("index/i"),
            "PutObject": lambda: r.put("index/k", b"k")}[operation]
    before = request_counts(raw)
    with pytest.raises(error) as err:
        call()
    assert raw.bucket in str(err.value)
    assert sleeps == []  # not retried
    if status != 301:  # (on a 301 botocore's region redirector first asks for the region)
        assert sum(request_counts(raw).values()) - sum(before.values()) == 1


@s3_only
def test_failed_multipart_upload_is_aborted(repo_location, make_backend):
    import botocore.exceptions

    from dedupe.backends import s3

    b = make_backend(multipart_threshold=6 * MiB, part_size=5 * MiB)
    calls = []

    def drop_second_part(**kwargs):  # the connection breaks at every send of part 2
        calls.append(1)
        if len(calls) >= 2:
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=repo_location.server.endpoint)

    b._client.meta.events.register("before-send.s3.UploadPart", drop_second_part)
    with pytest.raises(TransientError):
        b.put("data/cd/" + "cd" * 32, os.urandom(12 * MiB), bulk=True)
    with pytest.raises(NotFound):
        b.stat("data/cd/" + "cd" * 32)
    assert len(calls) == 1 + s3.PART_ATTEMPTS
    client = repo_location.server.client()
    assert not client.list_multipart_uploads(Bucket=repo_location.bucket).get("Uploads")


@s3_only
def test_a_part_that_fails_once_is_sent_again_alone(repo_location, make_backend):
    b = make_backend(multipart_threshold=6 * MiB, part_size=5 * MiB)
    name = "data/ce/" + "ce" * 32
    data = os.urandom(12 * MiB + 5)
    fail_first(b, "UploadPart", [(500, "InternalError")])
    before = request_counts(b)
    b.put(name, data, bulk=True)
    after = request_counts(b)
    assert after["PUT"] - before["PUT"] == 4  # three parts, one of them twice
    assert after["other"] - before["other"] == 2  # one upload: create + complete
    assert b.get(name) == data


@s3_only
def test_every_put_carries_a_content_md5_the_server_checks(repo_location, make_backend):
    import base64
    import hashlib

    b = make_backend(multipart_threshold=6 * MiB, part_size=5 * MiB)
    seen: list[tuple[str, bool]] = []

    def inspect(request, event_name, **kwargs):
        body = request.body if isinstance(request.body, bytes) else request.body.read()
        if hasattr(request.body, "seek"):
            request.body.seek(0)
        expected = base64.b64encode(hashlib.md5(body).digest()).decode()
        sent = request.headers.get("Content-MD5")
        sent = sent.decode() if isinstance(sent, bytes) else sent
        seen.append((event_name.rsplit(".", 1)[-1], sent == expected))

    b._client.meta.events.register("before-send.s3.PutObject", inspect)
    b._client.meta.events.register("before-send.s3.UploadPart", inspect)
    b.put("keys/small", b"small")
    b.put("data/ee/" + "e" * 64, os.urandom(11 * MiB), bulk=True)
    assert seen == [("PutObject", True), ("UploadPart", True), ("UploadPart", True),
                    ("UploadPart", True)]
    if repo_location.server.checks_credentials:  # Ceph: the server does verify the digest
        import botocore.exceptions

        wrong = base64.b64encode(hashlib.md5(b"other bytes").digest()).decode()
        with pytest.raises(botocore.exceptions.ClientError, match="BadDigest"):
            repo_location.server.client().put_object(
                Bucket=repo_location.bucket, Key="repo/keys/damaged", Body=b"bytes", ContentMD5=wrong)


@s3_only
def test_missing_bucket_is_named_in_the_error(repo_location):
    bucket = repo_location.server.new_bucket(create=False)
    b = open_backend(repo_location.server.url(bucket))
    try:
        for call in (lambda: b.stat("config"), lambda: b.get("config"),
                     lambda: list(b.list("keys")), lambda: b.put("config", b"x")):
            with pytest.raises(BackendConfigError, match=f"bucket '{bucket}' does not exist.*snap init"):
                call()
        assert b.create_bucket_if_missing() is True
        assert b.create_bucket_if_missing() is False
        b.put("config", b"x")
        assert b.get("config") == b"x"
    finally:
        b.close()


# Only Ceph checks credentials (moto accepts any), so only Ceph can show the denial.
@pytest.mark.parametrize("backend_kind", [k for k in selected_backend_kinds() if k == "ceph"])
def test_bad_credentials_are_permission_denied(repo_location, monkeypatch):
    assert repo_location.server.checks_credentials
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + repo_location.server.secret_key)
    b = open_backend(repo_location.url)
    try:
        for call in (lambda: b.stat("config"), lambda: b.get("config"),
                     lambda: b.put("config", b"x"), lambda: list(b.list("keys"))):
            with pytest.raises(PermissionDenied) as err:
                call()
            assert "wrong-" not in str(err.value)  # the secret never shows
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "UNKNOWNKEY0000000000")
        b2 = open_backend(repo_location.url)
        with pytest.raises(PermissionDenied, match="AWS_ACCESS_KEY_ID"):
            b2.get("config")
        b2.close()
    finally:
        b.close()


@s3_only
def test_storage_class_applies_to_data_packs_only(repo_location, make_backend):
    b = make_backend(storage_class="standard_ia")
    client = repo_location.server.client()
    b.put("index/meta", b"metadata stays STANDARD")
    head = client.head_object(Bucket=repo_location.bucket, Key="repo/index/meta")
    assert head.get("StorageClass", "STANDARD") == "STANDARD"
    if repo_location.kind == "ceph":
        # RGW knows only the storage classes its placement targets define (here: STANDARD).
        with pytest.raises(BackendConfigError, match="storage class STANDARD_IA"):
            b.put("data/aa/" + "a" * 64, b"pack", bulk=True)
        return
    b.put("data/aa/" + "a" * 64, b"pack", bulk=True)
    head = client.head_object(Bucket=repo_location.bucket, Key="repo/data/aa/" + "a" * 64)
    assert head["StorageClass"] == "STANDARD_IA"


@s3_only
def test_conditional_put_is_enforced_by_the_server(repo_location, backend):
    assert backend.probe_conditional_put() is True
    assert names_in(backend, "locks") == {}


@s3_only
def test_head_before_put_when_server_lacks_conditional_put(repo_location, make_backend):
    def answer_501(request, **kwargs):
        # What a server without conditional writes says (AWS's reply for unknown features).
        if request.headers.get("If-None-Match"):
            return canned_reply(request, 501, "NotImplemented",
                                "A header you provided implies functionality that is not implemented")
        return None

    b = make_backend()
    b._client.meta.events.register_first("before-send.s3.PutObject", answer_501)
    b.put("keys/one", b"1")
    assert b.get("keys/one") == b"1"
    with pytest.raises(AlreadyExists):
        b.put("keys/one", b"2")
    assert b.get("keys/one") == b"1"
    counts = request_counts(b)
    # put #1: refused PUT (501, counted though answered locally), HEAD, PUT;
    # put #2: HEAD only (If-None-Match is not tried again)
    assert counts["PUT"] == 2 and counts["HEAD"] == 2

    forced = make_backend(conditional_put=False)
    with pytest.raises(AlreadyExists):
        forced.put("keys/one", b"3")
    forced.put("keys/two", b"2")
    assert forced.get("keys/two") == b"2"


@s3_only
def test_lifecycle_rule_keeps_other_rules(repo_location, backend):
    client = repo_location.server.client()
    other = {"ID": "someone-elses", "Status": "Enabled", "Filter": {"Prefix": "elsewhere/"},
             "Expiration": {"Days": 30}}
    client.put_bucket_lifecycle_configuration(Bucket=repo_location.bucket,
                                              LifecycleConfiguration={"Rules": [other]})
    backend.install_lifecycle_rule(days=3)
    backend.install_lifecycle_rule(days=2)  # replaces its own rule, does not add a second
    rules = client.get_bucket_lifecycle_configuration(Bucket=repo_location.bucket)["Rules"]
    assert "someone-elses" in [r["ID"] for r in rules]
    ours = [r for r in rules if r["ID"].startswith("snap-")]
    assert len(ours) == 1
    assert ours[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}


@s3_only
def test_endpoint_from_environment(repo_location, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", repo_location.server.endpoint)
    b = open_backend(f"s3:{repo_location.bucket}/via-env")
    try:
        assert b.location == f"s3:{repo_location.bucket}/via-env"
        b.put("config", b"c")
        head = repo_location.server.client().head_object(Bucket=repo_location.bucket,
                                                         Key="via-env/config")
        assert head["ContentLength"] == 1
    finally:
        b.close()


def test_unreachable_endpoint_is_transient():
    b = S3Backend.from_url("s3:http://127.0.0.1:9/bucket/p", connect_timeout=2)
    try:
        with pytest.raises(TransientError, match="cannot connect to http://127.0.0.1:9"):
            b.stat("config")
    finally:
        b.close()


@pytest.mark.parametrize("url, bucket, prefix, endpoint", [
    ("s3:bucket", "bucket", "", None),
    ("s3:my-bucket/some/prefix/", "my-bucket", "some/prefix", None),
    ("s3://my.bucket/p", "my.bucket", "p", None),
    ("s3:http://127.0.0.1:9000/b-1/repo", "b-1", "repo", "http://127.0.0.1:9000"),
    ("s3:https://s3.example.com/bkt", "bkt", "", "https://s3.example.com"),
    ("s3:http://[::1]:9000/bkt/x", "bkt", "x", "http://[::1]:9000"),
])
def test_s3_url_forms(url, bucket, prefix, endpoint):
    loc = parse_s3_url(url)
    assert (loc.bucket, loc.prefix, loc.endpoint) == (bucket, prefix, endpoint)


@pytest.mark.parametrize("url, message", [
    ("s3:", "no bucket"),
    ("s3:http://127.0.0.1:9000/", "no bucket"),
    ("s3:http:///bucket", "no host"),
    ("s3:http://host:notaport/bucket", "invalid port"),
    ("s3:Bad_Bucket!/x", "invalid bucket name"),
    ("s3:ab/x", "invalid bucket name"),
    ("s3:bucket/a//b", "invalid prefix"),
    ("s3:bucket/a/../b", "invalid prefix"),
    ("s3:s3.amazonaws.com/bucket/x", "names the host"),
    ("s3:http://host/bucket?x=1", "unexpected"),
])
def test_malformed_s3_urls(url, message):
    with pytest.raises(BackendConfigError, match=message):
        open_backend(url)


_bucket_names = st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True)
_prefix_parts = st.lists(st.from_regex(r"[A-Za-z0-9_.=-]{1,12}", fullmatch=True).filter(
    lambda p: p not in (".", "..")), max_size=4)


@given(bucket=_bucket_names, parts=_prefix_parts,
       endpoint=st.sampled_from([None, "http://127.0.0.1:9000", "https://s3.example.com",
                                 "http://[::1]:80"]))
def test_s3_url_round_trip(bucket, parts, endpoint):
    prefix = "/".join(parts)
    url = f"s3:{endpoint + '/' if endpoint else ''}{bucket}" + (f"/{prefix}" if prefix else "")
    loc = parse_s3_url(url)
    assert (loc.bucket, loc.prefix, loc.endpoint) == (bucket, prefix, endpoint)
    assert parse_s3_url(url + "/") == loc


def test_credentials_in_url_are_refused_without_echo():
    with pytest.raises(BackendConfigError) as err:
        open_backend("s3:http://AKIDEXAMPLE:TopSecret123@127.0.0.1:9000/bucket")
    assert "TopSecret123" not in str(err.value) and "AWS_ACCESS_KEY_ID" in str(err.value)


@pytest.mark.parametrize("cls", ["GLACIER", "deep_archive"])
def test_archive_storage_classes_are_refused(cls):
    with pytest.raises(BackendConfigError, match="GLACIER_IR"):
        open_backend("s3:http://127.0.0.1:9/bucket", storage_class=cls)


def test_unknown_storage_class_is_refused():
    with pytest.raises(BackendConfigError, match="unknown S3 storage class"):
        open_backend("s3:bucket", storage_class="CHEAP")


# ------------------------------------------------------------------------------ request counts


def test_request_counts(repo_location, backend):
    wrapped = wrap_backend(backend)
    wrapped.put("keys/k", b"key")
    wrapped.get("keys/k")
    wrapped.get("keys/k", 1, 1)
    wrapped.stat("keys/k")
    assert [o.name for o in wrapped.list("keys")] == ["keys/k"]
    wrapped.delete("keys/k")
    counts = request_counts(wrapped)
    if repo_location.is_s3:  # real HTTP requests: delete is HEAD + DELETE
        assert counts == {"PUT": 1, "GET": 2, "HEAD": 2, "LIST": 1, "DELETE": 1, "other": 0}
    else:  # protocol calls
        assert counts == {"PUT": 1, "GET": 2, "HEAD": 1, "LIST": 1, "DELETE": 1, "other": 0}


def test_streams_through_the_wrappers(backend):
    """Each wrapper streams (counts a GET, retries the opening, breaks midway on a fault):
    none falls back to a buffered get that would hold the whole range."""
    data = os.urandom(64 * 1024)
    backend.put("index/s", data)
    counting = CountingBackend(backend)
    flaky = Scripted(counting, get_stream=["before", "before"])
    r, sleeps = retrying(flaky)
    stream = r.get_stream("index/s", 0, len(data))
    assert type(stream).__name__ in ("_FileRange", "_BodyRange")  # not a buffered fallback
    assert stream.read(len(data)) == data
    stream.close()
    assert flaky.calls["get_stream"] == 3 and len(sleeps) == 2
    assert request_counts(r)["GET"] == 1  # the two failures never reached the counter
    faulty = FaultInjectingBackend(backend, error_rate=1.0, seed=0, ops=["get"])
    outcomes = []
    for _ in range(20):
        try:
            stream = faulty.get_stream("index/s", 0, len(data))
        except TransientError:
            outcomes.append("before")
            continue
        try:
            assert stream.read(len(data) // 2) == data[:len(data) // 2]
            with pytest.raises(TransientError):
                stream.read(1)
            outcomes.append("midway")
        finally:
            stream.close()
    assert set(outcomes) == {"before", "midway"}
    assert faulty.injected["get:midway"] == outcomes.count("midway")


def test_request_counts_of_bare_backends(tmp_path):
    assert request_counts(LocalBackend(str(tmp_path))) == dict.fromkeys(
        ("PUT", "GET", "HEAD", "LIST", "DELETE", "other"), 0)
    counting = CountingBackend(LocalBackend(str(tmp_path)))
    counting.put("keys/x", b"x")
    assert request_counts(RetryBackend(counting))["PUT"] == 1


# ------------------------------------------------------------------------------ wrappers


class Scripted:
    """Test helper: fails chosen calls of the real backend under it, in a fixed order.

    ``plan`` maps an operation to a list of outcomes for its successive calls: "ok", "before"
    (TransientError, nothing done) or "after" (done, then TransientError, as a lost reply).
    """

    def __init__(self, inner: Any, **plan: list[str]) -> None:
        self.inner = inner
        self.location = inner.location
        self.plan = {op: list(outcomes) for op, outcomes in plan.items()}
        self.calls: dict[str, int] = {}

    def _run(self, op: str, fn):
        self.calls[op] = self.calls.get(op, 0) + 1
        outcome = self.plan.get(op, []).pop(0) if self.plan.get(op) else "ok"
        if outcome == "before":
            raise TransientError(f"scripted {op} failure", None)
        result = fn()
        if outcome == "after":
            raise TransientError(f"scripted {op} failure after success", None)
        return result

    def put(self, name, data, bulk=False):
        return self._run("put", lambda: self.inner.put(name, data, bulk))

    def get(self, name, offset=0, length=None):
        return self._run("get", lambda: self.inner.get(name, offset, length))

    def get_stream(self, name, offset, length):
        return self._run("get_stream", lambda: self.inner.get_stream(name, offset, length))

    def stat(self, name):
        return self._run("stat", lambda: self.inner.stat(name))

    def list(self, namespace):
        return self._run("list", lambda: self.inner.list(namespace))

    def delete(self, name):
        return self._run("delete", lambda: self.inner.delete(name))

    def close(self):
        self.inner.close()


def retrying(inner: Any, attempts: int = 4) -> tuple[RetryBackend, list[float]]:
    sleeps: list[float] = []
    return RetryBackend(inner, attempts=attempts, base_delay=0.5, max_delay=1.5,
                        sleep=sleeps.append, seed=3), sleeps


def test_retry_recovers_from_transient_errors_with_bounded_jittered_backoff(backend):
    backend.put("keys/k", b"value")
    flaky = Scripted(backend, get=["before", "before", "before"])
    r, sleeps = retrying(flaky)
    assert r.get("keys/k") == b"value"
    assert flaky.calls["get"] == 4
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps):  # full jitter within the exponential cap
        assert 0.0 <= delay <= min(1.5, 0.5 * 2 ** attempt)


def test_retry_gives_up_after_its_attempts(backend):
    backend.put("keys/k", b"value")
    flaky = Scripted(backend, stat=["before"] * 10)
    r, sleeps = retrying(flaky, attempts=3)
    with pytest.raises(TransientError):
        r.stat("keys/k")
    assert flaky.calls["stat"] == 3 and len(sleeps) == 2


def test_retry_passes_permanent_errors_at_once(backend):
    counting = CountingBackend(backend)
    r, sleeps = retrying(counting)
    with pytest.raises(NotFound):
        r.get("keys/missing")
    r.put("keys/k", b"v")
    with pytest.raises(AlreadyExists):  # no transient failure before: a real conflict
        r.put("keys/k", b"v")
    assert sleeps == []
    assert counting.counts()["GET"] == 1 and counting.counts()["PUT"] == 2


def test_retry_of_put_stored_before_its_reply_was_lost_succeeds(backend):
    r, _ = retrying(Scripted(backend, put=["after"]))
    r.put("data/ab/" + "ab" * 32, b"pack bytes", bulk=True)
    assert backend.get("data/ab/" + "ab" * 32) == b"pack bytes"


def test_retry_of_put_meeting_a_different_object_fails(backend):
    backend.put("snapshots/s", b"someone else's, longer")
    r, _ = retrying(Scripted(backend, put=["before"]))
    with pytest.raises(AlreadyExists):
        r.put("snapshots/s", b"mine")
    assert backend.get("snapshots/s") == b"someone else's, longer"


def test_retry_of_delete_done_before_its_reply_was_lost_succeeds(backend):
    backend.put("locks/l", b"lock")
    r, _ = retrying(Scripted(backend, delete=["after"]))
    r.delete("locks/l")
    with pytest.raises(NotFound):
        backend.stat("locks/l")
    with pytest.raises(NotFound):  # without an earlier failure, NotFound is real
        r.delete("locks/l")


def test_retry_of_list_broken_midway_yields_each_name_once(backend):
    for i in range(12):
        backend.put(f"index/{i:02d}", b"i")
    r, sleeps = retrying(_ListsBreakMidway(backend, after=[5, 0, 9]), attempts=5)
    listed = [o.name for o in r.list("index")]
    assert sorted(listed) == [f"index/{i:02d}" for i in range(12)]  # each once
    assert len(sleeps) == 3


class _ListsBreakMidway:
    """The first listings break off after handing out ``after[i]`` entries."""

    def __init__(self, inner: Any, after: list[int]) -> None:
        self.inner, self.after = inner, list(after)
        self.location = inner.location

    def list(self, namespace):
        if not self.after:
            yield from self.inner.list(namespace)
            return
        limit = self.after.pop(0)
        for i, info in enumerate(self.inner.list(namespace)):
            if i == limit:
                break
            yield info
        raise TransientError("listing broke off", namespace)


def test_fault_injection_with_retries_completes_every_operation(repo_location, backend):
    faulty = FaultInjectingBackend(backend, error_rate=0.05, seed=42)
    r = RetryBackend(faulty, attempts=8, base_delay=0.001, max_delay=0.01, seed=1)
    rng = random.Random(7)
    objects = {pack_name(hexid(rng)): os.urandom(rng.randrange(0, 3000)) for _ in range(150)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: r.put(item[0], item[1], bulk=True), objects.items()))
        got = dict(pool.map(lambda n: (n, r.get(n)), objects))
        parts = dict(pool.map(lambda n: (n, r.get(n, 1, 10)), objects))
    assert got == objects
    assert parts == {n: d[1:11] for n, d in objects.items()}
    assert names_in(r, "data") == {n: len(d) for n, d in objects.items()}
    for name in list(objects)[:50]:
        r.delete(name)
    assert len(names_in(backend, "data")) == 100
    assert sum(faulty.injected.values()) > 0
    assert faulty.injected["put:after"] > 0  # the case that needs the AlreadyExists logic
    assert r.retries >= sum(faulty.injected.values())


def test_fault_injector_rejects_bad_settings(backend):
    with pytest.raises(ValueError):
        FaultInjectingBackend(backend, error_rate=1.5)
    with pytest.raises(ValueError):
        FaultInjectingBackend(backend, ops=["put", "frobnicate"])


def test_wrappers_pass_backend_extras_through(repo_location, backend):
    wrapped = wrap_backend(backend, fault_rate=0.01, fault_seed=1)
    assert wrapped.location == backend.location
    if repo_location.is_s3:
        assert wrapped.create_bucket_if_missing() is False  # reached through three wrappers
    else:
        with pytest.raises(AttributeError):
            wrapped.create_bucket_if_missing()


def test_fault_rate_from_environment(backend, monkeypatch):
    backend.put("config", b"c")
    monkeypatch.setenv("SNAP_FAULT_RATE", "1")
    monkeypatch.setenv("SNAP_FAULT_SEED", "9")
    wrapped = wrap_backend(backend, retry_attempts=2, retry_base_delay=0.0)
    with pytest.raises(TransientError, match="injected fault"):
        wrapped.stat("config")
    monkeypatch.setenv("SNAP_FAULT_RATE", "lots")
    with pytest.raises(BackendConfigError, match="SNAP_FAULT_RATE"):
        wrap_backend(backend)
    monkeypatch.delenv("SNAP_FAULT_RATE")
    assert wrap_backend(backend).stat("config").size == 1


@s3_only
def test_cli_missing_bucket_is_no_repository(repo_location):
    """A bucket that does not exist holds no repository: exit 10 and one line, like restic."""
    import subprocess
    import sys

    server = repo_location.server
    env = dict(os.environ, **server.env(), SNAP_PASSWORD="pw")
    url = f"s3:{server.endpoint}/snap-no-such-bucket-{os.getpid()}/x"
    proc = subprocess.run([sys.executable, "-m", "cli", "-r", url, "snapshots"], env=env,
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 10, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "does not exist" in proc.stderr


def test_a_large_body_that_ends_early_is_an_error_not_zeros():
    """A large GET body is read into a buffer of the announced size; if the connection ends
    early, botocore's length check must fire instead of the zero-filled rest coming back."""
    import io

    from botocore.exceptions import IncompleteReadError
    from botocore.response import StreamingBody

    from dedupe.backends import s3

    whole = os.urandom(3 * s3._PIECE + 11)
    assert s3._read_body(StreamingBody(io.BytesIO(whole), len(whole)), len(whole)) == whole
    short = StreamingBody(io.BytesIO(whole[:-5]), len(whole))
    with pytest.raises(IncompleteReadError):
        s3._read_body(short, len(whole))

    class Quiet:  # a body that just stops, without botocore's check
        def __init__(self) -> None:
            self.raw = io.BytesIO(whole[:-5])

        def readinto(self, b) -> int:
            return self.raw.readinto(b)

    with pytest.raises(IncompleteReadError):
        s3._read_body(Quiet(), len(whole))


def test_is_local_sees_through_wrappers(tmp_path):
    from dedupe.backends import is_local
    from dedupe.backends.base import BackendWrapper

    class Remote:
        location = "s3:bucket/prefix"

    local = LocalBackend(str(tmp_path))
    assert is_local(local) and is_local(wrap_backend(local, fault_rate=0.0))
    assert not is_local(Remote()) and not is_local(BackendWrapper(Remote()))


# ------------------------------------------------------------------- local: past the page cache


def _o_direct_works(directory) -> bool:
    try:
        os.close(os.open(os.path.join(directory, "probe"), os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        return False
    return True


def _record_writes(monkeypatch) -> list[tuple[int, bool]]:
    """(length, written with O_DIRECT) of every os.write from now on."""
    import fcntl

    writes = []
    real_write = os.write

    def write(fd, data):
        n = real_write(fd, data)
        writes.append((n, bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        return n

    monkeypatch.setattr(os, "write", write)
    return writes


def test_local_put_writes_large_aligned_buffers_past_the_page_cache(tmp_path, monkeypatch):
    """A pack (a page-aligned buffer, 1 MiB or more) goes out with O_DIRECT but for its
    unaligned tail; unaligned or small objects go through the page cache. Every object reads
    back byte for byte."""
    import mmap

    from dedupe.backends.local import DIRECT_MIN

    backend = LocalBackend(str(tmp_path / "repo"))
    direct = _o_direct_works(tmp_path)
    rng = random.Random(7)
    buf = mmap.mmap(-1, 4 * MiB)
    pack = rng.randbytes(3 * MiB + 123)
    buf[:len(pack)] = pack
    writes = _record_writes(monkeypatch)
    backend.put("data/ab/" + "ab" + "0" * 62,
                memoryview(buf)[:len(pack)], bulk=True)
    if direct:
        assert sum(n for n, d in writes if d) == 3 * MiB and writes[-1] == (123, False)
    else:
        assert writes and not any(d for _, d in writes)
    unaligned = rng.randbytes(DIRECT_MIN + 5000)  # a bytes object: never page-aligned
    small = memoryview(buf)[:DIRECT_MIN - 4096]
    writes.clear()
    backend.put("index/" + "cd" * 32, unaligned)
    backend.put("index/" + "ef" * 32, small)
    assert writes and not any(d for _, d in writes)
    assert backend.get("data/ab/" + "ab" + "0" * 62) == pack
    assert backend.get("index/" + "cd" * 32) == unaligned
    assert backend.get("index/" + "ef" * 32) == bytes(small)
    assert backend._direct == direct  # an unaligned buffer does not turn O_DIRECT off


def test_local_put_on_a_file_system_without_o_direct(tmp_path, monkeypatch):
    """A file system that refuses O_DIRECT (EINVAL from fcntl) gets every byte through the
    page cache, and is not asked again."""
    import errno
    import fcntl
    import mmap

    from dedupe.backends import local as local_mod

    asked = []
    real_fcntl = fcntl.fcntl

    def refusing(fd, cmd, arg=0):
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            asked.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(local_mod.fcntl, "fcntl", refusing)
    backend = LocalBackend(str(tmp_path / "repo"))
    buf = mmap.mmap(-1, 2 * MiB)
    data = random.Random(8).randbytes(2 * MiB)
    buf[:] = data
    writes = _record_writes(monkeypatch)
    for name in ("data/00/" + "0" * 64, "data/11/" + "1" * 64):
        backend.put(name, memoryview(buf), bulk=True)
        assert backend.get(name) == data
    assert len(asked) == 1 and not backend._direct
    assert writes and not any(d for _, d in writes)
