"""cog_pipeline/engines/pegasus/ and the reconciliation guarantee on both engines.

HTCondor and the Pegasus planner cannot be installed here, so `pegasus-plan` / `pegasus-run` /
`condor_submit_dag` are small stand-in scripts that record how they were called and lay out a submit
directory the way Pegasus does; the DAG's jobs are the REAL converter run through the local engine's job
runner, and their outcomes are written to jobstate.log in DAGMan's format. The only HTCondor object replaced
is the schedd (engines.pegasus.condor.schedd), at the boundary.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cog_pipeline.run import lease
from cog_pipeline.engines.pegasus import condor, monitor, plan, records
from cog_pipeline.cli.main import main as cli
from cog_pipeline.engines.local import load_jobs, run_job
from cog_pipeline.examples import write_raster
from cog_pipeline.run.claim import claim_one
from cog_pipeline.pipeline import carry_on, finish, ScanOptions, scan
from tests.conftest import config_with
from cog_pipeline.run.rundir import GENERATED, RECONCILED, RUNNING, Decisions, RunDir, list_run_dirs
from cog_pipeline.storage.store import StoreConfig, open_store

from .conftest import Buckets
from .test_replicas import schema_validator

CLUSTER = 4242
GOOD = [("Counties/WI/Wood/1band.tif", 1), ("Counties/WI/Dane/3band.tif", 3)]
CORRUPT = ("Counties/WI/Sauk/corrupt.tif", 1)  # bytes that are not a raster: the converter exits 3
MISSING = ("Counties/WI/Sauk/not-uploaded.tif", 1)  # fails in pre-flight


# ---------------------------------------------------------------------------------------------------------------
# Buckets, manifests, stand-in tools


def folder_buckets(tmp_path: Path) -> Buckets:
    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir(parents=True)
    return Buckets("folder", StoreConfig(local_root=root), "in", "out")


def upload_batch(buckets: Buckets, tmp_path: Path, *, corrupt: bool = True, missing: bool = True, key: str = "batch_raw.csv") -> str:
    images = tmp_path / "images"
    rows = []
    for seed, (name, bands) in enumerate(GOOD):
        path = images / name
        write_raster(path, bands, size=64, seed=seed)
        buckets.put_file(name, path)
        rows.append(f"{name},{bands}")
    if corrupt:
        buckets.input.put_bytes(CORRUPT[0], b"this is not a GeoTIFF")
        rows.append(f"{CORRUPT[0]},{CORRUPT[1]}")
    if missing:
        rows.append(f"{MISSING[0]},{MISSING[1]}")
    buckets.put_text(key, "\n".join(rows) + "\n")
    return key


def options(buckets: Buckets, work: Path, engine: str, *, submit: bool = True, **workflow) -> ScanOptions:
    return ScanOptions(
        input_bucket=buckets.input_bucket,
        output_bucket=buckets.output_bucket,
        store=buckets.config,
        work_dir=work,
        engine=engine,
        progress=False,
        submit=submit,
        config=config_with(workers=2, **workflow),
    )


FAKE_PLAN = r'''#!{python}
"""Stand-in for pegasus-plan 5.1: records its call, writes a submit directory like the planner does."""
import json, os, sys, getpass
from pathlib import Path
args = sys.argv[1:]
if args == ["--version"]:  # the scan's check that Pegasus can run, before it claims
    print("5.1.2")
    sys.exit(0)
with open(os.environ["FAKE_RECORD"], "a") as fh:
    fh.write(json.dumps({{"tool": "pegasus-plan", "argv": args, "cwd": os.getcwd(),
        "credentials": os.environ.get("PEGASUS_CREDENTIALS"), "props_here": os.path.isfile("pegasus.properties")}}) + "\n")
if os.environ.get("FAKE_PLAN_EXIT"):
    print("2024.01.02 03:04:05.678 UTC: [ERROR]  Unable to load the site catalog")
    sys.exit(int(os.environ["FAKE_PLAN_EXIT"]))
base = Path(args[args.index("--dir") + 1])
label = "cog"
submit_dir = base / getpass.getuser() / "pegasus" / label / "run0001"
submit_dir.mkdir(parents=True, exist_ok=True)
(submit_dir / "braindump.yml").write_text("dag: cog-0.dag\nsubmit_dir: %s\n" % submit_dir)
(submit_dir / "cog-0.dag").write_text("JOB generate_cog_ID0000001 00/00/generate_cog_ID0000001.sub\n")
print("I have concluded the planning of your workflow")
if "--submit" in args:
    print("1 job(s) submitted to cluster {cluster}.")
    print("Your workflow has been started and is running in the base directory:")
    print("  " + str(submit_dir))
    print("*** To monitor the workflow you can run ***")
    print("  pegasus-status -l " + str(submit_dir))
else:
    print("pegasus-run  " + str(submit_dir))
'''

FAKE_RUN = r'''#!{python}
import json, os, sys
with open(os.environ["FAKE_RECORD"], "a") as fh:
    fh.write(json.dumps({{"tool": "pegasus-run", "argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\n")
print("1 job(s) submitted to cluster 4343.")
'''


@pytest.fixture()
def fake_pegasus(tmp_path, monkeypatch):
    """pegasus-plan, pegasus-run and condor_submit_dag stand-ins first on PATH; yields the call records."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, text in (("pegasus-plan", FAKE_PLAN), ("pegasus-run", FAKE_RUN), ("condor_submit_dag", "#!/bin/sh\nexit 0\n")):
        path = bin_dir / name
        path.write_text(text.format(python=sys.executable, cluster=CLUSTER))
        path.chmod(0o755)
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def calls(tool: str | None = None) -> list[dict]:
        if not record.exists():
            return []
        items = [json.loads(line) for line in record.read_text().splitlines()]
        return [c for c in items if tool is None or c["tool"] == tool]

    return calls


