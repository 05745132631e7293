"""Shared fixtures: real storage for tests (local directories, moto's S3 server, Ceph RGW).

For a test that should run on every backend, ask for ``repo_location`` (or ``backend``)::

    def test_something(repo_location, backend):
        url, env = repo_location          # also: repo_location.kind / .bucket / .server
        ...                               # env is already applied to os.environ; pass it to
                                          # subprocesses: subprocess.run(..., env=os.environ)

Each test gets a fresh, empty location: a temporary directory, or a new bucket (with the
repository under the prefix ``repo``) on a session-wide S3 server. The S3 servers listen on
127.0.0.1 and speak real HTTP; nothing is mocked.

Which backends run: all of ``local,moto,ceph`` unless ``SNAP_TEST_BACKENDS`` names fewer (for
example ``SNAP_TEST_BACKENDS=local,moto`` for a quick run). Ceph RGW needs Debian's
``ceph-mon ceph-osd radosgw ceph-common``; without them its tests are skipped, except under
``CI=true``, where a missing Ceph is an error (CI must really test against it).

The whole session runs with fake AWS credentials and no AWS config files, so no test can reach
a real AWS account by accident.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ALL_BACKEND_KINDS = ("local", "moto", "ceph")
CEPH_SCRIPT = Path(__file__).parent / "servers" / "ceph_rgw.sh"
CEPH_PACKAGES = "ceph-mon ceph-osd radosgw ceph-common"


def selected_backend_kinds() -> list[str]:
    wanted = os.environ.get("SNAP_TEST_BACKENDS", "")
    if not wanted.strip():
        return list(ALL_BACKEND_KINDS)
    kinds = [k.strip() for k in wanted.split(",") if k.strip()]
    unknown = set(kinds) - set(ALL_BACKEND_KINDS)
    if unknown:
        raise pytest.UsageError(f"SNAP_TEST_BACKENDS: unknown {sorted(unknown)}; "
                                f"known: {', '.join(ALL_BACKEND_KINDS)}")
    return kinds


# ------------------------------------------------------------------------------ environment


@pytest.fixture(scope="session", autouse=True)
def _isolated_aws_environment() -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    for var in list(os.environ):
        if var.startswith("AWS_"):
            mp.delenv(var)
    mp.setenv("AWS_ACCESS_KEY_ID", "snap-test-not-a-real-key")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "snap-test-not-a-real-secret")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_CONFIG_FILE", os.devnull)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
    mp.undo()


# ------------------------------------------------------------------------------ S3 servers


@dataclass(frozen=True)
class S3Server:
    """A running S3 server and an account on it."""

    kind: str  # "moto" or "ceph"
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    checks_credentials: bool

    def env(self) -> dict[str, str]:
        """Environment that makes boto3 use this server's account."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self) -> Any:
        """A plain boto3 client for setting up and inspecting (not the code under test)."""
        return _admin_client(self.endpoint, self.access_key, self.secret_key)

    def new_bucket(self, create: bool = True) -> str:
        name = f"snap-test-{uuid.uuid4().hex[:16]}"
        if create:
            self.client().create_bucket(Bucket=name)
        return name

    def url(self, bucket: str, prefix: str = "repo") -> str:
        return f"s3:{self.endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")


@functools.lru_cache(maxsize=None)
def _admin_client(endpoint: str, access_key: str, secret_key: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """moto's S3 server in a thread of this process, real HTTP on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        # moto accepts any credentials.
        yield S3Server("moto", f"http://{host}:{port}", "testing", "testing",
                       checks_credentials=False)
    finally:
        server.stop()


def _ceph_missing() -> str | None:
    for tool in ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph"):
        if shutil.which(tool) is None:
            return f"Ceph RGW is not installed ({tool} not found; apt-get install -y {CEPH_PACKAGES})"
    return None


@pytest.fixture(scope="session")
def ceph_rgw() -> Iterator[S3Server]:
    """A throw-away Ceph RGW (tests/servers/ceph_rgw.sh) on 127.0.0.1 for the session."""
    missing = _ceph_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI must run the Ceph tests")
        pytest.skip(missing)
    # Short path: the daemons' unix sockets live under it (limit ~107 bytes).
    directory = tempfile.mkdtemp(prefix="snap-ceph-")
    env = dict(os.environ, CEPH_RGW_WATCH_PID=str(os.getpid()))
    try:
        started = subprocess.run(["bash", str(CEPH_SCRIPT), "start", directory], env=env,
                                 capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        subprocess.run(["bash", str(CEPH_SCRIPT), "stop", directory], timeout=60)
        pytest.fail("Ceph RGW did not start within 180 s")
    if started.returncode != 0:
        subprocess.run(["bash", str(CEPH_SCRIPT), "stop", directory], timeout=60)
        pytest.fail(f"Ceph RGW did not start:\n{started.stderr[-3000:]}")
    values = dict(line.split("=", 1) for line in started.stdout.split() if "=" in line)
    try:
        yield S3Server("ceph", values["CEPH_RGW_ENDPOINT"], values["CEPH_RGW_ACCESS_KEY"],
                       values["CEPH_RGW_SECRET_KEY"], checks_credentials=True)
    finally:
        subprocess.run(["bash", str(CEPH_SCRIPT), "stop", directory], timeout=60)


# ------------------------------------------------------------------------------ locations


@dataclass(frozen=True)
class RepoLocation:
    """A fresh, empty repository location. Unpacks as ``url, env = location``."""

    kind: str  # "local", "moto" or "ceph"
    url: str
    env: dict[str, str] = field(default_factory=dict)
    server: S3Server | None = None
    bucket: str | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.url, self.env))

    @property
    def is_s3(self) -> bool:
        return self.server is not None


@pytest.fixture(params=selected_backend_kinds())
def backend_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def s3_server(backend_kind: str, request: pytest.FixtureRequest) -> S3Server | None:
    """The S3 server behind this test's backend kind (None for local); started on first use."""
    if backend_kind == "moto":
        return request.getfixturevalue("moto_server")
    if backend_kind == "ceph":
        return request.getfixturevalue("ceph_rgw")
    return None


@pytest.fixture
def repo_location(backend_kind: str, s3_server: S3Server | None, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> RepoLocation:
    """A fresh empty location on this test's backend; its env is applied to os.environ."""
    if s3_server is None:
        return RepoLocation("local", str(tmp_path / "repo"))
    bucket = s3_server.new_bucket()
    location = RepoLocation(backend_kind, s3_server.url(bucket), s3_server.env(), s3_server,
                            bucket)
    for key, value in location.env.items():
        monkeypatch.setenv(key, value)
    return location


@pytest.fixture
def make_backend(repo_location: RepoLocation) -> Iterator[Callable[..., Any]]:
    """Factory: ``make_backend(**options)`` opens the test's location (options go to S3)."""
    from dedupe.backends import open_backend

    opened: list[Any] = []

    def make(url: str | None = None, **options: Any) -> Any:
        backend = open_backend(url or repo_location.url, **options)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


@pytest.fixture
def backend(make_backend: Callable[..., Any]) -> Any:
    """The raw backend (no wrappers) at this test's fresh location."""
    return make_backend()
