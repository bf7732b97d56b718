"""Fixtures shared by every test module: where the real test rasters live and a real HTTP S3 server."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_TESTDATA = REPO_ROOT.parent / "shared" / "testdata"
SCHEMA_DIR = REPO_ROOT.parent / "shared" / "pegasus-schema"


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    """The real rasters in ../shared/testdata; tests using them skip on a clone without that folder."""
    if not SHARED_TESTDATA.is_dir():
        pytest.skip("../shared/testdata is not present beside this checkout")
    return SHARED_TESTDATA


@pytest.fixture(scope="session")
def pegasus_schema_dir() -> Path:
    if not SCHEMA_DIR.is_dir():
        pytest.skip("../shared/pegasus-schema is not present beside this checkout")
    return SCHEMA_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's threaded server: a real S3 HTTP endpoint on 127.0.0.1, shared by the session.

    Yields the endpoint URL. Tests create uniquely named buckets so they never see each other's objects.
    """
    from moto.server import ThreadedMotoServer

    # boto3 must never find real credentials or talk to AWS from a test.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-access-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


_bucket_counter = iter(range(1, 1_000_000))


@pytest.fixture()
def bucket_name() -> str:
    """A bucket name no other test uses (S3 bucket names: lowercase, digits, hyphens)."""
    return f"test-bucket-{os.getpid()}-{next(_bucket_counter)}"
