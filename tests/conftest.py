"""Fixtures shared by every test module: where the real test rasters live and a real HTTP S3 server."""

from __future__ import annotations

import os
import shutil
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



@pytest.fixture()
def samples(shared_testdata: Path, tmp_path: Path) -> Path:
    """A private copy of the real Pegasus submit directories: nothing may write into the shared samples."""
    source = shared_testdata / "pegasus-submit-samples"
    if not source.is_dir():
        pytest.skip("../shared/testdata/pegasus-submit-samples is not present")
    target = tmp_path / "samples"
    shutil.copytree(source, target)
    return target

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
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise

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


class Buckets:
    """An input and an output bucket on one backend, plus the StoreConfig that reaches them."""

    def __init__(self, kind: str, config, input_bucket: str, output_bucket: str) -> None:
        from cog_pipeline.storage.store import RequestCounter, open_store

        self.kind = kind
        self.config = config
        self.input_bucket = input_bucket
        self.output_bucket = output_bucket
        self.counter = RequestCounter()
        self.input = open_store(input_bucket, config)
        self.output = open_store(output_bucket, config, self.counter)

    def put_file(self, key: str, path: Path) -> None:
        self.input.upload(Path(path), key)

    def put_text(self, key: str, text: str) -> None:
        self.input.put_bytes(key, text.encode("utf-8"))

    def input_keys(self) -> list[str]:
        return [o.key for o in self.input.list("")]

    def output_keys(self) -> list[str]:
        return [o.key for o in self.output.list("")]


@pytest.fixture(params=["folder", "s3"])
def buckets(request, tmp_path: Path) -> Buckets:
    """The same test against a local-folder bucket and a real HTTP S3 server (moto)."""
    from cog_pipeline.storage.store import StoreConfig

    if request.param == "folder":
        root = tmp_path / "buckets"
        (root / "in").mkdir(parents=True)
        (root / "out").mkdir(parents=True)
        return Buckets("folder", StoreConfig(local_root=root), "in", "out")
    endpoint = request.getfixturevalue("s3_server")
    name = request.getfixturevalue("bucket_name")
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=f"{name}-in")
    client.create_bucket(Bucket=f"{name}-out")
    return Buckets("s3", StoreConfig(endpoint=endpoint), f"{name}-in", f"{name}-out")


def config_with(**values):
    """The configuration with some settings given by their short name (`workers=1`: local.workers), as flags
    would give them: the declared table (cog_pipeline.config) decides what each name means."""
    from cog_pipeline.config import SETTINGS, load_config

    dotted = {}
    for name, value in values.items():
        (item,) = [s for s in SETTINGS.values() if s.name == name]
        dotted[item.dotted] = value
    return load_config(None, dotted)
