"""cog_pipeline/outputs.py is the one declaration of what a job writes: an output added there (and nowhere else)
is named, declared, staged, required, recorded and published by every step.

The added output here is a PNG beside the JPEG; the converter is not asked to write it except by the fake one of
the end-to-end test (the real converter writes what its positional arguments name, transformations/cli.py).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import yaml
from cog_pipeline.pegasus import workflow_gen as wg
from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
from cog_pipeline.replicas.catalog import job_lfns

from cog_pipeline import outputs
from cog_pipeline.outputs import COG, PREVIEW, Output
from cog_pipeline.publishing.provenance import read_provenance_lines, record_provenance
from cog_pipeline.publishing.reconcile import reconcile
from cog_pipeline.run.claim import claim_one
from cog_pipeline.run.manifest import parse_manifest
from cog_pipeline.run.rundir import RunDir
from cog_pipeline.storage.media import object_headers
from cog_pipeline.storage.store import StoreConfig, open_store
from tests.conftest import config_with
from tests.oracles import build_api_workflow, comparable_workflow

PNG = Output("png", "PNG overview", ".png", ".png", "image/png", "overview", ("overview",))


@pytest.fixture()
def with_png(monkeypatch: pytest.MonkeyPatch) -> Output:
    """Every job also writes a PNG: one entry added to the declaration, nothing else changed."""
    monkeypatch.setattr(outputs, "OUTPUTS", (*outputs.OUTPUTS, PNG))
    return PNG


def test_the_declaration_is_the_converters_positional_arguments() -> None:
    """The converter (which cannot import the declaration) takes the input, then one file per declared output,
    in the declared order: generate_cog IN OUT.tif OUT.jpg."""
    from cog_pipeline.transformations.cli import _parser

    positional = [action.dest for action in _parser()._actions if not action.option_strings]
    assert positional[0] == "input" and len(positional) == 1 + len(outputs.OUTPUTS)
    assert [dest.rpartition("_")[2] for dest in positional[1:]] == [kind.lfn_suffix.lstrip(".") for kind in outputs.OUTPUTS]


def test_the_declared_outputs_keep_their_names() -> None:
    assert outputs.OUTPUTS == (COG, PREVIEW)
    assert job_lfns("ID0000001") == ("ID0000001.in.tif", "ID0000001.tif", "ID0000001.jpg")
    assert [kind.key_of("a/b.TIF") for kind in outputs.OUTPUTS] == ["a/b.TIF", "a/b.jpg"]


# ---------------------------------------------------------------------------------------------------------------
# One entry more: every step follows


def test_an_added_output_is_named_declared_and_placed_by_the_workflow(with_png, tmp_path: Path) -> None:
    assert job_lfns("ID0000001") == ("ID0000001.in.tif", "ID0000001.tif", "ID0000001.jpg", "ID0000001.png")
    root = tmp_path / "buckets"
    keys = ["a/one.tif", "b/Two 2.TIFF"]
    for key in keys:
        (root / "in" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "in" / key).write_bytes(b"tif")
    (root / "out").mkdir()
    run = _run_dir(tmp_path, StoreConfig(local_root=root), "".join(f"{k},1\n" for k in keys))
    generate(run, open_store("in", run.load().store_config), WorkflowSettings(converter=Path("/bin/true")))

    jobs = yaml.safe_load(run.file(RunDir.WORKFLOW).read_text(encoding="utf-8"))["jobs"]
    for job in jobs:
        lfns = [f"{job['id']}{suffix}" for suffix in (".in.tif", ".tif", ".jpg", ".png")]
        assert job["arguments"][:6] == ["--empty-outputs-on-failure", *lfns, "--bands"]
        assert sorted(u["lfn"] for u in job["uses"] if u["type"] == "output") == sorted(lfns[1:])
        assert all(u.get("stageOut") is True for u in job["uses"] if u["type"] == "output")
    placed = {e["lfn"]: e["pfns"][0]["pfn"] for e in yaml.safe_load(run.file(RunDir.OUTPUTS).read_text(encoding="utf-8"))["replicas"]}
    assert placed["ID0000001.png"] == (root / "out" / "a/one.png").resolve().as_uri()
    assert placed["ID0000002.png"] == (root / "out" / "b/Two 2.png").resolve().as_uri()
    assert len(placed) == 3 * len(keys)


def test_with_an_added_output_the_fast_writer_still_equals_pegasus_api(with_png, tmp_path: Path) -> None:
    rows = parse_manifest("a.tif,1\nb c.tif,3\n").rows
    settings = WorkflowSettings(config_with(retries=2), converter=Path("/bin/true"))
    fast, api = tmp_path / "fast.yml", tmp_path / "api.yml"
    wg.write_workflow(fast, rows, settings, "w", "true", {"run": "x"})
    build_api_workflow(rows, settings, "w", "true", {"run": "x"}).write(str(api))
    assert comparable_workflow(fast) == comparable_workflow(api)
    assert any(u["lfn"] == "ID0000002.png" for u in comparable_workflow(fast)["jobs"][1]["uses"])


def test_reconcile_requires_an_added_output_and_provenance_records_it(with_png, buckets, tmp_path: Path) -> None:
    buckets.put_text("batch_raw.csv", "A/one.tif,1\nA/two.tif,3\n")
    claim = claim_one(buckets.input, buckets.input.head("batch_raw.csv"), work_dir=tmp_path / "work",
                      output_bucket=buckets.output_bucket, store_config=buckets.config)
    assert claim is not None
    for key in ("A/one.tif", "A/one.jpg", "A/one.png", "A/two.tif", "A/two.jpg"):  # A/two.png is missing
        buckets.output.put_bytes(key, b"x")
    result = reconcile(claim.run_dir)
    assert (result.processed, result.failed) == (1, 1)
    reasons = list(csv.reader(buckets.input.read_bytes(result.reasons_key)[0].decode().splitlines()))
    assert reasons[1] == ["2", "A/two.tif,3", "missing from the output bucket: A/two.png; no job record (the job did not run or did not finish)"]
    (done,) = result.decisions.outputs
    assert list(done.objects) == ["cog", "preview", "png"]
    assert record_provenance(claim.run_dir.path, processed=result.decisions.outputs, sources={},
                             source_bucket=buckets.input_bucket, output_bucket=buckets.output_bucket) == 1
    (line,) = read_provenance_lines(claim.run_dir.path)
    assert [o["key"] for o in line["outputs"]] == ["A/one.tif", "A/one.jpg", "A/one.png"]


def test_an_added_output_is_uploaded_with_its_declared_type(with_png) -> None:
    assert object_headers("a/b.png") == {"ContentType": "image/png", "CacheControl": "public, max-age=86400"}
    assert object_headers("a/b.jpg")["ContentType"] == "image/jpeg"


def test_an_added_output_is_an_asset_of_the_stac_item(with_png, shared_testdata: Path, tmp_path: Path) -> None:
    pytest.importorskip("rio_stac", reason="the 'stac' extra (pystac, rio-stac) is not installed")
    from cog_pipeline.publishing.provenance import embed_with_copy
    from cog_pipeline.publishing.stac import item_key, write_stac

    (tmp_path / "out").mkdir()
    store = open_store("out", StoreConfig(local_root=tmp_path))
    embed_with_copy(shared_testdata / "rasterio/RGB.byte.tif", tmp_path / "out" / "a.tif", {})
    write_stac(store, [{"cog": "a.tif", "preview": "a.jpg", "png": "a.png"}], "m_raw.csv")
    assets = json.loads(store.read_bytes(item_key("a.tif"))[0])["assets"]
    assert list(assets) == ["data", "thumbnail", "overview"]
    assert (assets["overview"]["type"], assets["overview"]["roles"]) == ("image/png", ["overview"])
    assert assets["overview"]["href"] == store.url("a.png")


def test_the_manifest_refuses_two_images_whose_added_output_would_collide(monkeypatch) -> None:
    """Without the JPEG, `a.tif` and `a.TIF` still meet, at the PNG; beside the JPEG, an output named
    `<stem>_small.jpg` meets another image's preview: `a.tif`'s small is `a_small.tif`'s preview."""
    monkeypatch.setattr(outputs, "OUTPUTS", (COG, PNG))
    assert [(r.line, r.reason) for r in parse_manifest("a.tif,1\na.TIF,1\na.tif,2\n").rejected] == [
        (2, "bad key: its PNG overview a.png would overwrite line 1's; rename one of the two images")]
    small = Output("small", "small preview", "_small.jpg", ".small.jpg", "image/jpeg", "small", ("overview",))
    monkeypatch.setattr(outputs, "OUTPUTS", (COG, PREVIEW, small))
    for manifest, line, reason in [
        ("a.tif,1\na_small.tif,1\n", 2, "its preview a_small.jpg would overwrite line 1's small preview"),
        ("a_small.tif,1\na.tif,1\n", 2, "its small preview a_small.jpg would overwrite line 1's preview"),
    ]:
        parsed = parse_manifest(manifest)
        assert [(r.line, r.reason) for r in parsed.rejected] == [(line, f"bad key: {reason}; rename one of the two images")]
        assert len(parsed.rows) == 1


