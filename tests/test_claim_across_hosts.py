"""Issue 22.1: every upload of a manifest is answered, across work dirs (hosts) claiming in one second.

Two work dirs stand for two hosts (or a Crondor beside a manual scan): no shared lock, no shared run
directories. The claim's clock is fixed to one second, so the only thing keeping the two claims apart is
the bucket itself.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from cog_pipeline.run import claim as claim_module
from cog_pipeline.run.claim import claim_one
from cog_pipeline.publishing.reconcile import reconcile
from cog_pipeline.storage.store import StoreError
from tests.conftest import config_with

UPLOAD_1 = "Counties/a.tif,1\nCounties/b.tif,3\n"
UPLOAD_2 = "Counties/c.tif,1\n"
SECOND = datetime(2026, 12, 7, 18, 0, 0, tzinfo=timezone.utc)


class _OneSecond(datetime):
    """The claim module's clock, stopped: every claim of the test happens in the same UTC second."""

    @classmethod
    def now(cls, tz=None):
        return SECOND if tz is None else SECOND.astimezone(tz)


@pytest.fixture()
def one_second(monkeypatch):
    monkeypatch.setattr(claim_module, "datetime", _OneSecond)


def _claim(buckets, work):
    info = buckets.input.head("x_raw.csv")
    return claim_one(buckets.input, info, work_dir=work, output_bucket=buckets.output_bucket, store_config=buckets.config)


def _file(buckets, key: str) -> str:
    return buckets.input.read_bytes(key)[0].decode()


@pytest.mark.parametrize("second_upload", [UPLOAD_2, UPLOAD_1], ids=["other-rows", "same-bytes"])
def test_a_reupload_claimed_by_another_work_dir_in_the_same_second_is_answered_too(buckets, tmp_path, one_second, second_upload):
    """Scan A claims upload 1; upload 2 arrives; scan B (another work dir) claims it in the same second.

    Before: B got A's timestamp, adopted (or failed on) A's processing file, and one upload went unanswered.
    """
    buckets.put_text("x_raw.csv", UPLOAD_1)
    a = _claim(buckets, tmp_path / "host-a")
    buckets.put_text("x_raw.csv", second_upload)
    b = _claim(buckets, tmp_path / "host-b")
    assert a is not None and b is not None
    assert (a.run_dir.timestamp, b.run_dir.timestamp) == ("20261207-180000", "20261207-180000-2")
    assert _file(buckets, a.names.processing_key) == UPLOAD_1
    assert _file(buckets, b.names.processing_key) == second_upload
    assert "x_raw.csv" not in buckets.input_keys()

    # Both runs reconcile (no job ran, so every row fails): each upload's rows are in its own failed file.
    ra = reconcile(a.run_dir, input_store=buckets.input)
    rb = reconcile(b.run_dir, input_store=buckets.input)
    assert _file(buckets, ra.failed_key) == UPLOAD_1
    assert _file(buckets, rb.failed_key) == second_upload
    assert not any("processing" in k for k in buckets.input_keys())


def test_a_claim_after_another_hosts_run_finished_in_the_same_second_keeps_its_result_file(buckets, tmp_path, one_second):
    """The sequential variant: A is reconciled before B claims; B's result file must not replace A's."""
    buckets.put_text("x_raw.csv", UPLOAD_1)
    a = _claim(buckets, tmp_path / "host-a")
    ra = reconcile(a.run_dir, input_store=buckets.input)
    buckets.put_text("x_raw.csv", UPLOAD_2)
    b = _claim(buckets, tmp_path / "host-b")
    rb = reconcile(b.run_dir, input_store=buckets.input)
    assert ra.failed_key != rb.failed_key
    assert (_file(buckets, ra.failed_key), _file(buckets, rb.failed_key)) == (UPLOAD_1, UPLOAD_2)


