"""Fenced claims: a stalled scan, a lost PUT response and a racing takeover never make two claims of one manifest.

Real parts only: folder buckets and moto's threaded HTTP server, real scan processes paused with SIGSTOP,
and a real HTTP round trip whose response botocore is told to treat as lost.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cog_pipeline.publishing.reconcile import reconcile
from cog_pipeline.run import claim as claim_mod
from cog_pipeline.run.claim import (
    STALE_MARKER_AGE,
    ClaimLost,
    _Fence,
    _renew,
    claim_one,
    claim_token,
    fence_check,
    look,
    recover_claims,
)
from cog_pipeline.run.naming import RunNames
from cog_pipeline.run.rundir import CLAIMED, list_run_dirs
from cog_pipeline.storage.store import PreconditionFailed, open_store

MANIFEST = "Counties/a.tif,1\nCounties/b.tif,3\n"
STALE_SECONDS = 1.0

# One scan's claim step, as `cog-pipeline scan` runs it, in its own process. With "pause" it stops right
# before creating its processing file (after it has read the manifest and fenced): the stall of issue 8.2.
SCAN = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    os.environ["COG_PIPELINE_STALE_MARKER_AGE"] = sys.argv[5]
    from cog_pipeline.run import claim
    from cog_pipeline.storage.store import StoreConfig, open_store

    config = StoreConfig.from_json(json.loads(sys.argv[1]))
    bucket, work, mode = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    output_bucket = sys.argv[6]
    store = open_store(bucket, config)
    if mode in ("pause", "pause-after"):
        original = store.create

        def create(key, data):
            if "processing-" in key and mode == "pause":
                print("paused", flush=True)
                sys.stdin.readline()
            info = original(key, data)
            if "processing-" in key and mode == "pause-after":
                print("paused", flush=True)
                sys.stdin.readline()
            return info

        store.create = create
    with claim.scan_lock(work):
        claim.recover_claims(store, work, claim.look(store, "*raw.csv"))
        for pending in claim.look(store, "*raw.csv").pending:
            try:
                got = claim.claim_one(store, pending.info, work_dir=work, output_bucket=output_bucket, store_config=config)
            except claim.ClaimLost:
                got = None
            print("claimed" if got else "lost", flush=True)
    """
)


def _scan(buckets, script: Path, work: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(buckets.config.to_json()), buckets.input_bucket, str(work), mode, str(STALE_SECONDS),
         buckets.output_bucket],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def _stall_a_while_b_scans(buckets, tmp_path: Path, a_mode: str, check_b: Callable[[str], None]) -> tuple[int, str, str]:
    """Scan A pauses at `a_mode` and is SIGSTOPped past the stale age; scan B runs to the end and `check_b`
    judges its output; then A wakes and finishes. Returns (A's exit code, A's output, B's output)."""
    buckets.put_text("batch_raw.csv", MANIFEST)
    script = tmp_path / "scan.py"
    script.write_text(SCAN)
    first = _scan(buckets, script, tmp_path / "host-a", a_mode)
    try:
        assert first.stdout.readline().strip() == "paused"
        first.send_signal(signal.SIGSTOP)
        time.sleep(STALE_SECONDS * 2)
        out_b, _ = _scan(buckets, script, tmp_path / "host-b", "run").communicate(timeout=60)
        check_b(out_b)
        first.send_signal(signal.SIGCONT)
        out_a, _ = first.communicate("\n", timeout=60)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait()
    return first.returncode, out_a, out_b


@pytest.mark.slow
def test_scan_stalled_past_the_stale_age_never_claims_twice(buckets, tmp_path):
    """A pauses (SIGSTOP) before its processing file; B takes the stale marker over; A wakes: one claim."""
    def b_took_it_over(out_b: str) -> None:
        assert out_b.split() == ["claimed"]

    returncode, out_a, _ = _stall_a_while_b_scans(buckets, tmp_path, "pause", b_took_it_over)
    assert returncode == 0 and out_a.split() == ["lost"]
    keys = buckets.input_keys()
    assert [k for k in keys if "processing-" in k] != [] and len([k for k in keys if "processing-" in k]) == 1
    assert "batch_raw.csv" not in keys and not any(k.endswith(".claim") for k in keys)
    runs = [r for host in ("host-a", "host-b") for r in list_run_dirs(tmp_path / host) if r.load().state == CLAIMED]
    for run in runs:
        reconcile(run, input_store=buckets.input)
    keys = buckets.input_keys()
    assert (
        len(runs),
        len([k for k in keys if "_failed-" in k and not k.endswith("-reasons.csv")]),
        len([k for k in keys if k.endswith("-reasons.csv")]),
        [k for k in keys if "processing-" in k or "_processed-" in k],
    ) == (1, 1, 1, [])