def test_the_collision_check_agrees_with_comparing_every_output_of_every_row(monkeypatch) -> None:
    """Random declarations (suffixes that meet in every way: the same stem, one suffix ending another, a
    derived name that is another image's key) and random manifests: the index's answer is the brute force one."""
    rng = random.Random(20)
    suffixes = [".jpg", "_s.jpg", ".s.jpg", "s.jpg", ".png", "_s.tif", ".tif", "f", ""]
    stems = ["a", "a_s", "a.s", "as", "a_s_s", "a.tif", "a_", "b"]
    checked = collisions = 0
    while checked < 1500:
        kinds = ([COG] if rng.random() < 0.9 else []) + [
            Output(f"k{i}", f"k{i}", s, f".k{i}", "x/y", f"k{i}", ()) for i, s in enumerate(rng.sample(suffixes, rng.randint(0, 3)))]
        keys = [rng.choice(stems) + rng.choice([".tif", ".TIF", ".tiff", ".Tiff"]) for _ in range(rng.randint(1, 7))]
        if not kinds or any(len({k.key_of(key) for k in kinds}) < len(kinds) for key in keys):
            continue  # a declaration whose outputs meet within one image is not one to check
        monkeypatch.setattr(outputs, "OUTPUTS", tuple(kinds))
        parsed = parse_manifest("".join(f"{key},1\n" for key in keys))
        got = {r.line: "ok" for r in parsed.rows} | {r.line: "refused" for r in parsed.rejected}
        got |= {r.line: f"repeats {first}" for r, first in parsed.duplicates}
        assert [got[line] for line in range(1, len(keys) + 1)] == _brute_force(keys, kinds), (keys, [k.suffix for k in kinds])
        checked += 1
        collisions += "refused" in got.values()
    assert collisions > 300


