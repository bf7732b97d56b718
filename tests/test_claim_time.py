"""Issue 22.8: the claim time when an S3 endpoint's answers carry no `Date` header.

Reconcile compares outputs' LastModified with the claim time, which the processing file's PUT answer dates
(the store's clock). An endpoint (or a proxy in front of it) that sends no `Date` falls back to this machine's
clock. A small HTTP proxy on loopback in front of moto strips the header from every answer.
"""

from __future__ import annotations

import http.client
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from cog_pipeline.claim import claim_one
from cog_pipeline.store import StoreConfig, open_store


class _NoDate(BaseHTTPRequestHandler):
    upstream = ("127.0.0.1", 0)
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        conn.request(self.command, self.path, body=body, headers=dict(self.headers))
        resp = conn.getresponse()
        data = resp.read()
        self.send_response_only(resp.status, resp.reason)  # no Date and no Server header of our own
        for name, value in resp.getheaders():
            if name.lower() not in ("date", "transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def no_date_endpoint(s3_server):
    parts = urlsplit(s3_server)
    handler = type("Handler", (_NoDate,), {"upstream": (parts.hostname, parts.port)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_without_a_date_header_the_claim_time_is_this_machines_clock(no_date_endpoint, bucket_name, tmp_path):
    import boto3

    boto3.client("s3", endpoint_url=no_date_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket_name)
    config = StoreConfig(endpoint=no_date_endpoint)
    store = open_store(bucket_name, config)
    store.put_bytes("x_raw.csv", b"a.tif,1\n")
    before = datetime.now(timezone.utc)
    claim = claim_one(store, store.head("x_raw.csv"), work_dir=tmp_path / "w", output_bucket=bucket_name, store_config=config)
    after = datetime.now(timezone.utc)
    claimed_at = datetime.fromisoformat(claim.run_dir.load().claimed_at)
    assert before - timedelta(seconds=1) <= claimed_at <= after + timedelta(seconds=1)
    assert claim.names.processing_key in [o.key for o in store.list("")]