@pytest.mark.slow
def test_scan_stalled_after_its_processing_file_keeps_the_claim_another_scan_completed(buckets, tmp_path):
    """A pauses right after creating its processing file; B finds the stale marker *with* that file and
    completes A's claim (deletes the raw manifest and the marker); A wakes, fails to renew, and must
    recognise that its claim stands rather than delete its processing file (which would lose the manifest)."""
    def b_completed_a_claim(_out_b: str) -> None:
        assert "batch_raw.csv" not in buckets.input_keys()

    _, out_a, out_b = _stall_a_while_b_scans(buckets, tmp_path, "pause-after", b_completed_a_claim)
    keys = buckets.input_keys()
    (run,) = list_run_dirs(tmp_path / "host-a")
    assert (out_b.split(), out_a.split(), [k for k in keys if "processing-" in k], run.load().state) == (
        [], ["claimed"], [run.load().processing_key], CLAIMED
    )
    assert not any(k.endswith(".claim") for k in keys) and list_run_dirs(tmp_path / "host-b") == []


def _put_loses_first_response(store, key_part: str, seen: list[int]) -> None:
    """Make botocore retry the first PutObject whose key contains key_part, although the server applied it."""

    def handler(response=None, attempts=None, request_dict=None, **_):
        if response is None or key_part not in request_dict["url_path"]:
            return None
        seen.append(response[0].status_code)
        return 0.01 if len(seen) == 1 and response[0].status_code == 200 else None

    store.client.meta.events.register_first("needs-retry.s3.PutObject", handler)


@pytest.mark.parametrize("key_part", [".claim", "processing-"])
def test_lost_response_on_a_conditional_put_is_recognised_as_our_own(s3_server, bucket_name, tmp_path, key_part):
    """The server applies the PUT, its answer is 'lost', the retry gets 412: the claim carries on at once."""
    from cog_pipeline.storage.store import StoreConfig

    config = StoreConfig(endpoint=s3_server, max_attempts=3)
    store = open_store(bucket_name, config)
    store.client.create_bucket(Bucket=bucket_name)
    store.put_bytes("batch_raw.csv", MANIFEST.encode())
    seen: list[int] = []
    _put_loses_first_response(store, key_part, seen)
    claim = claim_one(store, store.head("batch_raw.csv"), work_dir=tmp_path, output_bucket="out", store_config=config)
    assert seen[:2] == [200, 412]  # moto really got both: it applied the first, refused the retry
    assert claim is not None
    keys = [o.key for o in store.list("")]
    assert keys == [claim.names.processing_key]


def test_lost_response_on_a_renewal_is_recognised_as_our_own(s3_server, bucket_name, tmp_path):
    from cog_pipeline.storage.store import StoreConfig

    config = StoreConfig(endpoint=s3_server, max_attempts=3)
    store = open_store(bucket_name, config)
    store.client.create_bucket(Bucket=bucket_name)
    token = claim_mod.ClaimToken.new("20260101-000000", "etag")
    created = store.create("m_raw.csv.claim", token.marker_body(0))
    fence = _Fence("m_raw.csv.claim", token, created.etag)
    seen: list[int] = []
    _put_loses_first_response(store, ".claim", seen)
    _renew(store, fence)
    assert (seen[:2], fence.renewals, fence.etag == store.head("m_raw.csv.claim").etag) == ([200, 412], 1, True)


def test_takeover_loses_when_the_owner_renewed_after_the_listing(buckets, tmp_path):
    """B lists a stale marker; the owner renews before B acts: B's conditional delete fails, the marker stays."""
    buckets.put_text("batch_raw.csv", MANIFEST)
    token = claim_mod.ClaimToken.new("20200101-000000", buckets.input.head("batch_raw.csv").etag)
    fence = _Fence("batch_raw.csv.claim", token, buckets.input.create("batch_raw.csv.claim", token.marker_body(0)).etag)
    view = look(buckets.input, "*raw.csv")
    _renew(buckets.input, fence)
    later = datetime.now(timezone.utc) + STALE_MARKER_AGE * 2
    assert recover_claims(buckets.input, tmp_path / "b", view, now=later) == []
    assert buckets.input.head("batch_raw.csv.claim").etag == fence.etag