def test_reconcile_never_overwrites_a_result_file_it_did_not_write(buckets, tmp_path):
    """Result files are created only if absent; another run's file at the key stays, and the run waits."""
    buckets.put_text("x_raw.csv", UPLOAD_1)
    a = _claim(buckets, tmp_path / "host-a")
    buckets.put_text(a.names.failed_key, "someone else's rows\n")
    with pytest.raises(StoreError, match="not overwritten"):
        reconcile(a.run_dir, input_store=buckets.input)
    assert _file(buckets, a.names.failed_key) == "someone else's rows\n"
    assert a.names.processing_key in buckets.input_keys()  # kept: the manifest is still answered later


def test_a_repeated_reconcile_recognises_its_own_result_files(buckets, tmp_path):
    buckets.put_text("x_raw.csv", UPLOAD_1)
    a = _claim(buckets, tmp_path / "host-a")

    class DiesBeforeDeleting:  # the result files are out; the process dies before removing the processing file
        def __getattr__(self, name):
            return getattr(buckets.input, name)

        def delete(self, key, if_match=None):
            raise KeyboardInterrupt(key)

    with pytest.raises(KeyboardInterrupt):
        reconcile(a.run_dir, input_store=DiesBeforeDeleting())
    again = reconcile(a.run_dir, input_store=buckets.input)
    assert _file(buckets, again.failed_key) == UPLOAD_1
    assert a.names.processing_key not in buckets.input_keys()


def test_result_files_in_a_folder_bucket_are_readable_by_the_folders_other_users(tmp_path):
    from cog_pipeline.storage.store import StoreConfig, open_store

    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    config = StoreConfig(local_root=root)
    store = open_store("in", config)
    store.put_bytes("x_raw.csv", UPLOAD_1.encode())
    a = claim_one(store, store.head("x_raw.csv"), work_dir=tmp_path / "w", output_bucket="in", store_config=config)
    result = reconcile(a.run_dir, input_store=store)
    for key in (result.failed_key, result.reasons_key):
        assert (root / "in" / key).stat().st_mode & 0o777 == 0o644


def test_a_late_copy_of_a_reconciled_runs_processing_file_is_removed_by_the_next_tick(buckets, tmp_path):
    """A conditional PUT held by a proxy past reconcile (botocore retried it meanwhile) used to put the processing
    file back beside the run's result files, for good. The next tick removes it, and says so."""
    from cog_pipeline.pipeline import ScanOptions, scan

    buckets.put_text("x_raw.csv", UPLOAD_1)
    options = ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "w", progress=False, config=config_with(workers=1))
    first = scan(options, echo=lambda _m: None)
    (run,) = first.reconciled
    names = run.load()
    buckets.put_text(names.processing_key, UPLOAD_1)  # the late write lands after reconcile removed the file
    lines: list[str] = []
    later = scan(options, echo=lines.append)
    assert names.processing_key not in buckets.input_keys()
    assert any(line.startswith(f"removed {names.processing_key}: a late copy") for line in lines), lines
    assert later.orphans == [] and later.errors == []
    failed = [k for k in buckets.input_keys() if "_failed-" in k and not k.endswith("-reasons.csv")]
    assert [_file(buckets, k) for k in failed] == [UPLOAD_1]


def test_two_manifests_of_one_tick_listing_one_image_are_both_processed(buckets, tmp_path):
    """Both runs used to convert the image side by side; the run whose upload was replaced failed its row,
    although the object was a correct COG of that source. The second run now runs after the first."""
    from cog_pipeline.examples import write_raster
    from cog_pipeline.pipeline import ScanOptions, scan

    write_raster(tmp_path / "a.tif", bands=1, size=64)
    buckets.put_file("a.tif", tmp_path / "a.tif")
    buckets.put_text("one_raw.csv", "a.tif,1\n")
    buckets.put_text("two_raw.csv", "a.tif,1\n")
    options = ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "w", progress=False, config=config_with(workers=2))
    lines: list[str] = []
    report = scan(options, echo=lines.append)
    assert len(report.reconciled) == 2 and report.errors == []
    assert any("shares outputs with another manifest of this tick" in line for line in lines), lines
    processed = sorted(k for k in buckets.input_keys() if "_processed-" in k)
    assert [k.split("_")[0] for k in processed] == ["one", "two"]
    assert all(_file(buckets, k) == "a.tif,1\n" for k in processed)
    assert not [k for k in buckets.input_keys() if "_failed-" in k]
