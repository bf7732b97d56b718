"""Finding many keys with few listings: plan_prefixes and find_keys on a folder and on a real S3 server."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cog_pipeline.storage.listing import MAX_FOLDER_LISTINGS, find_keys, folder_of, plan_prefixes
from cog_pipeline.storage.store import LocalStore, ObjectStore, RequestCounter, StoreConfig, open_store


def covers(prefixes: list[str], keys: list[str]) -> bool:
    return all(any(k.startswith(p) for p in prefixes) for k in keys)


# ---------------------------------------------------------------------------------------------- folder_of


def test_folder_of_keeps_the_trailing_slash() -> None:
    assert folder_of("Counties/WI/a.tif") == "Counties/WI/"


def test_folder_of_a_top_level_key_is_empty() -> None:
    assert folder_of("a.tif") == ""


# ---------------------------------------------------------------------------------------------- plan_prefixes


def test_no_keys_means_no_listings() -> None:
    assert plan_prefixes([]) == []


def test_keys_in_one_folder_need_one_listing() -> None:
    assert plan_prefixes(["C/WI/a.tif", "C/WI/b.tif"]) == ["C/WI/"]


def test_few_folders_are_listed_separately() -> None:
    assert plan_prefixes(["C/WI/a.tif", "C/MN/b.tif", "C/WI/c.tif"]) == ["C/MN/", "C/WI/"]


def test_a_folder_inside_a_listed_folder_is_not_listed_again() -> None:
    assert plan_prefixes(["C/a.tif", "C/WI/b.tif", "C/WI/Wood/c.tif"]) == ["C/"]


def test_a_sibling_sharing_a_name_start_is_not_taken_for_a_subfolder() -> None:
    assert plan_prefixes(["C/W/a.tif", "C/WI/b.tif"]) == ["C/W/", "C/WI/"]


def test_a_top_level_key_means_listing_the_whole_bucket_once() -> None:
    assert plan_prefixes(["a.tif", "C/WI/b.tif"]) == [""]


def test_more_folders_than_allowed_collapse_to_their_common_prefix() -> None:
    keys = [f"Counties/WI/County{i:02d}/a.tif" for i in range(MAX_FOLDER_LISTINGS + 1)]
    assert plan_prefixes(keys) == ["Counties/WI/County"]


def test_max_listings_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_prefixes(["a/b.tif"], max_listings=0)


@pytest.mark.parametrize("max_listings", [1, 2, 3, 10])
@pytest.mark.parametrize("seed", range(5))
def test_plan_respects_max_listings_and_covers_every_key(max_listings: int, seed: int) -> None:
    rng = random.Random(seed)
    parts = ["C", "Counties", "WI", "W", "Wood", "a b", "é", "x,y", "MN"]
    keys = ["/".join(rng.choice(parts) for _ in range(rng.randint(0, 4))) + f"/{n}.tif" for n in range(30)]
    keys = [k.lstrip("/") for k in keys]
    prefixes = plan_prefixes(keys, max_listings)
    assert (len(prefixes) <= max_listings, covers(prefixes, keys)) == (True, True), prefixes


def test_plan_accepts_a_one_shot_iterator() -> None:
    assert plan_prefixes(iter(["C/a.tif", "D/b.tif"])) == ["C/", "D/"]


# ---------------------------------------------------------------------------------------------- find_keys


@pytest.fixture()
def local_store(tmp_path: Path) -> LocalStore:
    (tmp_path / "in").mkdir()
    store = open_store("in", StoreConfig(local_root=tmp_path))
    assert isinstance(store, LocalStore)
    return store


@pytest.fixture()
def s3_store(s3_server: str, bucket_name: str) -> ObjectStore:
    config = StoreConfig(endpoint=s3_server)
    config.s3_client().create_bucket(Bucket=bucket_name)
    return open_store(bucket_name, config)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    return request.getfixturevalue(f"{request.param}_store")


EXISTING = ["C/WI/Wood/1band.tif", "C/WI/Wood/3band.tif", "C/MN/x y.tif", "C/WI/Dane/é,1.tif", "top.tif"]
ABSENT = ["C/WI/Wood/missing.tif", "C/OR/none.tif", "nothing.tif"]


def test_find_keys_finds_exactly_the_existing_keys(store: ObjectStore) -> None:
    for key in EXISTING + ["C/WI/Wood/unrelated.tif"]:
        store.put_bytes(key, key.encode())
    found = find_keys(store, EXISTING + ABSENT)
    assert sorted(found) == sorted(EXISTING)


def test_find_keys_gives_the_info_of_each_found_key(store: ObjectStore) -> None:
    store.put_bytes("C/a.tif", b"12345")
    info = find_keys(store, ["C/a.tif"])["C/a.tif"]
    head = store.head("C/a.tif")
    assert head is not None and (info.key, info.size, info.etag) == ("C/a.tif", 5, head.etag)


def test_find_keys_of_nothing_is_empty(store: ObjectStore) -> None:
    assert find_keys(store, []) == {}


def test_find_keys_with_collapsed_prefix_still_finds_exactly_the_existing(store: ObjectStore) -> None:
    existing = [f"C/F{i}/a.tif" for i in range(4)]
    for key in existing + ["C/Other/a.tif"]:
        store.put_bytes(key, b"x")
    found = find_keys(store, existing + ["C/F9/a.tif"], max_listings=2)
    assert sorted(found) == existing


def test_find_keys_never_matches_a_hostile_key_outside_the_bucket(local_store: LocalStore) -> None:
    (local_store.root / "secret.tif").write_bytes(b"x")
    local_store.put_bytes("a.tif", b"x")
    assert find_keys(local_store, ["../secret.tif", "a.tif"]).keys() == {"a.tif"}


@pytest.mark.parametrize("folders", [1, 3, MAX_FOLDER_LISTINGS + 5])
def test_find_keys_costs_at_most_max_listings_listings_on_s3(s3_server: str, bucket_name: str, folders: int) -> None:
    config = StoreConfig(endpoint=s3_server)
    config.s3_client().create_bucket(Bucket=bucket_name)
    keys = [f"C/F{f:02d}/{n}.tif" for f in range(folders) for n in range(3)]
    counter = RequestCounter()
    store = open_store(bucket_name, config, counter)
    for key in keys[::2]:
        store.put_bytes(key, b"x")
    counter.by_operation.clear()
    found = find_keys(store, keys)
    assert (sorted(found), counter.by_operation) == (
        sorted(keys[::2]),
        # one listing per folder, or one listing of their common prefix past MAX_FOLDER_LISTINGS folders
        {"ListObjectsV2": folders if folders <= MAX_FOLDER_LISTINGS else 1},
    )


def test_many_folders_in_two_states_cost_two_listings_not_the_whole_bucket() -> None:
    keys = [f"Counties/{state}/County{i:02d}/a.tif" for state in ("WI", "MN") for i in range(MAX_FOLDER_LISTINGS)]
    assert plan_prefixes(keys) == ["Counties/MN/County0", "Counties/WI/County0"]