def _brute_force(keys: list[str], kinds: list[Output]) -> list[str]:
    accepted: dict[str, int] = {}
    written: set[str] = set()
    answers = []
    for line, key in enumerate(keys, 1):
        mine = {kind.key_of(key) for kind in kinds}
        if key in accepted:
            answers.append(f"repeats {accepted[key]}")
        elif mine & written:
            answers.append("refused")
        else:
            accepted[key] = line
            written |= mine
            answers.append("ok")
    return answers


# ---------------------------------------------------------------------------------------------------------------
# The whole flow, with a converter that writes every file its arguments name


FAKE_CONVERTER = """#!/usr/bin/env python3
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("files", nargs="+")
parser.add_argument("--bands")
parser.add_argument("--metadata-b64")
parser.add_argument("--empty-outputs-on-failure", action="store_true")
source, *outputs = parser.parse_args().files
data = open(source, "rb").read()
for i, path in enumerate(outputs):
    open(path, "wb").write(b"output %d of " % i + data)
"""


@pytest.mark.parametrize("buckets", ["folder"], indirect=True)
def test_a_scan_writes_and_reconciles_an_added_output_with_no_other_change(with_png, buckets, tmp_path: Path, monkeypatch) -> None:
    from cog_pipeline.pipeline import ScanOptions, scan

    converter = tmp_path / "fake_generate_cog"
    converter.write_text(FAKE_CONVERTER)
    converter.chmod(0o755)
    monkeypatch.setattr("cog_pipeline.transformations.build.cached_zipapp", lambda: converter)
    for key in ("A/one.tif", "A/Two 2.TIF"):
        buckets.input.put_bytes(key, key.encode())
    buckets.put_text("x_raw.csv", "A/one.tif,1\nA/Two 2.TIF,3\n")
    scan(ScanOptions(input_bucket=buckets.input_bucket, output_bucket=buckets.output_bucket, store=buckets.config,
                     work_dir=tmp_path / "work", progress=False, config=config_with(workers=1)))
    processed = [k for k in buckets.input_keys() if "processed-" in k]
    assert len(processed) == 1 and buckets.input.read_bytes(processed[0])[0] == b"A/one.tif,1\nA/Two 2.TIF,3\n"
    assert buckets.output.read_bytes("A/Two 2.png")[0] == b"output 2 of A/Two 2.TIF"
    assert sorted(buckets.output_keys()) == ["A/Two 2.TIF", "A/Two 2.jpg", "A/Two 2.png", "A/one.jpg", "A/one.png", "A/one.tif"]
    (run,) = (tmp_path / "work").glob("workflow-run-*")
    assert sorted(len(line["outputs"]) for line in read_provenance_lines(run)) == [3, 3]


def _run_dir(tmp_path: Path, config: StoreConfig, manifest: str) -> RunDir:
    from cog_pipeline.run.rundir import CLAIMED, RunInfo

    run = RunDir(tmp_path / "workflow-run-20240102-030405")
    run.path.mkdir(parents=True)
    run.file(RunDir.MANIFEST).write_text(manifest, encoding="utf-8")
    run.save(RunInfo(timestamp="20240102-030405", input_bucket="in", output_bucket="out", manifest_key="x_raw.csv",
                     processing_key="x_processing-20240102-030405.csv", store=config.to_json(), state=CLAIMED))
    return run
