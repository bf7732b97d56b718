"""Object stores: one contract for a local folder and for S3 (a real moto HTTP server through boto3)."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from tests.urls import parse_location
from cog_pipeline.storage.store import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    RequestCounter,
    S3Store,
    StoreConfig,
    StoreError,
    normalise_endpoint,
    open_store,
    read_key_file,
)

ACCESS = "AKIAFILEKEY0000000001"
SECRET = "file-secret-s3cr3t-do-not-print"
ODD_KEYS = [
    "Counties/Eau Claire/x y.tif",
    "Counties/WI/O'Brien \"north\".tif",
    "Counties/a,b,c.tif",
    "Counties/Zürich/北京.tif",
    "Counties/%41 100%.tif",
    "Counties/q?x#y&z=1.tif",
]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def s3_config(endpoint: str, **kw: object) -> StoreConfig:
    return StoreConfig(endpoint=endpoint, **kw)  # type: ignore[arg-type]


_admin_clients: dict[str, object] = {}


def make_s3_bucket(endpoint: str, bucket: str) -> None:
    """Create a bucket with one client per endpoint, kept for the session (making clients is not free)."""
    if endpoint not in _admin_clients:
        _admin_clients[endpoint] = s3_config(endpoint).s3_client()
    _admin_clients[endpoint].create_bucket(Bucket=bucket)  # type: ignore[attr-defined]


@pytest.fixture()
def local_store(tmp_path: Path, bucket_name: str) -> LocalStore:
    (tmp_path / "root" / bucket_name).mkdir(parents=True)
    store = open_store(bucket_name, StoreConfig(local_root=tmp_path / "root"))
    assert isinstance(store, LocalStore)
    return store


@pytest.fixture()
def s3_store(s3_server: str, bucket_name: str) -> S3Store:
    make_s3_bucket(s3_server, bucket_name)
    store = open_store(bucket_name, s3_config(s3_server))
    assert isinstance(store, S3Store)
    return store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each contract test runs against both implementations."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(params=["local", "s3"])
def missing_bucket_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store("no-such-bucket", StoreConfig(local_root=tmp_path))
    return open_store("no-such-bucket-here", s3_config(request.getfixturevalue("s3_server")))


def keys_of(store: ObjectStore, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


# ================================================================================================ contract, both stores


def test_put_then_read_returns_the_bytes_and_the_written_version(store: ObjectStore) -> None:
    written = store.put_bytes("a/b.tif", b"hello")
    data, info = store.read_bytes("a/b.tif")
    assert (data, info.size, info.etag) == (b"hello", 5, written.etag)


def test_s3_etag_is_the_content_md5(s3_store: S3Store) -> None:
    s3_store.put_bytes("a/b.tif", b"hello")
    assert s3_store.read_bytes("a/b.tif")[1].etag == md5(b"hello")


def test_put_returns_the_same_info_head_gives(store: ObjectStore) -> None:
    info = store.put_bytes("a/b.tif", b"hello")
    head = store.head("a/b.tif")
    assert head is not None and (info.key, info.size, info.etag) == (head.key, head.size, head.etag)


def test_put_overwrites(store: ObjectStore) -> None:
    store.put_bytes("k.csv", b"one")
    store.put_bytes("k.csv", b"two")
    assert store.read_bytes("k.csv")[0] == b"two"


def test_head_of_missing_key_is_none(store: ObjectStore) -> None:
    assert store.head("nope.tif") is None


def test_read_of_missing_key_is_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.read_bytes("nope.tif")


def test_create_writes_a_new_object(store: ObjectStore) -> None:
    info = store.create("m.claim", b"mine")
    assert store.read_bytes("m.claim") == (b"mine", info)


def test_create_fails_when_the_key_exists_and_keeps_the_old_content(store: ObjectStore) -> None:
    store.put_bytes("m.claim", b"first")
    with pytest.raises(PreconditionFailed):
        store.create("m.claim", b"second")
    assert store.read_bytes("m.claim")[0] == b"first"


def test_delete_removes_the_object(store: ObjectStore) -> None:
    store.put_bytes("x.tif", b"x")
    store.delete("x.tif")
    assert store.head("x.tif") is None


def test_delete_of_missing_key_without_condition_succeeds(store: ObjectStore) -> None:
    store.delete("never-was.tif")
    assert store.head("never-was.tif") is None


def test_conditional_delete_with_current_etag_deletes(store: ObjectStore) -> None:
    info = store.put_bytes("x.csv", b"v1")
    store.delete("x.csv", if_match=info.etag)
    assert store.head("x.csv") is None


def test_conditional_delete_fails_when_the_object_changed(store: ObjectStore) -> None:
    old = store.put_bytes("x.csv", b"v1")
    store.put_bytes("x.csv", b"v2")
    with pytest.raises(PreconditionFailed):
        store.delete("x.csv", if_match=old.etag)
    assert store.read_bytes("x.csv")[0] == b"v2"


def test_conditional_delete_fails_when_the_object_changed_to_same_size(store: ObjectStore) -> None:
    old = store.put_bytes("x.csv", b"aaaa")
    store.put_bytes("x.csv", b"bbbb")
    with pytest.raises(PreconditionFailed):
        store.delete("x.csv", if_match=old.etag)


def test_conditional_delete_fails_when_the_object_is_gone(store: ObjectStore) -> None:
    info = store.put_bytes("x.csv", b"v1")
    store.delete("x.csv")
    with pytest.raises(PreconditionFailed):
        store.delete("x.csv", if_match=info.etag)


def test_listing_etag_is_the_etag_head_and_read_give(store: ObjectStore) -> None:
    store.put_bytes("d/x.csv", b"content")
    (listed,) = store.list("d/")
    head = store.head("d/x.csv")
    assert head is not None and listed.etag == head.etag == store.read_bytes("d/x.csv")[1].etag


def test_conditional_delete_with_etag_from_listing_deletes(store: ObjectStore) -> None:
    # The claim protocol deletes a manifest with the ETag it saw when listing.
    store.put_bytes("d/m_raw.csv", b"a.tif,1\n")
    (listed,) = store.list("d/")
    store.delete("d/m_raw.csv", if_match=listed.etag)
    assert store.head("d/m_raw.csv") is None


def test_listing_gives_size_and_last_modified(store: ObjectStore) -> None:
    store.put_bytes("d/x.csv", b"12345")
    (listed,) = store.list("d/")
    assert (listed.size, listed.last_modified.tzinfo is not None) == (5, True)


def test_list_filters_by_prefix_including_mid_name(store: ObjectStore) -> None:
    for key in ["C/WI/a.tif", "C/WA/b.tif", "C/OR/c.tif", "C/W.tif", "D/x.tif"]:
        store.put_bytes(key, b"x")
    assert keys_of(store, "C/W") == ["C/W.tif", "C/WA/b.tif", "C/WI/a.tif"]


def test_list_with_folder_prefix_gives_nested_keys_in_key_order(store: ObjectStore) -> None:
    for key in ["C/b.tif", "C/a/z.tif", "C/a.tif", "C/a-b.tif", "Cx.tif"]:
        store.put_bytes(key, b"x")
    assert keys_of(store, "C/") == ["C/a-b.tif", "C/a.tif", "C/a/z.tif", "C/b.tif"]


def test_list_of_absent_prefix_is_empty(store: ObjectStore) -> None:
    store.put_bytes("a/x.tif", b"x")
    assert keys_of(store, "zzz/") == []


def test_list_without_prefix_gives_everything(store: ObjectStore) -> None:
    store.put_bytes("a/x.tif", b"x")
    store.put_bytes("top.csv", b"x")
    assert keys_of(store) == ["a/x.tif", "top.csv"]


@pytest.mark.parametrize("key", ODD_KEYS)
def test_keys_with_spaces_quotes_commas_and_unicode_round_trip(store: ObjectStore, key: str) -> None:
    store.put_bytes(key, b"odd")
    assert (keys_of(store, "Counties/"), store.read_bytes(key)[0]) == ([key], b"odd")


@pytest.mark.parametrize("key", ["/abs.tif", "../up.tif", "a/../b.tif", "a//b.tif", "a/./b.tif", "a\x00b", "a\nb", ""])
def test_writing_an_unsafe_key_is_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(StoreError):
        store.put_bytes(key, b"x")


def test_upload_then_download_round_trips_a_file(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 100)
    store.upload(src, "up/file.bin")
    dest = tmp_path / "out" / "deep" / "file.bin"
    store.download("up/file.bin", dest)
    assert dest.read_bytes() == src.read_bytes()


def test_adopt_publishes_a_finished_file_at_its_own_key(store: ObjectStore, tmp_path: Path) -> None:
    """Both stores take a job's output through adopt (a link on folders, an upload on S3)."""
    src = tmp_path / "scratch" / "a%20b #1?.tif"
    src.parent.mkdir()
    src.write_bytes(bytes(range(256)) * 10)
    info = store.adopt(src, "Eau Claire/a%20b #1?.tif")
    data, head = store.read_bytes("Eau Claire/a%20b #1?.tif")
    assert data == src.read_bytes() and (info.size, info.etag) == (head.size, head.etag)


