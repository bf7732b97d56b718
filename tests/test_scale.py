"""Manifests scale: the run's documents stay proportionate (summaries plus bounded samples), the result files
still list every row, and documents of the previous format are still read (issue 22.6, issue 20.2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import config_with
from cog_pipeline.examples import write_raster
from cog_pipeline.run.manifest import iter_raw_lines, split_raw_lines
from cog_pipeline.pipeline import ScanOptions, scan
from cog_pipeline.publishing.report import REPORT_NAME
from cog_pipeline.run.rundir import RUN_RECORD_VERSION, Decisions, Preflight, RunDir, list_run_dirs
from cog_pipeline.run.rundir.files import SAMPLE_ROWS
from cog_pipeline.storage.store import StoreConfig

DOCUMENTS = ("preflight.json", "reconcile.json", REPORT_NAME)


def _scan_big_manifest(tmp_path: Path, rows: int) -> RunDir:
    """One real scan (local engine, folder buckets) of a manifest of `rows` rows: two real images, one
    malformed row, one duplicate, and the rest keys whose objects are missing (they fail at preflight)."""
    root = tmp_path / "buckets"
    (root / "out").mkdir(parents=True)
    for i in range(2):
        write_raster(root / "in" / f"real/img{i}.tif", 3, size=64, seed=i)
    lines = ["real/img0.tif,3", "real/img1.tif,3", "not a row", "real/img0.tif,3"]
    lines += [f"m/{i:010d}.tif,3" for i in range(rows - len(lines))]
    (root / "in" / "big_raw.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = ScanOptions("in", "out", StoreConfig(local_root=root), tmp_path / "work", progress=False, config=config_with(workers=1))
    report = scan(options, echo=lambda _m: None)
    assert len(report.reconciled) == 1, report.errors
    (run,) = list_run_dirs(tmp_path / "work")
    return run


def _result_rows(run: RunDir, key: str | None) -> list[bytes]:
    return [] if key is None else (run.path / RunDir.RESULTS / key.rpartition("/")[2]).read_bytes().splitlines()


@pytest.mark.slow
def test_documents_stay_proportionate_while_result_files_list_every_row(tmp_path):
    sizes = {}
    for rows in (5_000, 50_000):
        run = _scan_big_manifest(tmp_path / str(rows), rows)
        decisions = Decisions.load(run.path)
        # Every row in exactly one result file, with a reason for each failed one.
        processed, failed = _result_rows(run, decisions.processed_key), _result_rows(run, decisions.failed_key)
        assert (len(processed), len(failed), decisions.rows) == (3, rows - 3, rows)
        assert sorted(processed) == [b"real/img0.tif,3", b"real/img0.tif,3", b"real/img1.tif,3"]
        assert len(_result_rows(run, decisions.reasons_key)) == len(failed) + 1  # a header line
        # The documents count every row but copy at most SAMPLE_ROWS of them.
        pre = Preflight.load(run.path)
        assert (pre.jobs, pre.failed, pre.duplicates) == (2, rows - 3, 1)
        assert len(pre.failed_sample) == len(decisions.failed_sample) == SAMPLE_ROWS
        assert sum(1 for _ in pre.iter_failed()) == rows - 3  # every pre-flight failure, in its line file
        page = (run.path / REPORT_NAME).read_text(encoding="utf-8")
        assert page.count('class="failed-row"') == SAMPLE_ROWS and f"{rows - 3 - SAMPLE_ROWS:,} more failed rows" in page
        assert page.count('class="image-row"') == 2
        sizes[rows] = {name: (run.path / name).stat().st_size for name in DOCUMENTS}
    for name in DOCUMENTS:  # ten times the rows, the same size (within the digits of larger counts)
        assert sizes[50_000][name] <= sizes[5_000][name] * 1.05 + 1024, (name, sizes)
        assert sizes[50_000][name] < 2_000_000, (name, sizes)


def test_a_version_2_run_json_is_read_and_its_pegasus_facts_grouped(tmp_path):
    flat = {"version": 2, "timestamp": "20250101-000000", "input_bucket": "in", "output_bucket": "out",
            "manifest_key": "a_raw.csv", "processing_key": "a_processing-20250101-000000.csv", "store": {},
            "state": "running", "engine": "pegasus", "submit_dir": "/s/1", "dagman_cluster": 42, "plan_attempts": 2,
            "staging_site": "storage", "jobs": 3, "mystery": 5}
    (tmp_path / "run.json").write_text(json.dumps(flat))
    run = RunDir(tmp_path)
    info = run.load()
    assert (info.pegasus.submit_dir, info.pegasus.dagman_cluster, info.pegasus.plan_attempts) == ("/s/1", 42, 2)
    assert (info.pegasus.staging_site, info.jobs, info.unknown) == ("storage", 3, {"mystery": 5})
    run.update(submit_error="gone")  # a Pegasus fact by its name lands in the sub-record
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["version"] == RUN_RECORD_VERSION == 3 and "submit_dir" not in saved and saved["mystery"] == 5
    assert saved["pegasus"]["submit_dir"] == "/s/1" and saved["pegasus"]["submit_error"] == "gone"


def test_version_1_preflight_and_reconcile_documents_are_read(tmp_path):
    (tmp_path / "preflight.json").write_text(json.dumps({
        "failed": [{"line": 4, "text": "b.tif,1", "reason": "input object does not exist: b.tif"},
                   {"line": 2, "text": "x", "reason": "malformed row: expected 'key,bands'"}],
        "duplicates": [{"line": 3, "text": "a.tif,1", "duplicate_of": 1}], "jobs": 1, "sizes": {"a.tif": 123}}))
    (tmp_path / "reconcile.json").write_text(json.dumps({
        "result": {"processed": 2, "failed": 2, "processed_key": "m_processed-T.csv", "failed_key": "m_failed-T.csv",
                   "reasons_key": "m_failed-T-reasons.csv"},
        "rows": [{"line": 1, "text": "a.tif,1", "status": "processed", "reason": "", "note": "WARNING BAND_MISMATCH"},
                 {"line": 2, "text": "x", "status": "failed", "reason": "malformed row", "note": ""},
                 {"line": 3, "text": "a.tif,1", "status": "processed", "reason": "", "note": "duplicate of line 1, converted once"},
                 {"line": 4, "text": "b.tif,1", "status": "failed", "reason": "input object does not exist", "note": ""}]}))
    pre = Preflight.load(tmp_path)
    assert (pre.jobs, pre.failed, pre.duplicates) == (1, 2, 1)
    assert list(pre.iter_failed()) == [(2, "malformed row: expected 'key,bands'"), (4, "input object does not exist: b.tif")]
    assert pre.sizes() == {"a.tif": 123}
    decisions = Decisions.load(tmp_path)
    assert (decisions.processed, decisions.failed, decisions.rows, decisions.images, decisions.duplicates) == (2, 2, 4, 1, 1)
    assert [r["line"] for r in decisions.failed_sample] == [2, 4]
    assert decisions.processed_sample == [{"line": 1, "key": "a.tif"}]
    assert decisions.noted_sample == [{"line": 1, "text": "a.tif,1", "note": "WARNING BAND_MISMATCH"}]


@pytest.mark.parametrize("data", [
    b"", b"a\n", b"a", b"a\r", b"a\r\n", b"a\r\r\nb", b"a\n\n", b"\xef\xbb\xbfa,1\r\nb,2\rc,3\nd,4",
    b"x\r\n\r\n\ry\r", b"\n\n", b"k\xff,1\nz\r\n", b"\xef\xbb\xbf", b"a\rb\rc",
])
def test_the_streamed_manifest_has_the_same_rows_as_the_whole_one(tmp_path, data):
    path = tmp_path / "m.csv"
    path.write_bytes(data)
    assert list(iter_raw_lines(path)) == split_raw_lines(data)


class _CountingStore:
    """A real folder store that counts its listings (everything else is the store's own)."""

    def __init__(self, store):
        self.store, self.listings = store, 0

    def list(self, prefix: str = ""):
        self.listings += 1
        return self.store.list(prefix)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.mark.slow
def test_publishing_takes_reconciles_outputs_and_lists_the_output_bucket_only_when_recovering(tmp_path):
    from cog_pipeline.publishing import publish
    from cog_pipeline.publishing.provenance import read_provenance_lines
    from cog_pipeline.publishing.reconcile import reconcile
    from cog_pipeline.storage.store import LocalStore

    run = _scan_big_manifest(tmp_path, 10)
    before = read_provenance_lines(run.path)
    assert sorted(ln["source"]["key"] for ln in before) == ["real/img0.tif", "real/img1.tif"]
    root = run.load().store_config.local_root
    result = reconcile(run)  # a repeat: its decisions, from reconcile.json (no outputs in memory)
    assert result.already_done and result.decisions.outputs is None
    (run.path / REPORT_NAME).unlink()
    (run.path / "provenance.jsonl").unlink()

    # Handed over by reconcile (as pipeline.finish does): the output bucket is not listed again.
    handed = Decisions.load(run.path)
    handed.outputs = publish.processed_outputs(run, run.load(), LocalStore(root, "out"), None, Preflight.load(run.path))
    out = _CountingStore(LocalStore(root, "out"))
    done = publish.after_reconcile(run, input_store=LocalStore(root, "in"), output_store=out, decisions=handed, echo=print)
    assert done["provenance"] == 2 and (run.path / REPORT_NAME).is_file() and out.listings == 0
    # A publish a crash interrupted has no decisions in memory: it decides again, with one listing.
    out = _CountingStore(LocalStore(root, "out"))
    done = publish.after_reconcile(run, input_store=LocalStore(root, "in"), output_store=out, echo=print)
    assert done["provenance"] == 2 and out.listings >= 1
    after = read_provenance_lines(run.path)
    assert [(ln["source"], ln["outputs"]) for ln in after] == [(ln["source"], ln["outputs"]) for ln in before]


def test_a_parse_without_the_duplicate_index_yields_repeats_as_rows():
    from cog_pipeline.run.manifest import DuplicateRow, ManifestRow, RejectedRow, iter_parsed

    lines = [b"a.tif,1", b"a.tif,1", b"a.TIF,1", b"bad"]
    assert [type(p) for p in iter_parsed(lines)] == [ManifestRow, DuplicateRow, RejectedRow, RejectedRow]
    assert [type(p) for p in iter_parsed(lines, duplicates=False)] == [ManifestRow, ManifestRow, ManifestRow, RejectedRow]
