"""The whole flow on one machine: claim -> generate -> local engine (real converter, real GDAL) -> reconcile."""

from __future__ import annotations

import re

import os
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

from cog_pipeline.examples import EXAMPLE_BAD_ROWS, EXAMPLE_IMAGES, make_example_bucket, write_raster
from cog_pipeline.pipeline import ScanOptions, scan
from cog_pipeline.run.rundir import RECONCILED, Decisions, list_run_dirs
from tests.conftest import config_with


def options(buckets, tmp_path: Path) -> ScanOptions:
    return ScanOptions(
        input_bucket=buckets.input_bucket,
        output_bucket=buckets.output_bucket,
        store=buckets.config,
        work_dir=tmp_path / "work",
        progress=False,
        config=config_with(workers=2),
    )


def result_rows(buckets, kind: str) -> list[str]:
    keys = [k for k in buckets.input_keys() if f"{kind}-" in k and not k.endswith("-reasons.csv")]
    rows: list[str] = []
    for key in keys:
        data, _ = buckets.input.read_bytes(key)
        rows.extend(data.decode().splitlines())
    return rows


def reasons(buckets) -> str:
    keys = [k for k in buckets.input_keys() if k.endswith("-reasons.csv")]
    return "\n".join(buckets.input.read_bytes(k)[0].decode() for k in keys)


def assert_valid_outputs(buckets, key: str, tmp_path: Path, bands: int) -> None:
    from rio_cogeo.cogeo import cog_validate

    local = tmp_path / "check" / key
    buckets.output.download(key, local)
    buckets.output.download(key[:-4] + ".jpg", local.with_suffix(".jpg"))
    valid, errors, _ = cog_validate(str(local), quiet=True)
    assert valid, errors
    with rasterio.open(local) as cog:
        assert cog.count == bands
    with rasterio.open(local.with_suffix(".jpg")) as jpg:
        assert jpg.driver == "JPEG" and jpg.count in (1, 3)


@pytest.mark.slow
def test_seed_manifest_end_to_end(buckets, tmp_path, shared_testdata):
    """The original tool's sample manifest, its 1-band image placed at every key."""
    manifest = (shared_testdata / "seed" / "test_raw.csv").read_text()
    keys = [line.split(",")[0] for line in manifest.splitlines()]
    for key in keys:
        buckets.put_file(key, shared_testdata / "seed" / "1band.tif")
    buckets.put_text("test_raw.csv", manifest)
    report = scan(options(buckets, tmp_path))
    assert len(report.reconciled) == 1
    assert sorted(result_rows(buckets, "processed")) == sorted(manifest.splitlines())
    assert result_rows(buckets, "failed") == []
    assert not any("processing" in k or k == "test_raw.csv" for k in buckets.input_keys())
    for key in keys:
        assert_valid_outputs(buckets, key, tmp_path, bands=1)
    # The manifest says 4 bands for a 1-band file: converted per the file, and the mismatch is on record.
    (run,) = list_run_dirs(tmp_path / "work")
    notes = [row["note"] for row in Decisions.load(run.path).noted_sample if "4band" in row["text"]]
    assert notes and all("band" in n.lower() for n in notes)


@pytest.mark.slow
def test_generated_example_data_end_to_end(buckets, tmp_path):
    src = tmp_path / "example"
    make_example_bucket(src, size=256)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        buckets.put_file(path.relative_to(src).as_posix(), path)
    scan(options(buckets, tmp_path))
    assert sorted(result_rows(buckets, "processed")) == sorted(f"{k},{b}" for k, b in EXAMPLE_IMAGES)
    assert sorted(result_rows(buckets, "failed")) == sorted(EXAMPLE_BAD_ROWS)
    why = reasons(buckets)
    assert "not-uploaded.tif" in why and "does not exist" in why.lower() or "missing" in why.lower()
    assert "not an integer" in why
    for key, bands in EXAMPLE_IMAGES:
        assert_valid_outputs(buckets, key, tmp_path, bands=bands)