@pytest.fixture()
def no_pegasus(tmp_path, monkeypatch):
    """A PATH with no Pegasus or HTCondor tools on it (this interpreter's bin folder only)."""
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}{Path(sys.executable).parent}")
    if shutil.which("pegasus-plan") or shutil.which("condor_submit_dag"):
        pytest.skip("Pegasus is installed beside this Python")


class FakeSchedd:
    def __init__(self, jobs: list[dict]) -> None:
        self.jobs = jobs
        self.queries: list[str] = []

    def query(self, constraint="True", projection=(), **_):
        import classad2

        self.queries.append(str(constraint))
        expr = classad2.ExprTree(str(constraint))
        return [job for job in self.jobs if expr.eval(classad2.ClassAd(job)) is True]


def use_schedd(monkeypatch, jobs: list[dict] | None):
    """jobs=None: no schedd reachable (as on this machine); else a schedd holding these job ads."""
    if jobs is None:
        def unreachable():
            raise RuntimeError("Unable to locate local daemon.")

        monkeypatch.setattr(condor, "schedd", unreachable)
        return None
    fake = FakeSchedd(jobs)
    monkeypatch.setattr(condor, "schedd", lambda: fake)
    return fake


# ---------------------------------------------------------------------------------------------------------------
# What a DAG leaves behind: real conversions, DAGMan's jobstate.log, the DAGMan job's event log


_DAG_CACHE: dict[str, object] = {}


def run_dag_jobs(run_dir: RunDir) -> dict[str, object]:
    """Run every conversion job exactly as a worker would (real converter, staged to the output bucket).

    The batch is the same in every test, so the real conversions run once per session; later runs stage the
    same converted bytes to their own (fresh) output bucket, as the DAG's stage-out jobs would.
    """
    from cog_pipeline.storage.store import open_store

    info = run_dir.load()
    output = open_store(info.output_bucket, info.store_config)
    if not _DAG_CACHE:
        specs, _ = load_jobs(run_dir)
        _DAG_CACHE["records"] = {spec.job_id: run_job(spec) for spec in specs}
        _DAG_CACHE["outputs"] = {o.key: output.read_bytes(o.key)[0] for o in output.list("")}
    else:
        for key, data in _DAG_CACHE["outputs"].items():
            output.put_bytes(key, data)
    return _DAG_CACHE["records"]


def write_jobstate(submit_dir: Path, records: dict, *, finished: bool = True, monitord_finished: bool = True) -> None:
    t = 1700000000
    lines = [f"{t} INTERNAL *** MONITORD_STARTED 0 ***", f"{t} INTERNAL *** DAGMAN_STARTED {CLUSTER}.0 ***"]
    for n, (job_id, record) in enumerate(sorted(records.items())):
        node = f"generate_cog_{job_id}"
        for attempt in range(record.attempts):
            c = f"{CLUSTER + 1 + n * 10 + attempt}.0"
            last = attempt == record.attempts - 1
            ok = record.status == "succeeded" and last
            code = 0 if ok else (record.exit_code if record.exit_code is not None else 1)
            lines += [
                f"{t} {node} SUBMIT {c} condorpool - 1",
                f"{t + 1} {node} EXECUTE {c} condorpool - 1",
                f"{t + 2} {node} JOB_TERMINATED {c} condorpool - 1",
                f"{t + 2} {node} {'JOB_SUCCESS' if ok else 'JOB_FAILURE'} {code} condorpool - 1",
                f"{t + 2} {node} POST_SCRIPT_STARTED - condorpool - 1",
                f"{t + 3} {node} {'POST_SCRIPT_SUCCESS' if ok else 'POST_SCRIPT_FAILURE'} - condorpool - 1",
            ]
    if finished:
        lines.append(f"{t + 9} INTERNAL *** DAGMAN_FINISHED 1 ***")
    if monitord_finished:
        lines.append(f"{t + 9} INTERNAL *** MONITORD_FINISHED 0 ***")
    (submit_dir / "jobstate.log").write_text("\n".join(lines) + "\n")


