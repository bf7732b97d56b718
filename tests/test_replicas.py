"""replicas/: replica URLs for awkward keys, replica documents vs Pegasus.api, credentials.conf hygiene."""

from __future__ import annotations

import configparser
import logging
import os
import stat
from pathlib import Path

import pytest
import yaml

from tests.oracles import build_replica_catalog
from cog_pipeline.replicas.catalog import (
    file_url,
    job_lfns,
    location_url,
    object_of_pfn,
    replica_entries,
    s3_url,
    write_replica_catalog,
    yaml_json,
)
from cog_pipeline.replicas.credentials import render_credentials, write_credentials
from tests.urls import parse_location
from cog_pipeline.storage.store import LocalStore

AWKWARD_KEYS = [
    "Counties/WI/Wood/1band.tif",
    "with space/and  two spaces.tif",
    "quotes/it's \"quoted\".tif",
    "unicode/Städte/Łódź 東京 🚀.tif",
    "reserved/100% #1 ?q=a&b=c +plus;semi,comma=eq@at.tif",
    "tilde~/brackets[1]{2}(3).tif",
    "encoded-looking/%2F%20already.tif",
]


def schema_validator(schema_dir: Path, name: str):
    """A jsonschema validator for one Pegasus schema file, resolving `common.yml#/...` refs from the folder."""
    from jsonschema import Draft7Validator
    from referencing import Registry, Resource

    resources = []
    for path in schema_dir.glob("*.yml"):
        resources.append((path.as_uri(), Resource.from_contents(yaml.safe_load(path.read_text(encoding="utf-8")))))
    registry = Registry().with_resources(resources)
    return Draft7Validator({"$ref": (schema_dir / name).as_uri()}, registry=registry)


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_s3_url_round_trips_through_parse_location(key):
    url = s3_url("input-bucket", key, identity="cog", site="storage")
    assert url.startswith("s3://cog@storage/input-bucket/")
    # Raw: pegasus-s3 hands the URL path to boto3 as the key without decoding (tests/test_pegasus_transfer.py).
    assert url == "s3://cog@storage/input-bucket/" + key
    assert parse_location(url) == ("s3", "input-bucket", key)


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_file_url_round_trips_and_names_the_local_store_file(tmp_path, key):
    root = tmp_path / "buckets with space"
    url = file_url(root, "in", key)
    scheme, bucket, path = parse_location(url)
    assert (scheme, bucket) == ("file", "")
    # The path parse_location returns is exactly the file LocalStore keeps the object in.
    store = LocalStore(root, "in")
    (root / "in").mkdir(parents=True)
    store.put_bytes(key, b"data")
    assert Path(path) == store.base / key
    assert Path(path).read_bytes() == b"data"


def test_location_url_dispatches_on_local_root(tmp_path):
    assert location_url("b", "k.tif").startswith("s3://cog@storage/b/")
    assert location_url("b", "k.tif", identity="ops", site="s3site") == "s3://ops@s3site/b/k.tif"
    assert location_url("b", "k.tif", local_root=tmp_path) == (tmp_path.resolve() / "b" / "k.tif").as_uri()
    assert s3_url("out", identity="cog", site="storage") == "s3://cog@storage/out"


@pytest.mark.parametrize("bad", ["", "a/b"])
def test_bucket_names_with_slash_or_empty_are_refused(bad):
    with pytest.raises(ValueError):
        s3_url(bad, "k.tif")


@pytest.mark.parametrize("bad", ["co g", "a@b", "x/y", ""])
def test_identity_and_site_must_be_plain(bad):
    with pytest.raises(ValueError):
        s3_url("b", "k.tif", identity=bad)
    with pytest.raises(ValueError):
        s3_url("b", "k.tif", site=bad)


def test_job_lfns_are_job_local_and_plain():
    assert job_lfns("ID0000042") == ("ID0000042.in.tif", "ID0000042.tif", "ID0000042.jpg")


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_object_of_pfn_inverts_both_url_builders(tmp_path, key):
    assert object_of_pfn(s3_url("bkt", key, identity="ops", site="s3site")) == ("bkt", key)
    root = tmp_path / "buckets with space"
    assert object_of_pfn(file_url(root, "out", key), root) == ("out", key)


@pytest.mark.parametrize("pfn", ["http://host/b/k.tif", "s3://cog@storage/bucket-only", "file:///elsewhere/b/k.tif"])
def test_object_of_pfn_refuses_what_this_run_did_not_write(tmp_path, pfn):
    with pytest.raises(ValueError):
        object_of_pfn(pfn, tmp_path)


def _pairs(keys):
    return [(f"ID{i:07d}.in.tif", key) for i, key in enumerate(keys, 1)]


def test_replica_entries_keep_order_and_known_sha256_only(tmp_path):
    digest = "ab" * 32
    entries = replica_entries([("b.in.tif", "b.tif"), ("a.in.tif", "a.tif")], "in", sha256={"a.tif": digest})
    assert [e.lfn for e in entries] == ["b.in.tif", "a.in.tif"]
    assert [parse_location(e.pfn) for e in entries] == [("s3", "in", "b.tif"), ("s3", "in", "a.tif")]
    assert entries[0].sha256 is None and entries[1].sha256 == digest
    assert "checksum" not in entries[0].to_document()
    assert entries[1].to_document()["checksum"] == {"sha256": digest}
    assert all(e.site == "storage" for e in entries)
    with pytest.raises(ValueError):
        replica_entries([("a.in.tif", "a.tif")], "in", sha256={"a.tif": "not-a-digest"})
    local = replica_entries([("x.in.tif", "x y.tif")], "in", local_root=tmp_path)
    assert local[0].pfn == (tmp_path.resolve() / "in" / "x y.tif").as_uri()