@pytest.mark.slow
def test_bad_images_fail_with_their_reason_and_never_stop_the_others(buckets, tmp_path, shared_testdata):
    good = tmp_path / "good.tif"
    write_raster(good, 3, size=128)
    buckets.put_file("ok/good.tif", good)
    buckets.put_file("bad/corrupt.tif", shared_testdata / "rasterio" / "corrupt.tif")
    buckets.put_text("bad/text.tif", "this is not a tiff\n")
    buckets.input.put_bytes("bad/empty.tif", b"")
    truncated = good.read_bytes()[:2000]
    buckets.input.put_bytes("bad/truncated.tif", truncated)
    rows = ["ok/good.tif,3", "bad/corrupt.tif,3", "bad/text.tif,1", "bad/empty.tif,1", "bad/truncated.tif,3", "bad/absent.tif,1"]
    buckets.put_text("mixed_raw.csv", "\n".join(rows))
    scan(options(buckets, tmp_path))
    assert result_rows(buckets, "processed") == ["ok/good.tif,3"]
    assert sorted(result_rows(buckets, "failed")) == sorted(rows[1:])
    why = reasons(buckets)
    for key in ("bad/text.tif", "bad/empty.tif", "bad/truncated.tif"):
        line = next(line for line in why.splitlines() if key in line)
        assert "INPUT_UNREADABLE" in line, line
    assert "bad/corrupt.tif" in why
    assert not any(k.startswith("bad/") for k in buckets.output_keys()), "no partial outputs for failed rows"


@pytest.mark.slow
def test_awkward_keys_survive_the_whole_flow(buckets, tmp_path):
    image = tmp_path / "img.tif"
    write_raster(image, 1, size=96)
    keys = ["Counties/Saint Croix/o'brien \"north\"/photo 1.tif", "Comtés/Île-de-France/été ñ.tif", "a,b/c.tif"]
    for key in keys:
        buckets.put_file(key, image)
    buckets.put_text("awkward_raw.csv", "\n".join(f"{k},1" for k in keys))
    scan(options(buckets, tmp_path))
    assert sorted(result_rows(buckets, "processed")) == sorted(f"{k},1" for k in keys)
    outputs = set(buckets.output_keys())
    for key in keys:
        assert key in outputs and key[:-4] + ".jpg" in outputs