def write_dagman_log(submit_dir: Path, end: str | None) -> None:
    """The DAGMan job's own event log: submitted, executing, then terminated (005) or aborted (009)."""
    events = [
        f"000 ({CLUSTER}.000.000) 2024-01-02 03:04:05 Job submitted from host: <127.0.0.1:9618>\n...",
        f"001 ({CLUSTER}.000.000) 2024-01-02 03:04:06 Job executing on host: <127.0.0.1:9618>\n...",
    ]
    if end == "005":
        events.append(f"005 ({CLUSTER}.000.000) 2024-01-02 03:14:06 Job terminated.\n\t(1) Normal termination (return value 1)\n...")
    elif end == "009":
        events.append(f"009 ({CLUSTER}.000.000) 2024-01-02 03:14:06 Job was aborted.\n\tvia condor_rm (by user cog)\n...")
    (submit_dir / "cog-0.dag.dagman.log").write_text("\n".join(events) + "\n")


def result_keys(buckets: Buckets) -> list[str]:
    return sorted(k for k in buckets.input_keys() if "processed-" in k or "failed-" in k or "processing-" in k)


def read_text(buckets: Buckets, key: str) -> str:
    data, _ = buckets.input.read_bytes(key)
    return data.decode()


# ---------------------------------------------------------------------------------------------------------------
# Planning


@pytest.mark.slow
def test_plan_runs_from_the_run_directory_with_its_inputs_and_credentials(tmp_path, fake_pegasus, s3_server, bucket_name, monkeypatch):
    """S3 with key files: pegasus-plan runs in the run dir with PEGASUS_CREDENTIALS = its 0600 credentials.conf."""
    import boto3

    access, secret = "AKIAENGINEPEGASUSTEST", "pegasus/Secret+Key=NEVER-IN-A-FILE"
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "access").write_text(access + "\n")
    (keys / "secret").write_text(secret + "\n")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=f"{bucket_name}-in")
    client.create_bucket(Bucket=f"{bucket_name}-out")
    config = StoreConfig(endpoint=s3_server, access_key_file=keys / "access", secret_key_file=keys / "secret")
    buckets = Buckets("s3", config, f"{bucket_name}-in", f"{bucket_name}-out")
    upload_batch(buckets, tmp_path, corrupt=False)
    work = tmp_path / "work"
    use_schedd(monkeypatch, None)

    report = scan(options(buckets, work, "pegasus"), echo=lambda _: None)
    (run_dir,) = report.claimed
    info = run_dir.load()
    assert info.state == RUNNING
    (call,) = fake_pegasus("pegasus-plan")
    assert Path(call["cwd"]) == run_dir.path.resolve()
    assert call["props_here"], "the planner must find ./pegasus.properties"
    argv = call["argv"]
    assert argv[argv.index("--conf") + 1] == str(run_dir.file("pegasus.properties").resolve())
    assert argv[argv.index("--sites") + 1] == "condorpool"
    assert argv[argv.index("--output-sites") + 1] == info.output_site == "storage"
    assert argv[argv.index("--dir") + 1] == str((run_dir.path / "submit").resolve())
    # S3 buckets plan nonsharedfs (workers read S3) with --cleanup none: pegasus-s3 rm cannot delete keys with
    # spaces, so the run's scratch prefix is removed with boto3 when it finishes (engines/pegasus/scratch.py).
    assert argv[argv.index("--cleanup") + 1] == "none"
    assert argv[argv.index("--staging-site") + 1] == "condorpool=storage"
    assert "--submit" in argv and argv[-1] == str(run_dir.file("workflow.yml").resolve())
    credentials = run_dir.file("credentials.conf")
    assert call["credentials"] == str(credentials)
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert secret in credentials.read_text()
    # Recorded for the next tick and for operators.
    submit_dir = Path(info.pegasus.submit_dir)
    assert (submit_dir / "braindump.yml").is_file() and submit_dir.is_relative_to(run_dir.path / "submit")
    assert info.pegasus.dagman_cluster == CLUSTER
    assert "submitted to cluster" in run_dir.file("plan.log").read_text()
    # No key material in any file written, except credentials.conf itself.
    leaked = [
        str(p) for p in work.rglob("*")
        if p.is_file() and p.name != "credentials.conf" and (access in p.read_text(errors="replace") or secret in p.read_text(errors="replace"))
    ]
    assert not leaked, leaked
    assert access not in json.dumps(info.to_json()) and secret not in json.dumps(info.to_json())


