"""An in-process moto S3 server that counts requests and bytes per bucket.

Counting on the server side measures every tool the same way (restic reports no request
counts), so the S3 table can compare requests per phase. Each tool gets its own bucket, which
keeps the counts apart even though one server serves both.

Caveat, stated in the results: moto keeps objects in memory and handles requests in Python, in
the runner's process, on the same two cores as the tool being measured. S3 timings therefore
include moto's cost; request counts and bytes are exact.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

ACCESS_KEY = "bench-access-key"
SECRET_KEY = "bench-secret-key"
REGION = "us-east-1"


class _CountingApp:
    """WSGI middleware: ``counts[bucket]`` is a Counter of operations and bytes."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: dict[str, Counter] = {}

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "/").lstrip("/")
        bucket, _, key = path.partition("/")
        method = environ.get("REQUEST_METHOD", "?")
        query = environ.get("QUERY_STRING", "")
        if method == "GET" and not key:
            listing = "list-type" in query or "prefix" in query or not query
            op = "LIST" if listing else "GET-bucket"
        elif method == "POST" and "delete" in query:
            op = "DELETE-multi"
        else:
            op = method
        sent_in = int(environ.get("CONTENT_LENGTH") or 0)
        with self.lock:
            c = self.counts.setdefault(bucket, Counter())
            c[op] += 1
            c["requests"] += 1
            c["bytes_in"] += sent_in
        body = self.app(environ, start_response)
        return self._count_out(body, bucket)

    def _count_out(self, body, bucket):
        total = 0
        try:
            for chunk in body:
                total += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()
            with self.lock:
                self.counts[bucket]["bytes_out"] += total

    def snapshot(self, bucket: str) -> Counter:
        with self.lock:
            return Counter(self.counts.get(bucket, Counter()))


class S3Server:
    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.app = _CountingApp(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._client = None

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}

    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                                        aws_access_key_id=ACCESS_KEY,
                                        aws_secret_access_key=SECRET_KEY)
        return self._client

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def bucket_usage(self, bucket: str) -> tuple[int, int]:
        """(bytes, objects) stored in ``bucket``; these listing requests are not counted
        against any tool because they arrive before/after the tool's own counts are taken."""
        size = count = 0
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                size += obj["Size"]
                count += 1
        return size, count

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