@pytest.mark.slow
def test_concurrent_scans_claim_once(tmp_path):
    """Two scans started at once against one folder bucket and one work dir: one claim, one conversion."""
    root = tmp_path / "buckets"
    (root / "out").mkdir(parents=True)
    make_example_bucket(root / "in", size=128)
    cmd = [
        sys.executable, "-m", "cog_pipeline", "scan", "--local-root", str(root), "--input-bucket", "in",
        "--output-bucket", "out", "--work-dir", str(tmp_path / "work"), "--quiet", "--workers", "1",
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    runs = list_run_dirs(tmp_path / "work")
    assert len(runs) == 1 and runs[0].load().state == RECONCILED
    claims = sum(out.count("claimed example_raw.csv") for out in outs)
    assert claims == 1, outs
    processed = list((root / "in").glob("example_processed-*.csv"))
    assert len(processed) == 1


class Crash(BaseException):
    """The process dies here (as SystemExit or a signal would end it): not an error a tick reports and survives."""


@pytest.mark.parametrize("where", ["generate", "run_workflow", "reconcile"])
@pytest.mark.slow
def test_crash_in_the_middle_of_a_run_is_carried_on_by_the_next_scan(tmp_path, monkeypatch, where):
    from cog_pipeline.storage.store import StoreConfig
    from tests.conftest import Buckets

    root = tmp_path / "buckets"
    (root / "out").mkdir(parents=True)
    make_example_bucket(root / "in", size=128)
    buckets = Buckets("folder", StoreConfig(local_root=root), "in", "out")
    opts = options(buckets, tmp_path)

    import cog_pipeline.engines.local as engine_local
    import cog_pipeline.pegasus.workflow_gen as workflow_gen
    import cog_pipeline.pipeline as pipeline_mod

    if where == "generate":
        monkeypatch.setattr(workflow_gen, "generate", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    elif where == "run_workflow":
        # Jobs run in pool workers; crash the driver once two jobs are recorded.
        real_execute = engine_local.execute

        def execute_then_crash(todo, settings, on_final, **kw):
            real_execute(todo[:2], settings, on_final, **kw)
            raise Crash()

        monkeypatch.setattr(engine_local, "execute", execute_then_crash)
    else:
        monkeypatch.setattr(engine_local, "run_end_hook", lambda cmd, run_dir, finish=None: 0)  # hooks do nothing
        monkeypatch.setattr(pipeline_mod, "reconcile", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        scan(opts)
    (run,) = list_run_dirs(tmp_path / "work")
    assert run.load().state != RECONCILED
    assert any("processing" in k for k in buckets.input_keys()), "the claim survives the crash"
    before = {p.name: p.stat().st_mtime_ns for p in (run.path / "jobs").glob("*.json")} if (run.path / "jobs").is_dir() else {}
    monkeypatch.undo()

    report = scan(opts)
    assert [r.path for r in report.resumed] == [run.path]
    assert run.load().state == RECONCILED
    assert sorted(result_rows(buckets, "processed")) == sorted(f"{k},{b}" for k, b in EXAMPLE_IMAGES)
    assert sorted(result_rows(buckets, "failed")) == sorted(EXAMPLE_BAD_ROWS)
    after = {p.name: p.stat().st_mtime_ns for p in (run.path / "jobs").glob("*.json")}
    assert all(after[name] == mtime for name, mtime in before.items()), "finished jobs are not redone"
    assert len(list_run_dirs(tmp_path / "work")) == 1
    # And a third tick has nothing left to do.
    report = scan(opts)
    assert not report.claimed and not report.resumed


@pytest.mark.slow
def test_dry_run_lists_and_changes_nothing(tmp_path):
    root = tmp_path / "buckets"
    (root / "out").mkdir(parents=True)
    make_example_bucket(root / "in", size=64)
    before = sorted(p.name for p in (root / "in").iterdir())
    out = subprocess.run(
        [sys.executable, "-m", "cog_pipeline", "scan", "--local-root", str(root), "--input-bucket", "in",
         "--output-bucket", "out", "--work-dir", str(tmp_path / "work"), "--dry-run"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "would claim example_raw.csv" in out
    assert sorted(p.name for p in (root / "in").iterdir()) == before
    assert list_run_dirs(tmp_path / "work") == []


@pytest.mark.slow
def test_cli_refuses_half_a_key_pair(tmp_path):
    key = tmp_path / "access"
    key.write_text("AKIA-SECRET-VALUE\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cog_pipeline", "scan", "--input-bucket", "in", "--output-bucket", "out", "-a", str(key)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "-s" in proc.stderr and "AKIA-SECRET-VALUE" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_cli_reports_a_missing_bucket_in_one_line(tmp_path):
    (tmp_path / "buckets").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "cog_pipeline", "scan", "--local-root", str(tmp_path / "buckets"), "--input-bucket",
         "nope", "--output-bucket", "out", "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_demo_command_runs_the_pipeline(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cog_pipeline", "demo", "--dir", str(tmp_path / "demo"), "--size", "128", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "5 processed, 2 failed" in proc.stdout
    assert "Counties/WI/Wood/4band.jpg" in proc.stdout
    assert "example_failed-" in proc.stdout


def test_a_run_owned_by_a_dead_process_is_carried_on(tmp_path):
    from cog_pipeline.run import lease
    from cog_pipeline.pipeline import run_is_active
    from cog_pipeline.run.rundir import CLAIMED, RunDir, RunInfo

    run = RunDir(tmp_path / "workflow-run-20260101-000000")
    run.save(RunInfo("20260101-000000", "in", "out", "m_raw.csv", "m_processing-20260101-000000.csv", {}, CLAIMED))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = lease.mine()
    run.set_state(CLAIMED, owner={**mine.to_json(), "pid": dead.pid, "started": "1"})
    assert not run_is_active(run)
    run.set_state(CLAIMED, owner=mine.to_json())
    assert run_is_active(run)


@pytest.mark.slow
def test_an_empty_manifest_is_claimed_and_answered(buckets, tmp_path):
    buckets.put_text("empty_raw.csv", "\r\n  \n")
    report = scan(options(buckets, tmp_path))
    assert len(report.reconciled) == 1
    keys = buckets.input_keys()
    assert [k for k in keys if k.startswith("empty_processed-")] and not [k for k in keys if "failed" in k]
    assert not any("processing" in k or k == "empty_raw.csv" for k in keys)


@pytest.mark.slow
def test_a_missing_output_bucket_is_reported_before_anything_is_claimed(tmp_path):
    root = tmp_path / "buckets"
    make_example_bucket(root / "in", size=64)
    proc = subprocess.run(
        [sys.executable, "-m", "cog_pipeline", "scan", "--local-root", str(root), "--input-bucket", "in",
         "--output-bucket", "missing-out", "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1 and "missing-out" in proc.stderr and "does not exist" in proc.stderr
    assert (root / "in" / "example_raw.csv").is_file()
    assert list_run_dirs(tmp_path / "work") == []


def _s3_cli_env(tmp_path: Path) -> dict[str, str]:
    """An environment where the standard AWS chain finds nothing: only -a/-s can authenticate."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    return env


@pytest.mark.parametrize("endpoint_form", ["http://{host}", "http://{host}/"])
@pytest.mark.slow
def test_cli_scan_on_s3_with_endpoint_and_key_files(s3_server, bucket_name, tmp_path, endpoint_form):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=f"{bucket_name}-in")
    client.create_bucket(Bucket=f"{bucket_name}-out")
    src = tmp_path / "example"
    make_example_bucket(src, size=64)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        client.upload_file(str(path), f"{bucket_name}-in", path.relative_to(src).as_posix())
    access, secret = tmp_path / "access", tmp_path / "secret"
    access.write_text("CLI-ACCESS-KEY-123\n")
    secret.write_text("CLI-SECRET-KEY-456\n")
    endpoint = endpoint_form.format(host=s3_server.removeprefix("http://"))
    proc = subprocess.run(
        [sys.executable, "-m", "cog_pipeline", "scan", "-e", endpoint, "-a", str(access), "-s", str(secret),
         "--input-bucket", f"{bucket_name}-in", "--output-bucket", f"{bucket_name}-out",
         "--work-dir", str(tmp_path / "work"), "--quiet"],
        capture_output=True, text=True, env=_s3_cli_env(tmp_path), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=f"{bucket_name}-in")["Contents"]]
    assert any(k.startswith("example_processed-") for k in keys)
    outputs = {o["Key"] for o in client.list_objects_v2(Bucket=f"{bucket_name}-out")["Contents"]}
    assert {f"{k[:-4]}.jpg" for k, _ in EXAMPLE_IMAGES} <= outputs
    # Key material appears in no output and no file of the run (only the key files hold it); the local
    # engine needs no credentials.conf (the Pegasus engine's is tested in test_engine_pegasus).
    assert "CLI-SECRET-KEY-456" not in proc.stdout + proc.stderr
    assert not list((tmp_path / "work").rglob("credentials.conf"))
    for path in (tmp_path / "work").rglob("*"):
        if path.is_file():
            assert b"CLI-SECRET-KEY-456" not in path.read_bytes(), path


@pytest.mark.slow
def test_cli_scan_on_s3_without_credentials_fails_clearly(s3_server, bucket_name, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cog_pipeline", "scan", "-e", s3_server, "--input-bucket", "x-in",
         "--output-bucket", "x-out", "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, env=_s3_cli_env(tmp_path), timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "credentials" in proc.stderr.lower()


@pytest.mark.slow
@pytest.mark.parametrize("error", ["StoreError: s3://in: S3 error SlowDown",
                                   # issue 22.4: a bug met by one manifest's input used to end the tick in a traceback
                                   "ValueError: Exceeds the limit (4300 digits) for integer string conversion"])
def test_one_runs_error_does_not_hold_up_the_others(tmp_path, monkeypatch, error):
    from cog_pipeline.storage.store import StoreConfig, StoreError
    from tests.conftest import Buckets

    root = tmp_path / "buckets"
    (root / "out").mkdir(parents=True)
    make_example_bucket(root / "in", manifest_name="a_raw.csv", size=64)
    (root / "in" / "b_raw.csv").write_text((root / "in" / "a_raw.csv").read_text())
    buckets = Buckets("folder", StoreConfig(local_root=root), "in", "out")
    opts = options(buckets, tmp_path)

    import cog_pipeline.pegasus.workflow_gen as workflow_gen

    real_generate = workflow_gen.generate

    def generate_fails_for_a(run_dir, *args, **kwargs):
        if run_dir.load().manifest_key == "a_raw.csv":
            kind, _, message = error.partition(": ")
            raise {"StoreError": StoreError, "ValueError": ValueError}[kind](message)
        return real_generate(run_dir, *args, **kwargs)

    monkeypatch.setattr(workflow_gen, "generate", generate_fails_for_a)
    report = scan(opts)
    assert len(report.errors) == 1 and error.partition(": ")[2] in report.errors[0]
    assert [r.load().manifest_key for r in report.reconciled] == ["b_raw.csv"]
    monkeypatch.undo()
    report = scan(opts)
    assert [r.load().manifest_key for r in report.reconciled] == ["a_raw.csv"] and not report.errors
    assert len(list((root / "in").glob("*_processed-*.csv"))) == 2


def _workflow_text(work: Path) -> str:
    (run,) = list_run_dirs(work)
    lines = run.file("workflow.yml").read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.startswith("x-pegasus:"))  # createdOn/createdBy only
    # Each job's provenance names its own input version (ETag, size) and time: the one per-run datum.
    text = re.sub(r'("--metadata-b64", *)"[A-Za-z0-9_-]+"', r'\1"META"', text)
    return text.replace(str(run.path.resolve()), "RUN").replace(run.timestamp, "TS")


@pytest.mark.slow
def test_workflow_yml_is_the_same_whichever_engine_runs_it(tmp_path):
    """Both engines end with `cog-pipeline finish RUN_DIR`; a pegasus run claimed while Pegasus could run fails to
    plan where it cannot (no Pegasus here) and a tick with --engine local finishes that very run (issue 8.13: the
    hint it prints is true)."""
    from cog_pipeline.run.claim import claim_one
    from cog_pipeline.engines.pegasus.condor import PegasusUnavailable
    from cog_pipeline.pipeline import carry_on
    from cog_pipeline.storage.store import StoreConfig, open_store

    texts = {}
    for engine in ("pegasus", "local"):
        root = tmp_path / engine / "buckets"
        write_raster(root / "in" / "a.tif", 1, size=32)
        (root / "in" / "m_raw.csv").write_text("a.tif,1\n")
        (root / "out").mkdir()
        opts = ScanOptions("in", "out", StoreConfig(local_root=root), tmp_path / engine / "work", engine=engine, progress=False, config=config_with(workers=1))
        if engine == "pegasus":
            with pytest.raises(PegasusUnavailable, match="nothing was claimed"):  # a pegasus scan checks first
                scan(opts, echo=lambda line: None)
            store = open_store("in", opts.store)
            claim = claim_one(store, next(o for o in store.list("") if o.key == "m_raw.csv"), work_dir=opts.work_dir,
                              output_bucket="out", store_config=opts.store, engine="pegasus")
            with pytest.raises(PegasusUnavailable, match="scan --engine local"):
                carry_on(claim.run_dir, opts, store, echo=lambda line: None)
        else:
            report = scan(opts, echo=lambda line: None)
        texts[engine] = _workflow_text(opts.work_dir)
        if engine == "pegasus":
            opts.engine = "local"
            report = scan(opts, echo=lambda line: None)
            assert len(report.reconciled) == 1 and list(root.glob("in/m_processed-*.csv"))
    assert texts["pegasus"] == texts["local"] and "-m cog_pipeline finish RUN" in texts["local"]


@pytest.mark.slow
def test_tif_and_tiff_keys_in_any_case_are_converted_and_their_jpeg_named_without_the_extension(buckets, tmp_path, shared_testdata):
    """USGS/Landsat products end in `.TIF`: converted, the JPEG at the key minus its extension, reconciled processed."""
    keys = ["Landsat/LC08 B4.TIF", "a/b%20c.tiff", "x.TiF"]
    for key in keys:
        buckets.put_file(key, shared_testdata / "seed" / "1band.tif")
    manifest = "".join(f"{k},1\n" for k in keys)
    buckets.put_text("upper_raw.csv", manifest)
    scan(options(buckets, tmp_path))
    assert sorted(result_rows(buckets, "processed")) == sorted(manifest.splitlines())
    outputs = set(buckets.output_keys())
    assert {"Landsat/LC08 B4.TIF", "Landsat/LC08 B4.jpg", "a/b%20c.tiff", "a/b%20c.jpg", "x.TiF", "x.jpg"} <= outputs
    buckets.output.download("Landsat/LC08 B4.jpg", tmp_path / "check.jpg")
    with rasterio.open(tmp_path / "check.jpg") as jpg:
        assert jpg.driver == "JPEG"


def test_each_step_reads_run_json_once_and_each_guarded_write_reads_it_once(tmp_path, monkeypatch):
    """A tick hands run.json along: every step reads it once (reconcile once per finish, under its lock), and
    every write reads it once, to check the move against the state on disk."""
    import collections

    from cog_pipeline import pipeline
    from cog_pipeline.run.rundir import directory, files
    from cog_pipeline.storage.store import StoreConfig

    make_example_bucket(tmp_path / "b" / "in", size=64)
    (tmp_path / "b" / "out").mkdir()
    loads: collections.Counter[str] = collections.Counter()
    writes, finishes = [], []
    real_load, real_write, real_finish = directory.RunDir.load, files.write_json_atomic, pipeline.finish

    def load(self):
        loads[sys._getframe(1).f_code.co_name] += 1
        return real_load(self)

    def write(path, data, *args, **kwargs):
        writes.extend([path] if Path(path).name == "run.json" else [])
        return real_write(path, data, *args, **kwargs)

    def finish(*args, **kwargs):
        finishes.append(args[0])
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(directory.RunDir, "load", load)
    monkeypatch.setattr(files, "write_json_atomic", write)
    monkeypatch.setattr(pipeline, "finish", finish)
    report = scan(ScanOptions("in", "out", StoreConfig(local_root=tmp_path / "b"), tmp_path / "work", progress=False,
                              config=config_with(workers=1)), echo=lambda _: None)

    assert len(report.reconciled) == 1 and len(finishes) == 2  # the END hook's finish, then the tick's
    guarded = ("save", "set_state", "acquire_lease", "renew_lease", "release_lease")
    assert sum(loads[name] for name in guarded) == len(writes) - 1  # the claim's first write has nothing to check
    steps = {name: n for name, n in loads.items() if name not in guarded}
    assert steps.pop("_reconcile") == len(finishes)
    assert steps and all(n == 1 for n in steps.values()), steps