def _strip_header(doc):
    doc.pop("x-pegasus", None)
    return doc


def test_fast_replica_writer_equals_pegasus_api_and_schema(tmp_path, pegasus_schema_dir):
    entries = replica_entries(_pairs(AWKWARD_KEYS), "in", sha256={AWKWARD_KEYS[0]: "0f" * 32})
    fast = tmp_path / "fast.yml"
    assert write_replica_catalog(fast, entries, header={"apiLang": "python"}) == len(AWKWARD_KEYS)
    api = tmp_path / "api.yml"
    build_replica_catalog(entries).write(str(api))
    fast_doc = yaml.safe_load(fast.read_text(encoding="utf-8"))
    api_doc = yaml.safe_load(api.read_text(encoding="utf-8"))
    assert _strip_header(fast_doc) == _strip_header(api_doc)
    errors = list(schema_validator(pegasus_schema_dir, "rc-5.0.yml").iter_errors(yaml.safe_load(fast.read_text(encoding="utf-8"))))
    assert not errors, errors[0].message
    # Every PFN written parses back to the input bucket and the row's key, in order.
    assert [parse_location(r["pfns"][0]["pfn"]) for r in fast_doc["replicas"]] == [("s3", "in", k) for k in AWKWARD_KEYS]


def test_empty_replica_catalog_is_valid(tmp_path, pegasus_schema_dir):
    path = tmp_path / "replicas.yml"
    write_replica_catalog(path, [])
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert doc["replicas"] == []
    assert not list(schema_validator(pegasus_schema_dir, "rc-5.0.yml").iter_errors(doc))


@pytest.mark.parametrize("text", ["a\u2028b", "nel\x85x", "del\x7fx", "bom\ufeffx", "nbsp\xa0x", "tab\tx", "emoji 🚀"])
def test_yaml_json_values_survive_yaml_loaders(text):
    from Pegasus import yaml as pegasus_yaml

    line = f"value: {yaml_json(text)}\n"
    assert yaml.safe_load(line)["value"] == text
    assert pegasus_yaml.loads(line)["value"] == text
    assert yaml.load(line, Loader=yaml.SafeLoader)["value"] == text  # the pure-Python loader too


# ----------------------------------------------------------------------------------------------------------------
# credentials.conf

ACCESS = "AKIATESTACCESSKEY123"
SECRET = "s3cr3t/Secret+Key=Value%with-bits"


@pytest.fixture()
def key_files(tmp_path):
    access = tmp_path / "keys" / "access"
    secret = tmp_path / "keys" / "secret"
    access.parent.mkdir()
    access.write_text(f"\n{ACCESS}\n")
    secret.write_text(f"{SECRET}\n")
    return access, secret


def test_credentials_written_with_mode_0600_and_sections(tmp_path, key_files, caplog):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "run" / "credentials.conf"
    write_credentials(path, "storage", "cog", "minio.example.org:9000", "us-west-2", *key_files)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ini = configparser.RawConfigParser()
    ini.read(path)
    assert ini["storage"]["endpoint"] == "https://minio.example.org:9000"
    assert ini["storage"]["region"] == "us-west-2"
    assert ini["cog@storage"]["access_key"] == ACCESS
    assert ini["cog@storage"]["secret_key"] == SECRET
    logged = caplog.text
    assert ACCESS not in logged and SECRET not in logged
    assert "credentials" in logged  # it does say what it wrote, just not the values
    assert [p.name for p in path.parent.iterdir()] == ["credentials.conf"]  # no temporary left behind


def test_credentials_mode_is_0600_even_with_permissive_umask_and_existing_file(tmp_path, key_files):
    path = tmp_path / "credentials.conf"
    path.write_text("old, world readable\n")
    os.chmod(path, 0o644)
    old = os.umask(0)
    try:
        write_credentials(path, "storage", "cog", None, None, *key_files)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "old" not in text
    assert "endpoint = https://s3.amazonaws.com" in text
    assert "region" not in text


def test_credentials_file_is_created_0600_not_chmodded(tmp_path, key_files, monkeypatch):
    """The file must never exist with wider permissions, even for an instant: no chmod may be needed."""
    calls = []
    monkeypatch.setattr(os, "chmod", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(os, "fchmod", lambda *a, **k: calls.append(a), raising=False)
    write_credentials(tmp_path / "c.conf", "storage", "cog", None, None, *key_files)
    assert calls == []
    assert stat.S_IMODE((tmp_path / "c.conf").stat().st_mode) == 0o600


def test_credentials_refuse_line_breaks_without_echoing_them(tmp_path):
    with pytest.raises(ValueError) as err:
        render_credentials("storage", "cog", None, None, ACCESS, "abc\n[evil]")
    assert "abc" not in str(err.value)


def test_missing_key_file_error_does_not_leak(tmp_path, key_files):
    from cog_pipeline.storage.store import StoreError

    with pytest.raises(StoreError) as err:
        write_credentials(tmp_path / "c.conf", "storage", "cog", None, None, key_files[0], tmp_path / "nope")
    assert ACCESS not in str(err.value)
    assert not (tmp_path / "c.conf").exists()
