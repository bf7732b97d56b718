"""The claim protocol: exactly-once renaming of raw manifests, on folders and on a real S3 server."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cog_pipeline.run.claim import STALE_MARKER_AGE, allocate_run_dir, claim_one, look, recover_claims
from cog_pipeline.run.naming import RunNames
from cog_pipeline.run.rundir import CLAIMED, CLAIMING, RunDir, list_run_dirs
from cog_pipeline.storage.store import PreconditionFailed

MANIFEST = "Counties/WI/Wood/a.tif,1\nCounties/WI/Wood/b.tif,3\n"


def _claim(buckets, work_dir: Path, key: str = "batch_raw.csv"):
    info = buckets.input.head(key)
    return claim_one(
        buckets.input, info, work_dir=work_dir, output_bucket=buckets.output_bucket, store_config=buckets.config
    )


def test_claim_renames_manifest_and_keeps_a_copy(buckets, tmp_path):
    buckets.put_text("batch_raw.csv", MANIFEST)
    claim = _claim(buckets, tmp_path / "work")
    assert claim is not None
    keys = buckets.input_keys()
    assert "batch_raw.csv" not in keys
    assert claim.names.processing_key in keys
    assert claim.names.processing_key == f"batch_processing-{claim.run_dir.timestamp}.csv"
    assert claim.run_dir.path.name == f"workflow-run-{claim.run_dir.timestamp}"
    assert (claim.run_dir.path / "manifest.csv").read_text() == MANIFEST
    info = claim.run_dir.load()
    assert info.state == CLAIMED and info.claimed_at is not None
    assert not any(k.endswith(".claim") for k in keys)


def test_claim_keeps_folder_and_base_of_nested_manifest(buckets, tmp_path):
    buckets.put_text("uploads/2026/county_raw.csv", MANIFEST)
    claim = _claim(buckets, tmp_path / "work", "uploads/2026/county_raw.csv")
    assert claim.names.processing_key.startswith("uploads/2026/county_processing-")
    assert claim.names.processing_key in buckets.input_keys()


def test_claim_loses_to_an_existing_marker(buckets, tmp_path):
    buckets.put_text("batch_raw.csv", MANIFEST)
    buckets.put_text("batch_raw.csv.claim", '{"timestamp": "20260101-000000"}')
    assert _claim(buckets, tmp_path / "work") is None
    assert "batch_raw.csv" in buckets.input_keys()
    assert list_run_dirs(tmp_path / "work") == []


def test_reuploaded_manifest_is_not_deleted_by_the_claim(buckets, tmp_path, monkeypatch):
    """A new version uploaded between read and delete must survive for the next tick."""
    buckets.put_text("batch_raw.csv", MANIFEST)
    store = buckets.input
    original_create = store.create

    def create_then_reupload(key, data):
        info = original_create(key, data)
        if "processing" in key:
            store.put_bytes("batch_raw.csv", b"Counties/new.tif,1\n")
        return info

    monkeypatch.setattr(store, "create", create_then_reupload)
    claim = _claim(buckets, tmp_path / "work")
    assert claim is not None
    data, _ = store.read_bytes("batch_raw.csv")
    assert data == b"Counties/new.tif,1\n"
    processing, _ = store.read_bytes(claim.names.processing_key)
    assert processing.decode() == MANIFEST


def test_look_refuses_duplicate_base_names(buckets):
    buckets.put_text("a/x_raw.csv", MANIFEST)
    buckets.put_text("b/x_raw.csv", MANIFEST)
    buckets.put_text("c/y_raw.csv", MANIFEST)
    view = look(buckets.input, "*raw.csv")
    problems = {p.info.key: p.problem for p in view.pending}
    assert problems["c/y_raw.csv"] is None
    assert "not unique" in problems["a/x_raw.csv"] and "b/x_raw.csv" in problems["a/x_raw.csv"]
    assert problems["b/x_raw.csv"] is not None


def test_look_never_offers_pipeline_files_even_to_a_broad_pattern(buckets):
    for key in ("m_raw.csv", "m_processing-20260101-000000.csv", "m_processed-20260101-000000.csv",
                "m_failed-20260101-000000.csv", "m_failed-20260101-000000-reasons.csv"):
        buckets.put_text(key, MANIFEST)
    view = look(buckets.input, "*.csv")
    assert [p.info.key for p in view.pending] == ["m_raw.csv"]
    assert [p.key for p in view.processing] == ["m_processing-20260101-000000.csv"]


def test_run_dir_timestamps_never_collide(tmp_path):
    stamps = [allocate_run_dir(tmp_path)[0] for _ in range(3)]
    assert len(set(stamps)) == 3
    assert stamps == sorted(stamps)


def test_two_hosts_racing_for_one_manifest_claim_it_once(buckets, tmp_path):
    """Two scans with separate work dirs (separate hosts: no shared lock) reach the marker at once."""
    buckets.put_text("batch_raw.csv", MANIFEST)
    info = buckets.input.head("batch_raw.csv")
    barrier = threading.Barrier(2)
    results = []

    class Racing:
        def __init__(self, store):
            self._store = store

        def __getattr__(self, name):
            return getattr(self._store, name)

        def create(self, key, data):
            if key.endswith(".claim"):
                barrier.wait(timeout=10)
            return self._store.create(key, data)

    from cog_pipeline.storage.store import open_store

    def worker(n):
        store = Racing(open_store(buckets.input_bucket, buckets.config))
        results.append(
            claim_one(store, info, work_dir=tmp_path / f"host{n}", output_bucket="out", store_config=buckets.config)
        )

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r is None for r in results) == [False, True]
    processing = [k for k in buckets.input_keys() if "processing" in k]
    assert len(processing) == 1
    assert "batch_raw.csv" not in buckets.input_keys()


class Crash(Exception):
    pass


class CrashAfter:
    """Wraps a store; the (n+1)-th mutating call raises Crash before it happens: a crash after n steps."""

    MUTATING = {"create", "put_bytes", "delete", "upload", "adopt", "replace"}

    def __init__(self, store, steps: int) -> None:
        self._store = store
        self.steps = steps
        self.calls = 0

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if name not in self.MUTATING:
            return attr

        def wrapped(*args, **kwargs):
            if self.calls >= self.steps:
                raise Crash(f"crash before {name}{args[:1]}")
            self.calls += 1
            return attr(*args, **kwargs)

        return wrapped


CLAIM_MUTATIONS = 7  # marker create, renew, processing create, renew, renew, raw delete, marker delete


@pytest.mark.parametrize("steps", range(CLAIM_MUTATIONS))
def test_crash_between_claim_steps_is_recovered(buckets, tmp_path, steps):
    buckets.put_text("batch_raw.csv", MANIFEST)
    work = tmp_path / "work"
    info = buckets.input.head("batch_raw.csv")
    with pytest.raises(Crash):
        claim_one(CrashAfter(buckets.input, steps), info, work_dir=work, output_bucket="out", store_config=buckets.config)
    # After the crash: either still raw, or a processing file with its run directory.
    keys = buckets.input_keys()
    processing = [k for k in keys if "processing" in k]
    assert ("batch_raw.csv" in keys) or processing
    actions = recover_claims(buckets.input, work, look(buckets.input, "*raw.csv"))
    assert actions, "recovery must act on an interrupted claim"
    keys = buckets.input_keys()
    assert not any(k.endswith(".claim") for k in keys)
    processing = [k for k in keys if "processing" in k]
    if processing:
        # The claim had reached the processing file: it is complete now, raw gone, run dir claimed.
        assert "batch_raw.csv" not in keys
        (run,) = list_run_dirs(work)
        assert run.load().state == CLAIMED and run.load().processing_key == processing[0]
    else:
        # The claim had not: the manifest is raw again and no run directory is left behind.
        assert "batch_raw.csv" in keys
        assert list_run_dirs(work) == []
        assert _claim(buckets, work) is not None


def test_fresh_marker_of_another_host_is_left_alone(buckets, tmp_path):
    buckets.put_text("batch_raw.csv", MANIFEST)
    buckets.put_text("batch_raw.csv.claim", '{"timestamp": "20991231-235959"}')
    actions = recover_claims(buckets.input, tmp_path / "work", look(buckets.input, "*raw.csv"))
    assert actions == []
    assert "batch_raw.csv.claim" in buckets.input_keys()


def test_stale_marker_of_another_host_is_removed(buckets, tmp_path):
    from datetime import datetime, timezone

    buckets.put_text("batch_raw.csv", MANIFEST)
    buckets.put_text("batch_raw.csv.claim", '{"timestamp": "20200101-000000"}')
    later = datetime.now(timezone.utc) + STALE_MARKER_AGE * 2
    actions = recover_claims(buckets.input, tmp_path / "work", look(buckets.input, "*raw.csv"), now=later)
    assert any("stale" in a for a in actions)
    assert "batch_raw.csv.claim" not in buckets.input_keys()
    assert "batch_raw.csv" in buckets.input_keys()


def test_conditional_create_is_what_guards_the_processing_file(buckets):
    names = RunNames("batch_raw.csv", "20260101-000000")
    buckets.input.create(names.processing_key, b"x")
    with pytest.raises(PreconditionFailed):
        buckets.input.create(names.processing_key, b"y")


def test_interrupted_claim_state_is_visible_in_run_json(buckets, tmp_path):
    buckets.put_text("batch_raw.csv", MANIFEST)
    info = buckets.input.head("batch_raw.csv")
    with pytest.raises(Crash):
        claim_one(CrashAfter(buckets.input, 1), info, work_dir=tmp_path, output_bucket="out", store_config=buckets.config)
    (run,) = list_run_dirs(tmp_path)
    assert isinstance(run, RunDir) and run.load().state == CLAIMING


# ---------------------------------------------------------------------------------------------- issue 8.4, 8.13


def test_run_dirs_claimed_in_one_second_keep_the_true_time_and_stay_unique(tmp_path):
    from datetime import datetime, timezone

    moment = datetime(2026, 11, 24, 21, 36, 0, tzinfo=timezone.utc)
    stamps = [allocate_run_dir(tmp_path, now=moment)[0] for _ in range(3)]
    assert stamps == ["20261124-213600", "20261124-213600-2", "20261124-213600-3"]


def test_a_later_run_dir_does_not_push_a_new_claim_into_the_future(tmp_path):
    from datetime import datetime, timezone

    (tmp_path / "workflow-run-20991231-235959").mkdir()
    ts, _ = allocate_run_dir(tmp_path, now=datetime(2026, 11, 24, 21, 36, 0, tzinfo=timezone.utc))
    assert ts == "20261124-213600"


def _tiff_bytes(tmp_path) -> bytes:
    import numpy as np

    from tests import rasters

    return rasters.write(tmp_path / "img.tif", np.zeros((1, 8, 8), dtype="uint8")).read_bytes()


def test_a_broad_pattern_never_claims_an_image(buckets, tmp_path):
    """`-p '*'` at the library level: the image is skipped with a reason and left untouched."""
    buckets.input.put_bytes("img000.tif", _tiff_bytes(tmp_path))
    buckets.put_text("batch_raw.csv", MANIFEST)
    view = look(buckets.input, "*")
    problems = {p.info.key: p.problem for p in view.pending}
    assert problems["batch_raw.csv"] is None
    assert "TIFF image" in problems["img000.tif"] and "left in place" in problems["img000.tif"]


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"II*\x00" + b"\x00" * 64, "TIFF"), (b"MM\x00*" + b"\x00" * 64, "TIFF"), (b"a.tif,1\n\x00\x00\x00", "binary")],
)
def test_a_matched_csv_that_is_not_text_is_skipped(buckets, data, why):
    buckets.input.put_bytes("x_raw.csv", data)
    (pending,) = look(buckets.input, "*raw.csv").pending
    assert why in pending.problem
    assert buckets.input.read_bytes("x_raw.csv")[0] == data


def test_a_latin1_manifest_is_still_a_manifest(buckets):
    buckets.input.put_bytes("x_raw.csv", b"caf\xe9.tif,1\n")
    (pending,) = look(buckets.input, "*raw.csv").pending
    assert pending.problem is None


def test_an_oversized_object_is_not_a_manifest(buckets, monkeypatch):
    from cog_pipeline.run import claim as claim_mod

    monkeypatch.setattr(claim_mod, "MAX_MANIFEST_BYTES", 10)
    buckets.put_text("x_raw.csv", MANIFEST)
    (pending,) = look(buckets.input, "*raw.csv").pending
    assert "too large" in pending.problem


def test_the_crash_matrix_covers_every_mutating_step_of_a_claim(buckets, tmp_path):
    buckets.put_text("batch_raw.csv", MANIFEST)
    counting = CrashAfter(buckets.input, 100)
    info = buckets.input.head("batch_raw.csv")
    assert claim_one(counting, info, work_dir=tmp_path, output_bucket="out", store_config=buckets.config) is not None
    assert counting.calls == CLAIM_MUTATIONS