def test_download_of_missing_key_is_object_not_found(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        store.download("missing.tif", tmp_path / "x.tif")


def test_upload_of_missing_local_file_is_a_store_error(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        store.upload(tmp_path / "no-such-file", "k.tif")


def test_local_and_s3_list_unicode_keys_in_the_same_order(local_store: LocalStore, s3_store: S3Store) -> None:
    keys = ["k/é.tif", "k/z.tif", "k/\U0001f600.tif", "k/\uff21.tif", "k/A.tif", "k/a b.tif", "k/a.tif", "k/a/b.tif"]
    for key in keys:
        local_store.put_bytes(key, b"x")
        s3_store.put_bytes(key, b"x")
    assert keys_of(local_store, "k/") == keys_of(s3_store, "k/") == sorted(keys, key=lambda k: k.encode())


# ================================================================================================ missing bucket


def test_listing_a_missing_bucket_names_the_bucket(missing_bucket_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="bucket 'no-such-bucket"):
        list(missing_bucket_store.list())


def test_reading_from_a_missing_bucket_is_object_not_found(missing_bucket_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="bucket 'no-such-bucket"):
        missing_bucket_store.read_bytes("a.tif")


def test_writing_to_a_missing_bucket_is_object_not_found(missing_bucket_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="bucket 'no-such-bucket"):
        missing_bucket_store.put_bytes("a.tif", b"x")


def test_deleting_from_a_missing_bucket_is_not_silently_ok(missing_bucket_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        missing_bucket_store.delete("a.tif")


def test_local_write_to_missing_bucket_does_not_create_the_bucket_folder(tmp_path: Path) -> None:
    store = open_store("absent", StoreConfig(local_root=tmp_path))
    with pytest.raises(ObjectNotFound):
        store.put_bytes("a/b.tif", b"x")
    assert not (tmp_path / "absent").exists()


# ================================================================================================ LocalStore


def test_local_root_makes_the_bucket_a_folder_and_the_key_a_relative_path(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    open_store("in", StoreConfig(local_root=tmp_path)).put_bytes("Counties/WI/a.tif", b"data")
    assert (tmp_path / "in" / "Counties" / "WI" / "a.tif").read_bytes() == b"data"


def test_local_root_wins_over_an_endpoint(tmp_path: Path) -> None:
    assert isinstance(open_store("b", StoreConfig(local_root=tmp_path, endpoint="http://unused:1")), LocalStore)


def test_local_url_is_a_file_uri_that_parse_location_reads_back(local_store: LocalStore) -> None:
    key = "Counties/a b#%.tif"
    scheme, _, path = parse_location(local_store.url(key))
    assert (scheme, path) == ("file", str(local_store.base / key))


@pytest.mark.parametrize("key", ["../secret.txt", "/etc/passwd", "a/../../secret.txt", "./../secret.txt"])
def test_local_store_never_reads_outside_its_bucket_folder(local_store: LocalStore, key: str) -> None:
    outside = local_store.root / "secret.txt"
    outside.write_text("top secret")
    with pytest.raises(StoreError) as err:
        local_store.read_bytes(key)
    assert "top secret" not in str(err.value)


@pytest.mark.parametrize("key", ["../escaped.tif", "a/../../escaped.tif", "/tmp/escaped.tif"])
def test_local_store_never_writes_outside_its_bucket_folder(local_store: LocalStore, key: str) -> None:
    before = sorted(p for p in local_store.root.rglob("*"))
    for write in (local_store.put_bytes, local_store.create):
        with pytest.raises(StoreError):
            write(key, b"x")
    assert sorted(p for p in local_store.root.rglob("*")) == before and not Path("/tmp/escaped.tif").exists()


@pytest.mark.parametrize("key", ["../victim.txt", "/victim.txt", "a/../../victim.txt"])
def test_local_store_never_deletes_outside_its_bucket_folder(local_store: LocalStore, key: str) -> None:
    victim = local_store.root / "victim.txt"
    victim.write_text("keep me")
    with pytest.raises(StoreError):
        local_store.delete(key)
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("prefix", ["../", "../other/", "/", "/etc/", "a/../../"])
def test_local_listing_with_a_hostile_prefix_shows_nothing_outside_the_bucket(
    local_store: LocalStore, prefix: str
) -> None:
    (local_store.root / "other").mkdir()
    (local_store.root / "other" / "leak.tif").write_bytes(b"x")
    local_store.put_bytes("inside.tif", b"x")
    assert keys_of(local_store, prefix) == []


@pytest.mark.parametrize("bucket", ["..", ".", "a/b", "", "a\x00b", "..\\x"])
def test_unsafe_bucket_names_are_refused(tmp_path: Path, bucket: str) -> None:
    with pytest.raises(StoreError):
        open_store(bucket, StoreConfig(local_root=tmp_path / "root"))


def test_local_store_refuses_a_parent_folder_as_bucket_even_when_built_directly(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        LocalStore(tmp_path, "..")


@pytest.mark.parametrize("key", ["a\x1fb.tif", "a\x7fb.tif", "a\x85b.tif", "a\rb.tif"])
def test_local_store_refuses_control_characters(local_store: LocalStore, key: str) -> None:
    with pytest.raises(StoreError):
        local_store.put_bytes(key, b"x")


def test_temporary_files_and_folders_are_never_listed(local_store: LocalStore) -> None:
    local_store.put_bytes("d/real.tif", b"x")
    (local_store.base / "d" / ".cog-pipeline-tmp-abc123").write_bytes(b"half")
    (local_store.base / "d" / ".cog-pipeline-tmp-dir").mkdir()
    (local_store.base / "d" / ".cog-pipeline-tmp-dir" / "x.tif").write_bytes(b"x")
    assert keys_of(local_store) == ["d/real.tif"]


def test_keys_named_like_temporary_files_are_refused(local_store: LocalStore) -> None:
    # They would be written but never listed.
    with pytest.raises(StoreError):
        local_store.put_bytes("d/.cog-pipeline-tmp-x", b"x")


def test_writes_leave_no_temporary_files_behind(local_store: LocalStore, tmp_path: Path) -> None:
    local_store.put_bytes("d/a.tif", b"1")
    local_store.create("d/b.tif", b"2")
    with pytest.raises(PreconditionFailed):
        local_store.create("d/b.tif", b"3")
    src = tmp_path / "s"
    src.write_bytes(b"4")
    local_store.upload(src, "d/c.tif")
    assert sorted(p.name for p in (local_store.base / "d").iterdir()) == ["a.tif", "b.tif", "c.tif"]


def test_local_list_walks_only_the_folders_the_prefix_can_reach(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cog_pipeline.storage.store as store_module

    for key in ["C/WI/Wood/a.tif", "C/WI/Dane/b.tif", "C/MN/c.tif", "Other/d.tif", "C/WIx/e.tif"]:
        local_store.put_bytes(key, b"x")
    visited: list[str] = []
    real_walk = store_module.os.walk

    def spy(top, *args, **kwargs):  # type: ignore[no-untyped-def]
        for entry in real_walk(top, *args, **kwargs):
            visited.append(Path(entry[0]).relative_to(local_store.base).as_posix())
            yield entry

    monkeypatch.setattr(store_module.os, "walk", spy)
    keys = keys_of(local_store, "C/W")
    assert (keys, sorted(visited)) == (
        ["C/WI/Dane/b.tif", "C/WI/Wood/a.tif", "C/WIx/e.tif"],
        ["C", "C/WI", "C/WI/Dane", "C/WI/Wood", "C/WIx"],  # never C/MN nor Other
    )


def test_local_list_etag_matches_head_and_changes_on_an_identical_rewrite(local_store: LocalStore) -> None:
    first = local_store.put_bytes("x.tif", b"payload")
    assert [i.etag for i in local_store.list()] == [first.etag] == [local_store.head("x.tif").etag]
    second = local_store.put_bytes("x.tif", b"payload")
    assert second.etag != first.etag, "a new version must never look like the one a claim read"


def test_local_list_does_not_read_file_contents(local_store: LocalStore, monkeypatch) -> None:
    local_store.put_bytes("big.tif", b"x" * 1024)
    import builtins

    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    assert [i.key for i in local_store.list()] == ["big.tif"]
    assert opened == []


def test_local_key_naming_a_folder_is_not_an_object(local_store: LocalStore) -> None:
    local_store.put_bytes("C/a.tif", b"x")
    with pytest.raises(ObjectNotFound):
        local_store.read_bytes("C")


def test_local_head_of_a_folder_is_none(local_store: LocalStore) -> None:
    local_store.put_bytes("C/a.tif", b"x")
    assert local_store.head("C") is None


def test_local_delete_of_a_folder_key_leaves_the_folder(local_store: LocalStore) -> None:
    local_store.put_bytes("C/a.tif", b"x")
    local_store.delete("C")
    assert keys_of(local_store) == ["C/a.tif"]


def test_local_key_below_an_object_is_a_store_error_not_an_os_error(local_store: LocalStore) -> None:
    local_store.put_bytes("a.tif", b"x")
    with pytest.raises(StoreError):
        local_store.put_bytes("a.tif/b.tif", b"y")


def test_local_read_below_an_object_is_object_not_found(local_store: LocalStore) -> None:
    local_store.put_bytes("a.tif", b"x")
    with pytest.raises(ObjectNotFound):
        local_store.read_bytes("a.tif/b.tif")


def test_local_concurrent_creates_have_exactly_one_winner(local_store: LocalStore) -> None:
    results: list[str] = []
    barrier = threading.Barrier(8)

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            local_store.create("race.claim", f"owner {n}".encode())
            results.append("won")
        except PreconditionFailed:
            results.append("lost")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 7 + ["won"]


# ============================================================================================ S3: conditional requests


def _interfere(store: S3Store, operation: str, action) -> None:  # type: ignore[no-untyped-def]
    """Run `action` (through a second client) just before the store's next `operation` request is sent."""
    fired = []

    def hook(**_: object) -> None:
        if not fired:
            fired.append(True)
            action()

    store.client.meta.events.register(f"before-call.s3.{operation}", hook)


def test_s3_create_sends_if_none_match_so_a_racing_writer_wins(s3_store: S3Store, s3_server: str) -> None:
    other = open_store(s3_store.bucket, s3_config(s3_server))
    _interfere(s3_store, "PutObject", lambda: other.put_bytes("race.claim", b"theirs"))
    with pytest.raises(PreconditionFailed):
        s3_store.create("race.claim", b"mine")
    assert s3_store.read_bytes("race.claim")[0] == b"theirs"


def test_s3_conditional_delete_sends_if_match_so_a_racing_overwrite_survives(s3_store: S3Store, s3_server: str) -> None:
    other = open_store(s3_store.bucket, s3_config(s3_server))
    info = s3_store.put_bytes("m.csv", b"v1")
    _interfere(s3_store, "DeleteObject", lambda: other.put_bytes("m.csv", b"v2"))
    with pytest.raises(PreconditionFailed):
        s3_store.delete("m.csv", if_match=info.etag)
    assert s3_store.read_bytes("m.csv")[0] == b"v2"


def test_s3_conditional_delete_of_object_removed_in_between_is_precondition_failed(
    s3_store: S3Store, s3_server: str
) -> None:
    other = open_store(s3_store.bucket, s3_config(s3_server))
    info = s3_store.put_bytes("m.csv", b"v1")
    _interfere(s3_store, "DeleteObject", lambda: other.delete("m.csv"))
    with pytest.raises(PreconditionFailed):
        s3_store.delete("m.csv", if_match=info.etag)


def test_s3_url_round_trips_through_parse_location(s3_store: S3Store) -> None:
    for key in ODD_KEYS:
        assert parse_location(s3_store.url(key)) == ("s3", s3_store.bucket, key)


# ================================================================================================ S3: listing cost


def _seed(bucket: str, keys: list[str]) -> None:
    """Put many objects fast, straight into moto's backend in this process (HTTP puts would take seconds).

    Only the seeding skips HTTP: the listings under test go through boto3 and the real server.
    """
    from moto.s3.models import s3_backends

    backends = [b for account in s3_backends.values() for b in account.values() if bucket in b.buckets]
    assert len(backends) == 1, "the moto server must run in this process for seeding"
    for key in keys:
        backends[0].put_object(bucket, key, b"")


@pytest.fixture(scope="module")
def big_bucket(s3_server: str) -> str:
    bucket = "test-bucket-listing-big"
    make_s3_bucket(s3_server, bucket)
    _seed(bucket, [f"many/{i:05d}.tif" for i in range(2001)] + [f"few/{i:04d}.tif" for i in range(1000)])
    return bucket


@pytest.mark.parametrize(("prefix", "count", "requests"), [("many/", 2001, 3), ("few/", 1000, 1), ("", 3001, 4)])
def test_s3_listing_costs_one_request_per_thousand_keys(
    s3_server: str, big_bucket: str, prefix: str, count: int, requests: int
) -> None:
    counter = RequestCounter()
    store = open_store(big_bucket, s3_config(s3_server), counter)
    keys = keys_of(store, prefix)
    assert (len(keys), keys == sorted(keys), counter.by_operation) == (count, True, {"ListObjectsV2": requests})


def test_request_counter_counts_by_operation(s3_server: str, bucket_name: str) -> None:
    make_s3_bucket(s3_server, bucket_name)
    counter = RequestCounter()
    store = open_store(bucket_name, s3_config(s3_server), counter)
    store.put_bytes("a", b"x")
    store.read_bytes("a")
    assert (counter.by_operation, counter.total) == ({"PutObject": 1, "GetObject": 1}, 2)


def test_s3_put_reports_the_written_version_with_the_server_clock(s3_server: str, bucket_name: str) -> None:
    make_s3_bucket(s3_server, bucket_name)
    store = open_store(bucket_name, s3_config(s3_server))
    written = store.put_bytes("a", b"x")
    head = store.head("a")
    assert written.etag == head.etag
    assert abs((written.last_modified - head.last_modified).total_seconds()) < 2


# ================================================================================================ S3: errors


def test_s3_error_is_translated_to_store_error_without_credentials(
    s3_server: str, tmp_path: Path
) -> None:
    a, s = tmp_path / "a", tmp_path / "s"
    a.write_text(ACCESS)
    s.write_text(SECRET)
    store = open_store("xy", s3_config(s3_server, access_key_file=a, secret_key_file=s))  # invalid bucket name
    with pytest.raises(StoreError) as err:
        store.put_bytes("k.tif", b"x")
    message = str(err.value)
    assert ("xy" in message, ACCESS in message, SECRET in message) == (True, False, False)


def test_unreachable_endpoint_is_a_store_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    store = open_store("bucket", s3_config(f"http://127.0.0.1:{port}", max_attempts=1))
    with pytest.raises(StoreError):
        list(store.list())


# ================================================================================================ S3: credentials


def _credentials(config: StoreConfig):  # type: ignore[no-untyped-def]
    return config.s3_client()._request_signer._credentials.get_frozen_credentials()


@pytest.fixture()
def key_files(tmp_path: Path) -> tuple[Path, Path]:
    a, s = tmp_path / "access", tmp_path / "secret"
    a.write_text(f"\n  \n  {ACCESS}  \nignored-second-line\n")
    s.write_text(f"{SECRET}\r\n")
    return a, s


def test_key_files_are_the_credentials_used(s3_server: str, key_files: tuple[Path, Path]) -> None:
    creds = _credentials(s3_config(s3_server, access_key_file=key_files[0], secret_key_file=key_files[1]))
    assert (creds.access_key, creds.secret_key, creds.token) == (ACCESS, SECRET, None)


def test_key_files_override_credentials_in_the_environment(
    s3_server: str, key_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "envtoken")
    creds = _credentials(s3_config(s3_server, access_key_file=key_files[0], secret_key_file=key_files[1]))
    assert (creds.access_key, creds.token) == (ACCESS, None)


def test_store_with_key_files_works_against_the_server(
    s3_server: str, bucket_name: str, key_files: tuple[Path, Path]
) -> None:
    make_s3_bucket(s3_server, bucket_name)
    store = open_store(bucket_name, s3_config(s3_server, access_key_file=key_files[0], secret_key_file=key_files[1]))
    store.put_bytes("k.tif", b"v")
    assert keys_of(store) == ["k.tif"]


def test_without_key_files_the_environment_credentials_are_used(
    s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    creds = _credentials(s3_config(s3_server))
    assert (creds.access_key, creds.secret_key) == ("ENVKEY", "envsecret")


def test_without_key_files_a_shared_credentials_profile_is_used(
    s3_server: str, bucket_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "credentials"
    shared.write_text("[default]\naws_access_key_id = DEFAULTKEY\naws_secret_access_key = d\n"
                      "[ops]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = profilesecret\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_PROFILE", "ops")
    config = s3_config(s3_server)
    assert (_credentials(config).access_key, _credentials(config).secret_key) == ("PROFILEKEY", "profilesecret")
    make_s3_bucket(s3_server, bucket_name)
    open_store(bucket_name, config).put_bytes("k", b"v")  # and the store really works with them


@pytest.mark.parametrize("which", ["access", "secret"])
def test_only_one_key_file_is_a_clear_error(s3_server: str, key_files: tuple[Path, Path], which: str) -> None:
    kw = {"access_key_file": key_files[0]} if which == "access" else {"secret_key_file": key_files[1]}
    with pytest.raises(StoreError, match="-a.*-s"):
        s3_config(s3_server, **kw).s3_client()


def test_read_key_file_takes_the_first_non_blank_line_stripped(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("\n\t \n  KEY1 \nKEY2\n")
    assert read_key_file(path, "access key") == "KEY1"


def test_read_key_file_ignores_a_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"\xef\xbb\xbfKEY1\r\n")
    assert read_key_file(path, "access key") == "KEY1"


def test_empty_key_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text(" \n\t\n")
    with pytest.raises(StoreError, match="secret key file .* is empty"):
        read_key_file(path, "secret key")


def test_missing_key_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot read access key file"):
        read_key_file(tmp_path / "absent", "access key")


def test_key_file_that_is_a_folder_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot read secret key file"):
        read_key_file(tmp_path, "secret key")


def test_non_utf8_key_file_error_holds_none_of_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"s3cr3t\xffMORE-SECRET")
    with pytest.raises(StoreError) as err:
        read_key_file(path, "secret key")
    text = str(err.value) + repr(err.value) + repr(err.value.__cause__) + repr(err.value.__context__)
    assert ("s3cr3t" in text, "MORE-SECRET" in text, "0xff" in text, str(path) in text) == (False, False, False, True)


# ================================================================================================ S3: endpoint, retries


@pytest.mark.parametrize(
    ("given", "secure", "expected"),
    [
        ("host:9000", True, "https://host:9000"),
        ("host:9000", False, "http://host:9000"),
        ("host", True, "https://host"),
        ("http://host:9000", True, "http://host:9000"),
        ("https://host:9000/", False, "https://host:9000"),
        ("  host:9000/  ", True, "https://host:9000"),
        ("http://127.0.0.1:9000", True, "http://127.0.0.1:9000"),
        (None, True, None),
        ("", True, None),
    ],
)
def test_normalise_endpoint(given: str | None, secure: bool, expected: str | None) -> None:
    assert normalise_endpoint(given, secure=secure) == expected


@pytest.mark.parametrize("given", ["ftp://host", "http://", "host:notaport", "http://host:99999", "://host"])
def test_normalise_endpoint_refuses_what_is_not_an_http_endpoint(given: str) -> None:
    with pytest.raises(StoreError):
        normalise_endpoint(given)


def test_endpoint_without_scheme_defaults_to_https(s3_server: str) -> None:
    host_port = s3_server.removeprefix("http://")
    assert s3_config(host_port).s3_client().meta.endpoint_url == f"https://{host_port}"


def test_endpoint_with_http_scheme_and_trailing_slash_works_against_the_server(
    s3_server: str, bucket_name: str
) -> None:
    make_s3_bucket(s3_server, bucket_name)
    store = open_store(bucket_name, s3_config(s3_server + "/"))
    store.put_bytes("k.tif", b"v")
    assert store.read_bytes("k.tif")[0] == b"v"


def test_host_port_endpoint_made_plain_http_works_against_the_server(s3_server: str, bucket_name: str) -> None:
    endpoint = normalise_endpoint(s3_server.removeprefix("http://"), secure=False)
    make_s3_bucket(s3_server, bucket_name)
    store = open_store(bucket_name, s3_config(endpoint))  # type: ignore[arg-type]
    store.put_bytes("k.tif", b"v")
    assert (endpoint, keys_of(store)) == (s3_server, ["k.tif"])


def test_custom_endpoint_uses_path_style_requests(s3_server: str, bucket_name: str) -> None:
    # A host name (not an IP) would get virtual-hosted addressing (bucket.localhost) unless path style is set.
    endpoint = s3_server.replace("127.0.0.1", "localhost")
    make_s3_bucket(s3_server, bucket_name)
    store = open_store(bucket_name, s3_config(endpoint))
    urls: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: urls.append(request.url))
    store.put_bytes("k.tif", b"v")
    assert urls and all(u.startswith(f"{endpoint}/{bucket_name}/") for u in urls)


def test_no_endpoint_means_automatic_addressing() -> None:
    assert StoreConfig().s3_client().meta.config.s3["addressing_style"] == "auto"


@pytest.mark.parametrize("mode", ["standard", "adaptive"])
def test_retry_mode_reaches_the_client(s3_server: str, mode: str) -> None:
    config = s3_config(s3_server, retry_mode=mode, max_attempts=4).s3_client().meta.config
    # botocore's max_attempts counts retries; it stores the total including the first attempt.
    assert (config.retries["mode"], config.retries["total_max_attempts"]) == (mode, 5)


@pytest.mark.parametrize("mode", ["legacy", "fast", ""])
def test_other_retry_modes_are_refused(s3_server: str, mode: str) -> None:
    with pytest.raises(StoreError, match="retry mode"):
        s3_config(s3_server, retry_mode=mode).s3_client()


def test_unknown_addressing_style_is_refused(s3_server: str) -> None:
    with pytest.raises(StoreError, match="addressing style"):
        s3_config(s3_server, addressing_style="sideways").s3_client()


# ================================================================================================ config, locations


def test_store_config_json_round_trip_keeps_paths_not_keys(key_files: tuple[Path, Path]) -> None:
    config = StoreConfig(
        endpoint="host:9000",
        access_key_file=key_files[0],
        secret_key_file=key_files[1],
        region="eu-west-1",
        retry_mode="adaptive",
        max_attempts=3,
        max_pool_connections=5,
        addressing_style="path",
    )
    data = config.to_json()
    assert (StoreConfig.from_json(data), ACCESS in str(data), SECRET in str(data)) == (config, False, False)


def test_store_config_json_round_trip_of_local_root(tmp_path: Path) -> None:
    config = StoreConfig(local_root=tmp_path)
    assert StoreConfig.from_json(config.to_json()) == config


def test_open_store_refuses_a_bucket_with_a_slash_for_s3_too(s3_server: str) -> None:
    with pytest.raises(StoreError):
        open_store("a/b", s3_config(s3_server))


# ================================================================================================ key files (8.13)


def test_key_file_problem_names_a_device_without_reading_it() -> None:
    from cog_pipeline.storage.store import key_file_problem

    problem = key_file_problem("/dev/urandom", "secret key")
    assert problem is not None and "not a regular file" in problem and "no such file" not in problem


def test_key_file_problem_is_none_for_a_good_file(tmp_path: Path) -> None:
    from cog_pipeline.storage.store import key_file_problem

    (tmp_path / "k").write_text("KEY\n")
    assert key_file_problem(tmp_path / "k", "access key") is None


def test_missing_key_file_says_no_such_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such file"):
        read_key_file(tmp_path / "absent", "access key")


def test_binary_key_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"s3cr3t\x00\x01\x02")
    with pytest.raises(StoreError, match="binary") as err:
        read_key_file(path, "secret key")
    assert "s3cr3t" not in str(err.value)


def test_oversized_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"A" * (1024 * 1024))
    with pytest.raises(StoreError, match="too large"):
        read_key_file(path, "secret key")


def test_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    import os

    path = tmp_path / "k"
    path.write_text("KEY\n")
    path.chmod(0)
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    with pytest.raises(StoreError, match="cannot read secret key file .*Permission denied"):
        read_key_file(path, "secret key")


def test_read_head_gives_the_first_bytes_only(store: ObjectStore) -> None:
    store.put_bytes("big.csv", b"x" * 5000)
    store.put_bytes("empty.csv", b"")
    assert (len(store.read_head("big.csv", 1024)), store.read_head("empty.csv", 1024)) == (1024, b"")


def test_local_conditional_replace_has_one_winner_across_processes(local_store: LocalStore) -> None:
    """Two processes swap the same version at once: exactly one succeeds (flock, not just a thread lock)."""
    import multiprocessing

    first = local_store.put_bytes("m.claim", b"v0")
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    start = ctx.Barrier(2)

    def swap(n: int) -> None:
        start.wait()
        try:
            LocalStore(local_store.root, local_store.bucket).replace("m.claim", f"v{n}".encode(), first.etag)
            results.put("won")
        except PreconditionFailed:
            results.put("lost")

    procs = [ctx.Process(target=swap, args=(n,)) for n in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(results.get(timeout=5) for _ in procs) == ["lost", "won"]


def test_adopt_links_a_finished_file_into_a_folder_bucket(local_store: LocalStore, tmp_path: Path) -> None:
    """The local engine's outputs are linked, not copied: same inode, readable by others, no temporary left,
    and the object stays when the scratch copy goes."""
    src = tmp_path / "scratch" / "x.tif"
    src.parent.mkdir()
    src.write_bytes(b"II*\x00cog bytes")
    os.chmod(src, 0o600)
    info = local_store.adopt(src, "Eau Claire/x.tif")
    dest = local_store.path_of("Eau Claire/x.tif")
    assert os.stat(dest).st_ino == os.stat(src).st_ino
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o644
    src.unlink()
    assert dest.read_bytes() == b"II*\x00cog bytes" and info.size == len(b"II*\x00cog bytes")
    assert [p.name for p in dest.parent.iterdir()] == ["x.tif"]
    assert info.etag == local_store.head("Eau Claire/x.tif").etag


def test_adopt_copies_when_the_file_cannot_be_linked(local_store: LocalStore, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def cross_device(*_a: object, **_k: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    src = tmp_path / "x.jpg"
    src.write_bytes(b"\xff\xd8jpeg\xff\xd9")
    monkeypatch.setattr(os, "link", cross_device)
    local_store.adopt(src, "x.jpg")
    dest = local_store.path_of("x.jpg")
    assert dest.read_bytes() == src.read_bytes() and os.stat(dest).st_ino != os.stat(src).st_ino


def test_download_if_match_gets_exactly_that_version_or_refuses(buckets, tmp_path):
    """Issue 22.5: what a job converts is the version its lineage names (the local engine's stage-in)."""
    from cog_pipeline.storage.store import PreconditionFailed

    buckets.input.put_bytes("a.tif", b"version one")
    first = buckets.input.head("a.tif")
    buckets.input.download("a.tif", tmp_path / "one", if_match=first.etag)
    assert (tmp_path / "one").read_bytes() == b"version one"
    buckets.input.put_bytes("a.tif", b"version two, longer")
    with pytest.raises(PreconditionFailed):
        buckets.input.download("a.tif", tmp_path / "stale", if_match=first.etag)
    buckets.input.download("a.tif", tmp_path / "two", if_match=buckets.input.head("a.tif").etag)
    assert (tmp_path / "two").read_bytes() == b"version two, longer"


def test_a_folder_pin_links_the_listed_version_and_keeps_it_when_the_key_is_replaced(tmp_path):
    from cog_pipeline.storage.store import LocalStore, PreconditionFailed

    (tmp_path / "b").mkdir()
    store = LocalStore(tmp_path, "b")
    store.put_bytes("a.tif", b"one")
    listed = store.head("a.tif")
    store.pin("a.tif", tmp_path / "job" / "a.tif", listed.etag)
    store.put_bytes("a.tif", b"two")  # replaced after the job linked it: the job still reads what was listed
    assert (tmp_path / "job" / "a.tif").read_bytes() == b"one"
    with pytest.raises(PreconditionFailed):
        store.pin("a.tif", tmp_path / "job2" / "a.tif", listed.etag)
