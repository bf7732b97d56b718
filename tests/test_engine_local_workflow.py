"""The local engine's fast reader of workflow.yml / replicas.yml gives exactly what YAML gives (issue 8.13)."""

from __future__ import annotations

from pathlib import Path

import yaml

from cog_pipeline.run.claim import claim_one, look
from cog_pipeline.engines.local_workflow import read_document, read_fast
from cog_pipeline.examples import write_raster
from cog_pipeline.pipeline import ScanOptions, prepare
from cog_pipeline.storage.store import StoreConfig, open_store

KEYS = ["a b.tif", "a%20b.tif", "Weird/hash#tag.tif", "Weird/q?x.tif", "o'brien \"n\".tif", "Comtés/été ñ.tif",
        "line\u2028sep.tif", "emoji \U0001F600.tif", "a,b/c.tif", "- dash.tif", "key: colon.tif"]


def _generated_run(tmp_path: Path):
    root = tmp_path / "buckets"
    (root / "out").mkdir(parents=True)
    for key in KEYS:
        write_raster(root / "in" / key, 1, size=8)
    (root / "in" / "m_raw.csv").write_text("".join(f"{k},1\n" for k in KEYS), encoding="utf-8")
    config = StoreConfig(local_root=root)
    store = open_store("in", config)
    opts = ScanOptions("in", "out", config, tmp_path / "work", progress=False)
    (pending,) = look(store, "*raw.csv").pending
    claim = claim_one(store, pending.info, work_dir=opts.work_dir, output_bucket="out", store_config=config)
    prepare(claim.run_dir, opts, store, lambda line: None)
    return claim.run_dir


def test_fast_reader_agrees_with_yaml_on_generated_files(tmp_path):
    run = _generated_run(tmp_path)
    for name in ("workflow.yml", "replicas.yml"):
        path = run.file(name)
        fast = read_fast(path)
        assert fast is not None, f"{name} is not in the generator's line format any more"
        assert fast == yaml.safe_load(path.read_text(encoding="utf-8"))
    jobs = read_fast(run.file("workflow.yml"))["jobs"]
    assert sorted(job["metadata"]["key"] for job in jobs) == sorted(KEYS)


def test_other_yaml_falls_back_to_the_yaml_parser(tmp_path):
    run = _generated_run(tmp_path)
    doc = yaml.safe_load(run.file("workflow.yml").read_text(encoding="utf-8"))
    block = tmp_path / "block.yml"
    block.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    assert read_fast(block) is None
    assert read_document(block) == doc