@pytest.mark.slow
def test_no_submit_plans_and_leaves_the_planner_inputs_valid(tmp_path, fake_pegasus, pegasus_schema_dir, monkeypatch):
    buckets = folder_buckets(tmp_path)
    upload_batch(buckets, tmp_path)
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, [
        "scan", "--engine", "pegasus", "--no-submit", "--input-bucket", "in", "--output-bucket", "out",
        "--local-root", str(tmp_path / "buckets"), "-w", str(work), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    (run_dir,) = list_run_dirs(work)
    info = run_dir.load()
    assert info.state == GENERATED and info.pegasus.planned is True
    assert "--submit" not in fake_pegasus("pegasus-plan")[0]["argv"]
    assert Path(info.pegasus.plan_dir).is_dir()
    for name, schema in (("workflow.yml", "wf-5.0.yml"), ("replicas.yml", "rc-5.0.yml"), ("transformations.yml", "tc-5.0.yml"), ("sites.yml", "sc-5.0.yml")):
        doc = yaml.safe_load(run_dir.file(name).read_text())
        errors = list(schema_validator(pegasus_schema_dir, schema).iter_errors(doc))
        assert not errors, f"{name}: {errors[0].message}"
    props = run_dir.file("pegasus.properties").read_text()
    assert "pegasus.catalog.site.file" in props and "dagman.maxjobs" in props
    # The END hook is the engine-neutral finisher (reasons from the submit dir, then reconcile).
    hook = yaml.safe_load(run_dir.file("workflow.yml").read_text())["hooks"]["shell"][0]["cmd"]
    assert "-m cog_pipeline finish" in hook and str(run_dir.path.resolve()) in hook
    # A second --no-submit tick does not plan again; a submitting tick submits that plan with pegasus-run.
    scan(options(buckets, work, "pegasus", submit=False), echo=lambda _: None)
    assert len(fake_pegasus("pegasus-plan")) == 1 and not fake_pegasus("pegasus-run")
    use_schedd(monkeypatch, None)
    scan(options(buckets, work, "pegasus"), echo=lambda _: None)
    (run_call,) = fake_pegasus("pegasus-run")
    assert run_call["argv"] == [info.pegasus.plan_dir]
    info = run_dir.load()
    assert info.state == RUNNING and info.pegasus.submit_dir == info.pegasus.plan_dir and info.pegasus.dagman_cluster == 4343


@pytest.mark.slow
def test_a_plan_submitted_by_hand_is_followed_not_submitted_again(tmp_path, fake_pegasus, monkeypatch):
    buckets = folder_buckets(tmp_path)
    upload_batch(buckets, tmp_path)
    work = tmp_path / "work"
    scan(options(buckets, work, "pegasus", submit=False), echo=lambda _: None)
    (run_dir,) = list_run_dirs(work)
    plan_dir = Path(run_dir.load().pegasus.plan_dir)
    (plan_dir / "monitord.started").write_text("")  # the operator ran pegasus-run by hand
    use_schedd(monkeypatch, [{"ClusterId": CLUSTER, "ProcId": 0, "JobStatus": 2, "JobUniverse": 7, "Iwd": str(plan_dir)}])
    scan(options(buckets, work, "pegasus"), echo=lambda _: None)
    assert not fake_pegasus("pegasus-run")
    assert run_dir.load().state == RUNNING and run_dir.load().pegasus.submit_dir == str(plan_dir)


@pytest.mark.slow
def test_missing_planner_keeps_the_run_and_the_local_engine_finishes_it(tmp_path, no_pegasus):
    buckets = folder_buckets(tmp_path)
    upload_batch(buckets, tmp_path)
    work = tmp_path / "work"
    args = ["scan", "--engine", "pegasus", "--input-bucket", "in", "--output-bucket", "out", "--local-root", str(tmp_path / "buckets"), "-w", str(work), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: ") and "pegasus-plan" in message and "--engine local" in message
    assert "nothing was claimed" in message and "Traceback" not in result.output
    # Checked before the first claim: the manifest waits, raw, for a tick that can plan it.
    assert not list_run_dirs(work) and "batch_raw.csv" in buckets.input_keys()
    # A run claimed while Pegasus could run, whose planner has gone since: it waits, generated, and is not lost.
    store = open_store("in", buckets.config)
    manifest = next(o for o in store.list("") if o.key == "batch_raw.csv")
    claim = claim_one(store, manifest, work_dir=work, output_bucket="out", store_config=buckets.config, engine="pegasus")
    with pytest.raises(condor.PegasusUnavailable, match="pegasus-plan"):
        carry_on(claim.run_dir, options(buckets, work, "pegasus"), store, echo=lambda _: None)
    (run_dir,) = list_run_dirs(work)
    assert run_dir.load().state == GENERATED and run_dir.load().engine_waiting
    for name in ("workflow.yml", "replicas.yml", "transformations.yml", "sites.yml", "pegasus.properties"):
        assert run_dir.file(name).is_file()
    assert any("processing-" in k for k in buckets.input_keys())
    # The next tick does not lose it either (and claims nothing new).
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and len(list_run_dirs(work)) == 1 and run_dir.load().state == GENERATED
    # Carried on by the local engine: its END hook (the same workflow) reconciles it.
    done = CliRunner().invoke(cli, ["run", str(run_dir.path), "--workers", "2", "--quiet"])
    assert done.exit_code == 0, done.output
    assert run_dir.load().state == RECONCILED
    keys = result_keys(buckets)
    assert len([k for k in keys if "processed-" in k]) == 1 and not any("processing-" in k for k in keys)
    assert "INPUT_UNREADABLE" in read_text(buckets, next(k for k in keys if k.endswith("-reasons.csv")))


@pytest.mark.slow
def test_plan_failures_are_retried_then_reconciled_as_failed_rows(tmp_path, fake_pegasus, monkeypatch):
    buckets = folder_buckets(tmp_path)
    upload_batch(buckets, tmp_path, corrupt=False, missing=False)
    work = tmp_path / "work"
    monkeypatch.setenv("FAKE_PLAN_EXIT", "1")
    messages: list[str] = []
    scan(options(buckets, work, "pegasus"), echo=messages.append)
    (run_dir,) = list_run_dirs(work)
    assert run_dir.load().state == GENERATED and run_dir.load().pegasus.plan_attempts == 1
    assert any("Unable to load the site catalog" in m for m in messages)
    for _ in range(plan.MAX_PLAN_ATTEMPTS - 1):
        scan(options(buckets, work, "pegasus"), echo=messages.append)
    assert run_dir.load().state == RECONCILED
    assert len(fake_pegasus("pegasus-plan")) == plan.MAX_PLAN_ATTEMPTS
    keys = result_keys(buckets)
    reasons = read_text(buckets, next(k for k in keys if k.endswith("-reasons.csv")))
    assert reasons.count("PLAN_FAILED") == len(GOOD) and "Unable to load the site catalog" in reasons


@pytest.mark.slow
def test_empty_workflow_is_reconciled_without_planning(tmp_path, fake_pegasus):
    buckets = folder_buckets(tmp_path)
    buckets.put_text("batch_raw.csv", f"{MISSING[0]},1\nnot-a-tif.png,3\n")
    work = tmp_path / "work"
    report = scan(options(buckets, work, "pegasus"), echo=lambda _: None)
    assert [r.path for r in report.reconciled] == [r.path for r in report.claimed]
    assert not fake_pegasus()
    keys = result_keys(buckets)
    assert len(keys) == 2 and all("failed-" in k for k in keys)


# ---------------------------------------------------------------------------------------------------------------
# Is it still running?


@pytest.fixture()
def submitted_run(tmp_path, fake_pegasus, monkeypatch):
    """A run submitted by a tick, whose DAG jobs then ran for real (outputs in the bucket)."""
    buckets = folder_buckets(tmp_path)
    upload_batch(buckets, tmp_path)
    work = tmp_path / "work"
    use_schedd(monkeypatch, None)
    report = scan(options(buckets, work, "pegasus"), echo=lambda _: None)
    (run_dir,) = report.claimed
    assert run_dir.load().state == RUNNING
    records = run_dag_jobs(run_dir)
    assert {r.status for r in records.values()} == {"succeeded", "failed"}
    return buckets, work, run_dir, Path(run_dir.load().pegasus.submit_dir), records


@pytest.mark.parametrize(
    "signal",
    ["schedd: DAGMan job gone", "schedd: removed", "dagman.log: terminated", "dagman.log: aborted by condor_rm", "jobstate: monitord finished", "monitord.done"],
)
@pytest.mark.slow
def test_tick_reconciles_a_workflow_that_ended_without_its_end_hook(submitted_run, monkeypatch, signal):
    buckets, work, run_dir, submit_dir, records = submitted_run
    write_jobstate(submit_dir, records, monitord_finished=signal == "jobstate: monitord finished")
    write_dagman_log(submit_dir, {"dagman.log: terminated": "005", "dagman.log: aborted by condor_rm": "009"}.get(signal))
    if signal == "monitord.done":
        (submit_dir / "monitord.done").write_text("")
    jobs = {"schedd: DAGMan job gone": [], "schedd: removed": [{"ClusterId": CLUSTER, "ProcId": 0, "JobStatus": 3}]}
    fake = use_schedd(monkeypatch, jobs.get(signal))
    assert monitor.workflow_is_running(run_dir) is False
    if fake is not None:
        assert fake.queries == [f"ClusterId == {CLUSTER}"]

    report = scan(options(buckets, work, "pegasus"), echo=lambda _: None)
    assert [r.path for r in report.reconciled] == [run_dir.path]
    assert run_dir.load().state == RECONCILED
    keys = result_keys(buckets)
    assert not any("processing-" in k for k in keys)
    processed = [k for k in keys if "processed-" in k]
    failed = [k for k in keys if "failed-" in k and not k.endswith("-reasons.csv")]
    assert len(processed) == 1 and len(failed) == 1
    assert sorted(read_text(buckets, processed[0]).splitlines()) == sorted(f"{k},{b}" for k, b in GOOD)
    reasons = read_text(buckets, next(k for k in keys if k.endswith("-reasons.csv")))
    assert "INPUT_UNREADABLE: exit code 3" in reasons and "pegasus-analyzer" in reasons  # from jobstate.log
    assert "input object does not exist" in reasons  # from pre-flight
    record = json.loads((run_dir.jobs_dir / "ID0000003.json").read_text())
    assert (record["status"], record["exit_code"], record["line"], record["key"]) == ("failed", 3, 3, CORRUPT[0])

    # Exactly once: the next tick finds nothing to do and changes nothing.
    snapshot = {k: read_text(buckets, k) for k in buckets.input_keys() if k.endswith(".csv")}
    stamp = run_dir.file("reconcile.json").stat().st_mtime_ns
    again = scan(options(buckets, work, "pegasus"), echo=lambda _: None)
    assert not again.reconciled and not again.resumed and not again.claimed
    assert {k: read_text(buckets, k) for k in buckets.input_keys() if k.endswith(".csv")} == snapshot
    assert run_dir.file("reconcile.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("where", ["schedd: idle", "schedd: running", "schedd: held", "files: no end yet"])
@pytest.mark.slow
def test_a_workflow_still_running_is_left_alone(submitted_run, monkeypatch, where):
    buckets, work, run_dir, submit_dir, records = submitted_run
    write_jobstate(submit_dir, records, finished=False, monitord_finished=False)
    write_dagman_log(submit_dir, None)
    status = {"schedd: idle": 1, "schedd: running": 2, "schedd: held": 5}
    use_schedd(monkeypatch, [{"ClusterId": CLUSTER, "ProcId": 0, "JobStatus": status[where]}] if where in status else None)
    assert monitor.workflow_is_running(run_dir) is True
    report = scan(options(buckets, work, "pegasus"), echo=lambda _: None)
    assert [r.path for r in report.in_flight] == [run_dir.path] and not report.reconciled
    assert run_dir.load().state == RUNNING
    assert any("processing-" in k for k in buckets.input_keys())


@pytest.mark.slow
def test_schedd_found_by_submit_dir_when_no_cluster_was_recorded(submitted_run, monkeypatch):
    _, _, run_dir, submit_dir, _ = submitted_run
    run_dir.set_state(RUNNING, dagman_cluster=None)
    fake = use_schedd(monkeypatch, [{"ClusterId": 7, "ProcId": 0, "JobStatus": 2, "JobUniverse": 7, "Iwd": str(submit_dir)}])
    assert monitor.workflow_is_running(run_dir) is True
    assert fake.queries[0].startswith("JobUniverse == 7 && Iwd == ")
    fake.jobs[0]["Iwd"] = "/somewhere/else"
    assert monitor.workflow_is_running(run_dir) is False


@pytest.mark.slow
def test_end_hook_reconciles_and_the_next_tick_does_not_redo_it(submitted_run, monkeypatch):
    """The normal path: monitord runs the workflow's END hook (the real command from workflow.yml)."""
    buckets, work, run_dir, submit_dir, records = submitted_run
    write_jobstate(submit_dir, records)
    hook = yaml.safe_load(run_dir.file("workflow.yml").read_text())["hooks"]["shell"][0]["cmd"]
    proc = subprocess.run(["/bin/sh", "-c", hook], cwd=submit_dir, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert run_dir.load().state == RECONCILED and proc.stdout.splitlines()[0] == f"{len(GOOD)} processed, 2 failed"
    write_dagman_log(submit_dir, "005")
    use_schedd(monkeypatch, [])
    keys = result_keys(buckets)
    report = scan(options(buckets, work, "pegasus"), echo=lambda _: None)
    assert not report.reconciled and not report.resumed
    assert result_keys(buckets) == keys
    # Running the hook again (DAGMan rescue, an operator) reports instead of redoing.
    proc = subprocess.run(["/bin/sh", "-c", hook], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("already reconciled")


@pytest.mark.slow
def test_submit_dir_gone_means_not_running(tmp_path):
    run_dir = RunDir(tmp_path / "workflow-run-20240102-030405")
    run_dir.path.mkdir()
    (run_dir.path / "run.json").write_text(json.dumps({
        "timestamp": "20240102-030405", "input_bucket": "in", "output_bucket": "out", "manifest_key": "a_raw.csv",
        "processing_key": "a_processing-20240102-030405.csv", "store": {}, "state": RUNNING, "engine": "pegasus",
        "extra": {"submit_dir": str(tmp_path / "gone")},
    }))
    assert monitor.workflow_is_running(run_dir) is False
    run_dir.set_state(RUNNING, submit_dir=None, owner=lease.mine().to_json())
    assert monitor.workflow_is_running(run_dir) is True, "`cog-pipeline run` is executing it here"


# ---------------------------------------------------------------------------------------------------------------
# The guarantee with the LOCAL engine (the same generated workflow, END hook run by the engine)


def _local_exactly_once(buckets: Buckets, tmp_path: Path, case: str, monkeypatch) -> None:
    upload_batch(buckets, tmp_path, corrupt=case != "all succeed", missing=case != "all succeed")
    work = tmp_path / "work"
    if case == "end hook fails":  # the workflow's END hook is a command that fails
        import cog_pipeline.pegasus.workflow_gen as wg

        monkeypatch.setattr(wg, "default_reconcile_command", lambda run_dir: "exit 1")
    messages: list[str] = []
    report = scan(options(buckets, work, "local"), echo=messages.append)
    (run_dir,) = report.claimed
    assert [r.path for r in report.reconciled] == [run_dir.path]
    assert run_dir.load().state == RECONCILED
    if case == "end hook fails":
        assert any("end hook exited 1" in m for m in messages)
    keys = result_keys(buckets)
    assert not any("processing-" in k for k in keys)
    assert len([k for k in keys if "processed-" in k]) == 1
    assert len([k for k in keys if "failed-" in k]) == (0 if case == "all succeed" else 2)
    assert set(buckets.output_keys()) >= {k for k, _ in GOOD} | {k[:-4] + ".jpg" for k, _ in GOOD}
    assert Decisions.load(run_dir.path).processed == len(GOOD)
    if case != "all succeed":
        reasons = read_text(buckets, next(k for k in keys if k.endswith("-reasons.csv")))
        assert "INPUT_UNREADABLE" in reasons and "input object does not exist" in reasons
    snapshot = {k: read_text(buckets, k) for k in buckets.input_keys() if k.endswith(".csv")}
    again = scan(options(buckets, work, "local"), echo=lambda _: None)
    assert not again.claimed and not again.resumed and not again.reconciled
    assert {k: read_text(buckets, k) for k in buckets.input_keys() if k.endswith(".csv")} == snapshot


@pytest.mark.slow
@pytest.mark.parametrize("case", ["all succeed", "some fail", "end hook fails"])
def test_local_engine_reconciles_exactly_once(tmp_path, case, monkeypatch):
    _local_exactly_once(folder_buckets(tmp_path), tmp_path, case, monkeypatch)


@pytest.mark.slow
def test_local_engine_reconciles_exactly_once_on_s3(tmp_path, s3_server, bucket_name, monkeypatch):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=f"{bucket_name}-in")
    client.create_bucket(Bucket=f"{bucket_name}-out")
    buckets = Buckets("s3", StoreConfig(endpoint=s3_server), f"{bucket_name}-in", f"{bucket_name}-out")
    _local_exactly_once(buckets, tmp_path, "some fail", monkeypatch)


@pytest.mark.slow
def test_local_engine_run_that_died_before_reconcile_is_finished_by_the_next_tick(tmp_path, monkeypatch):
    """Jobs ran but the process died before any reconcile (no hook, no in-process step): the next tick finishes it."""
    import cog_pipeline.engines.local as engine_local
    from cog_pipeline.run.claim import claim_one
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate

    buckets = folder_buckets(tmp_path)
    key = upload_batch(buckets, tmp_path)
    work = tmp_path / "work"
    claim = claim_one(buckets.input, buckets.input.head(key), work_dir=work, output_bucket="out", store_config=buckets.config)
    generate(claim.run_dir, buckets.input, WorkflowSettings())
    with monkeypatch.context() as patched:
        patched.setattr(engine_local, "run_end_hook", lambda cmd, run_dir, finish=None: 0)  # the hook never ran
        engine_local.run_batch([claim.run_dir], workers=2)
    assert claim.run_dir.load().state == RUNNING
    report = scan(options(buckets, work, "local"), echo=lambda _: None)
    assert [r.path for r in report.reconciled] == [claim.run_dir.path]
    assert len([k for k in buckets.input_keys() if "processed-" in k]) == 1
    assert not any("processing-" in k for k in buckets.input_keys())


@pytest.mark.slow
def test_submitted_run_whose_submit_dir_was_not_named_is_found_again(submitted_run, monkeypatch):
    _, _, run_dir, submit_dir, _ = submitted_run
    run_dir.set_state(RUNNING, submit_dir=None)
    use_schedd(monkeypatch, [{"ClusterId": CLUSTER, "ProcId": 0, "JobStatus": 2}])
    assert monitor.workflow_is_running(run_dir) is True
    assert run_dir.load().pegasus.submit_dir == str(submit_dir)


# ---------------------------------------------------------------------------------------------------------------
# The converter's own reason line, from the jobs' pegasus-kickstart YAML records in the submit directory


def kickstart_record(job_id: str, exit_code: int, stderr: str, *, transformation: str = "generate_cog") -> str:
    """One invocation record as pegasus-kickstart 5 writes it to the job's stdout (trimmed to what matters)."""
    data = textwrap.indent(stderr, " " * 8)
    failed = exit_code != 0
    env = '  environment:\n    "AWS_SECRET_ACCESS_KEY": "not-to-be-copied"\n' if failed else ""
    return (
        "- invocation: True\n"
        "  version: 3.0\n"
        "  start: 2025-03-12T12:39:36.752-07:00\n"
        "  duration: 1.250\n"
        f'  transformation: "{transformation}"\n'
        f'  derivation: "{job_id}"\n'
        '  resource: "condorpool"\n'
        "  mainjob:\n"
        "    start: 2025-03-12T12:39:36.754-07:00\n"
        "    duration: 1.248\n"
        "    status:\n"
        f"      raw: {exit_code * 256}\n"
        f"      regular_exitcode: {exit_code}\n"
        "    argument_vector:\n"
        '      - "--input"\n'
        "  jobids:\n"
        "    condor: 4243.0\n"
        "  files:\n"
        "    stdout:\n"
        "      size: 0\n"
        "    stderr:\n"
        f"      size: {len(stderr)}\n"
        "      data_truncated: false\n"
        "      data: |\n"
        f"{data}\n"
        "    metadata:\n"
        "      size: 0\n"
        f"{env}"
    )


def write_kickstart(submit_dir: Path, job_id: str, text: str, attempt: int = 0) -> Path:
    folder = submit_dir / "00" / "00"  # Pegasus' default Hashed submit mapper
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"generate_cog_{job_id}.out.{attempt:03d}"
    path.write_text(text)
    return path


def finish_and_reasons(buckets: Buckets, run_dir: RunDir, submit_dir: Path, records: dict) -> str:
    write_jobstate(submit_dir, records)
    finish(run_dir)
    assert run_dir.load().state == RECONCILED
    return read_text(buckets, next(k for k in result_keys(buckets) if k.endswith("-reasons.csv")))


def job_json(run_dir: RunDir, job_id: str) -> dict:
    return json.loads((run_dir.jobs_dir / f"{job_id}.json").read_text())


@pytest.mark.slow
def test_kickstart_records_give_the_converter_reason_and_warning(submitted_run):
    buckets, _, run_dir, submit_dir, records = submitted_run
    corrupt = "ID0000003"
    assert records[corrupt].exit_code == 3
    # Two attempts: the latest record (.out.001) is the one used. Its file also holds a transfer invocation
    # and a multipart integrity part, as PegasusLite jobs do.
    write_kickstart(submit_dir, corrupt, kickstart_record(corrupt, 3, "INPUT_UNREADABLE: older attempt\n"), 0)
    write_kickstart(
        submit_dir, corrupt,
        kickstart_record(corrupt, 0, "transfer ok\n", transformation="pegasus::transfer")
        + kickstart_record(corrupt, 3, "opening the input\nINPUT_UNREADABLE: truncated: not a TIFF file (synthetic)\n\n")
        + "---------------pegasus-multipart\n- integrity_summary:\n    succeeded: 1\n    failed: 0\n",
        1,
    )
    write_kickstart(submit_dir, "ID0000001", kickstart_record("ID0000001", 0, "WARNING BAND_MISMATCH: manifest says 1 band, file has 2\n"))
    write_kickstart(submit_dir, "ID0000002", kickstart_record("ID0000002", 0, ""))

    reasons = finish_and_reasons(buckets, run_dir, submit_dir, records)
    assert "INPUT_UNREADABLE: truncated: not a TIFF file (synthetic)" in reasons
    assert "older attempt" not in reasons and "exit code 3" not in reasons
    assert "not-to-be-copied" not in reasons
    assert "input object does not exist" in reasons  # pre-flight failures are untouched
    failed = job_json(run_dir, corrupt)
    assert (failed["status"], failed["category"], failed["reason"]) == ("failed", "INPUT_UNREADABLE", "INPUT_UNREADABLE: truncated: not a TIFF file (synthetic)")
    assert "not-to-be-copied" not in json.dumps([job_json(run_dir, j) for j in records])
    warned = job_json(run_dir, "ID0000001")
    assert (warned["status"], warned["reason"], warned["warning"]) == ("succeeded", "", "WARNING BAND_MISMATCH: manifest says 1 band, file has 2")
    assert job_json(run_dir, "ID0000002")["warning"] is None


@pytest.mark.parametrize("record", ["truncated", "garbage", "empty", "no stderr data", "other attempt", "none"])
@pytest.mark.slow
def test_unusable_kickstart_records_fall_back_to_the_exit_category(submitted_run, record):
    buckets, _, run_dir, submit_dir, records = submitted_run
    corrupt = "ID0000003"
    full = kickstart_record(corrupt, 3, "INPUT_UNREADABLE: truncated: from the record\n")
    text = {
        "truncated": full[: full.index("  files:") + 40],  # cut inside the files section, before stderr
        "garbage": "- invocation: True\n  mainjob: [unclosed\n  files: {stderr: {data: 'INPUT_UNREADABLE: x'\n\x00\x01",
        "empty": "",
        "no stderr data": full.replace("      data: |\n", "      ignored: |\n"),
        "other attempt": kickstart_record(corrupt, 4, "INPUT_UNREADABLE: from another attempt\n"),  # jobstate says 3
        "none": None,
    }[record]
    if text is not None:
        write_kickstart(submit_dir, corrupt, text)
    write_kickstart(submit_dir, "ID0000001", "- invocation: True\n  files:\n    stderr:\n      data: \"unterminated\n")

    reasons = finish_and_reasons(buckets, run_dir, submit_dir, records)
    assert "INPUT_UNREADABLE: exit code 3" in reasons and "pegasus-analyzer" in reasons
    assert "from the record" not in reasons and "another attempt" not in reasons
    assert job_json(run_dir, "ID0000001")["warning"] is None


def test_kickstart_reason_never_raises(tmp_path):
    assert records.kickstart_reason(None, "ID0000001", 3) is None
    assert records.kickstart_reason(tmp_path / "missing.out.000", "ID0000001", 3) is None
    binary = tmp_path / "generate_cog_ID0000001.out.000"
    binary.write_bytes(b"\xff\xfe- invocation: True\n  files: [1, 2\n")
    assert records.kickstart_reason(binary, "ID0000001", 3) is None
    (tmp_path / "a-directory.out.000").mkdir()
    assert records.kickstart_reason(tmp_path / "a-directory.out.000", "ID0000001", 3) is None