def test_owner_cannot_renew_after_a_takeover(buckets, tmp_path):
    buckets.put_text("batch_raw.csv", MANIFEST)
    token = claim_mod.ClaimToken.new("20200101-000000", buckets.input.head("batch_raw.csv").etag)
    fence = _Fence("batch_raw.csv.claim", token, buckets.input.create("batch_raw.csv.claim", token.marker_body(0)).etag)
    later = datetime.now(timezone.utc) + STALE_MARKER_AGE * 2
    actions = recover_claims(buckets.input, tmp_path / "b", look(buckets.input, "*raw.csv"), now=later)
    assert any("stale" in a for a in actions)
    with pytest.raises(ClaimLost):
        _renew(buckets.input, fence)


def test_two_takeovers_of_one_stale_marker_have_one_winner(buckets, tmp_path):
    buckets.put_text("batch_raw.csv", MANIFEST)
    buckets.put_text("batch_raw.csv.claim", '{"timestamp": "20200101-000000"}')
    view = look(buckets.input, "*raw.csv")
    later = datetime.now(timezone.utc) + STALE_MARKER_AGE * 2
    first = recover_claims(buckets.input, tmp_path / "b", view, now=later)
    # A new claimant's marker: its body names a new claimant (S3 ETags are content hashes, so a marker's
    # unique id is what makes each claimant's version distinct).
    buckets.input.create("batch_raw.csv.claim", claim_mod.ClaimToken.new("20200101-000001", "e").marker_body(0))
    second = recover_claims(buckets.input, tmp_path / "c", view, now=later)  # acting on the old listing
    assert (len(first), second, "batch_raw.csv.claim" in buckets.input_keys()) == (1, [], True)


def test_marker_names_its_claimant(buckets, tmp_path):
    buckets.put_text("batch_raw.csv", MANIFEST)
    store = buckets.input
    original = store.create
    bodies = {}

    def spy(key, data):
        bodies[key] = data
        return original(key, data)

    store.create = spy
    claim = claim_one(store, store.head("batch_raw.csv"), work_dir=tmp_path, output_bucket="out", store_config=buckets.config)
    body = json.loads(bodies["batch_raw.csv.claim"])
    assert {"host", "pid", "id", "created", "timestamp"} <= body.keys() and body["id"] == claim.token.id


def test_fence_check_passes_for_our_processing_file_and_fails_once_it_is_replaced(buckets, tmp_path):
    buckets.put_text("batch_raw.csv", MANIFEST)
    claim = claim_one(
        buckets.input, buckets.input.head("batch_raw.csv"), work_dir=tmp_path, output_bucket="out", store_config=buckets.config
    )
    token = claim_token(claim.run_dir.load())
    assert token == claim.token and token.processing_etag
    fence_check(buckets.input, claim.names, token)
    buckets.input.put_bytes(claim.names.processing_key, b"another claim's bytes\n")
    with pytest.raises(ClaimLost):
        fence_check(buckets.input, claim.names, token)
    buckets.input.delete(claim.names.processing_key)
    with pytest.raises(ClaimLost):
        fence_check(buckets.input, RunNames("batch_raw.csv", claim.run_dir.timestamp), token)


def test_stale_age_can_be_set_from_the_environment(monkeypatch):
    monkeypatch.setenv("COG_PIPELINE_STALE_MARKER_AGE", "2.5")
    assert claim_mod.stale_marker_age().total_seconds() == 2.5


def test_conditional_replace_refuses_a_changed_or_missing_object(buckets):
    store = buckets.input
    first = store.put_bytes("k", b"one")
    second = store.replace("k", b"two", first.etag)
    assert store.read_bytes("k")[0] == b"two" and store.check("k", second.etag).etag == second.etag
    with pytest.raises(PreconditionFailed):
        store.replace("k", b"three", first.etag)
    with pytest.raises(PreconditionFailed):
        store.check("k", first.etag)
    with pytest.raises(PreconditionFailed):
        store.replace("absent", b"x", first.etag)
    assert store.read_bytes("k")[0] == b"two"


# ------------------------------------------------------------------------------------ the fence at reconcile


def _claimed(buckets, tmp_path):
    buckets.put_text("batch_raw.csv", MANIFEST)
    return claim_one(
        buckets.input, buckets.input.head("batch_raw.csv"), work_dir=tmp_path / "work", output_bucket=buckets.output_bucket,
        store_config=buckets.config,
    )


def _result_keys(buckets):
    return [k for k in buckets.input_keys() if "_processed-" in k or "_failed-" in k]


def test_reconcile_of_a_claim_whose_processing_file_was_replaced_writes_nothing(buckets, tmp_path):
    """Issue 8.2: a run whose processing file is another claim's must not answer for the manifest."""
    from cog_pipeline.run.rundir import ABANDONED

    claim = _claimed(buckets, tmp_path)
    buckets.input.put_bytes(claim.names.processing_key, b"another claim's bytes\n")
    with pytest.raises(ClaimLost):
        reconcile(claim.run_dir, input_store=buckets.input)
    assert (_result_keys(buckets), claim.run_dir.load().state) == ([], ABANDONED)
    assert buckets.input.read_bytes(claim.names.processing_key)[0] == b"another claim's bytes\n"


class _CrashAfterDeleting:
    """The input store, but the process 'dies' right after the processing file is deleted (before run.json)."""

    def __init__(self, store) -> None:
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def delete(self, key, if_match=None):
        self._store.delete(key, if_match=if_match)
        raise KeyboardInterrupt("crash after deleting " + key)


def test_a_reconcile_repeated_after_it_removed_its_processing_file_passes_the_fence(buckets, tmp_path):
    claim = _claimed(buckets, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        reconcile(claim.run_dir, input_store=_CrashAfterDeleting(buckets.input))
    assert claim.names.processing_key not in buckets.input_keys()
    result = reconcile(claim.run_dir, input_store=buckets.input)
    assert (result.failed, claim.run_dir.load().state, len(_result_keys(buckets))) == (2, "reconciled", 2)


def test_a_run_claimed_before_fencing_existed_reconciles(buckets, tmp_path):
    claim = _claimed(buckets, tmp_path)
    claim.run_dir.update(claim_token=None)
    buckets.input.put_bytes(claim.names.processing_key, b"rewritten by hand\n")
    assert reconcile(claim.run_dir, input_store=buckets.input).failed == 2
    assert claim.names.processing_key not in buckets.input_keys()


def test_a_scan_says_claim_lost_and_leaves_the_other_claims_processing_file(tmp_path):
    """The tick carries an unfinished run on; its fence fails: one 'claim lost:' line, exit 0, nothing written."""
    from click.testing import CliRunner

    from cog_pipeline.cli.main import main as cli
    from cog_pipeline.storage.store import StoreConfig

    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    store = open_store("in", StoreConfig(local_root=root))
    store.put_bytes("batch_raw.csv", MANIFEST.encode())
    claim = claim_one(store, store.head("batch_raw.csv"), work_dir=tmp_path / "work", output_bucket="out", store_config=StoreConfig(local_root=root))
    store.put_bytes(claim.names.processing_key, b"another claim's bytes\n")
    result = CliRunner().invoke(cli, ["scan", "--local-root", str(root), "--input-bucket", "in", "--output-bucket", "out", "-w", str(tmp_path / "work"), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("claim lost:")]
    assert len(lines) == 1 and "another scan claimed it" not in result.output
    assert [o.key for o in store.list("") if "_processed-" in o.key or "_failed-" in o.key] == []
    assert claim.run_dir.load().state == "abandoned"


class _TakenOverWhileCreating:
    """The real input store; right before our processing file is created, another scan takes the marker
    over exactly as `recover_claims` does after STALE_MARKER_AGE (one conditional delete of that version)."""

    def __init__(self, store, other_work: Path) -> None:
        self._store, self._other_work = store, other_work

    def __getattr__(self, name):
        return getattr(self._store, name)

    def create(self, key, data):
        if "processing-" in key:
            later = datetime.now(timezone.utc) + STALE_MARKER_AGE * 2
            actions = recover_claims(self._store, self._other_work, look(self._store, "*raw.csv"), now=later)
            assert any("stale" in a for a in actions), actions
        return self._store.create(key, data)


def test_a_scan_whose_marker_is_taken_over_mid_claim_says_claim_lost(tmp_path, monkeypatch):
    """Issue 8.2/8.3: not "another scan claimed it" (that is a marker we never held), and nothing is left."""
    from cog_pipeline import pipeline
    from cog_pipeline.pipeline import ScanOptions, scan
    from cog_pipeline.storage.store import StoreConfig

    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    config = StoreConfig(local_root=root)
    real_open = pipeline.open_store
    monkeypatch.setattr(pipeline, "open_store", lambda bucket, cfg: _TakenOverWhileCreating(real_open(bucket, cfg), tmp_path / "other-host") if bucket == "in" else real_open(bucket, cfg))
    open_store("in", config).put_bytes("batch_raw.csv", MANIFEST.encode())
    lines: list[str] = []
    report = scan(ScanOptions("in", "out", config, tmp_path / "work", progress=False), echo=lines.append)
    assert [line for line in lines if line.startswith("claim lost: batch_raw.csv")] and not any("another scan" in line for line in lines)
    assert (len(report.lost), report.claimed) == (1, [])
    keys = [o.key for o in open_store("in", config).list("")]
    assert keys == ["batch_raw.csv"] and list_run_dirs(tmp_path / "work") == []
