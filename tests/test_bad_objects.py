"""Issue 22.4: a bad object fails its own row or manifest, never the bucket or the tick.

Real folders and moto's HTTP S3 server, real rasters, a real stopped process holding a lock (SIGSTOP).
"""

from __future__ import annotations

import os
import time
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cog_pipeline.storage import locking
from cog_pipeline.examples import write_raster
from cog_pipeline.pipeline import ScanOptions, scan
from cog_pipeline.storage.store import LOCK_FILE, StoreConfig, StoreError
from tests.conftest import config_with


def _options(buckets, tmp_path: Path, **kw) -> ScanOptions:
    return ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "work",
                       progress=False, **kw, config=config_with(workers=1))


def _file(buckets, kind: str) -> str:
    keys = [k for k in buckets.input_keys() if f"_{kind}-" in k]
    return "".join(buckets.input.read_bytes(k)[0].decode("utf-8", "replace") for k in sorted(keys))


def _good_image(buckets, tmp_path: Path, key: str = "good.tif") -> None:
    write_raster(tmp_path / "good.tif", bands=1, size=64)
    buckets.put_file(key, tmp_path / "good.tif")


def test_oversized_keys_and_fields_fail_their_own_rows(buckets, tmp_path):
    """A 300-byte folder name (ENAMETOOLONG), a 2 MB line (S3 414) and a 5,000-digit band count used to fail
    the preflight (or the tick) every time, so not even the good row was ever answered."""
    _good_image(buckets, tmp_path)
    rows = [
        "good.tif,1",
        f"{'d' * 300}/a.tif,1",
        f"{'k' * (2 * 1024 * 1024)}.tif,1",
        "good2.tif," + "9" * 5000,
    ]
    buckets.put_text("x_raw.csv", "\n".join(rows) + "\n")
    report = scan(_options(buckets, tmp_path), echo=lambda _m: None)
    assert report.errors == [] and len(report.reconciled) == 1
    processed = [k for k in buckets.input_keys() if "_processed-" in k]
    assert buckets.input.read_bytes(processed[0])[0].decode() == "good.tif,1\n"
    reasons = _file(buckets, "failed")
    assert "path segment of the key is 300 bytes" in reasons
    assert "longer than an object key can be" in reasons
    assert "out of range 1-1024" in reasons
    failed = [k for k in buckets.input_keys() if "_failed-" in k and not k.endswith("-reasons.csv")]
    assert buckets.input.read_bytes(failed[0])[0].decode().splitlines() == rows[1:]


@pytest.mark.parametrize("timestamp", ["../../x", "2026\x01", "9" * 5000], ids=["dotdot", "control", "long"])
def test_a_malformed_claim_marker_is_quarantined_and_the_manifest_claimed(buckets, tmp_path, timestamp):
    """Such a marker used to make every scan of the bucket exit 1, so no manifest there was processed again."""
    import json

    _good_image(buckets, tmp_path)
    buckets.put_text("x_raw.csv", "good.tif,1\n")
    marker = json.dumps({"timestamp": timestamp})
    buckets.put_text("x_raw.csv.claim", marker)
    lines: list[str] = []
    report = scan(_options(buckets, tmp_path), echo=lines.append)
    assert report.errors == [] and len(report.reconciled) == 1
    assert any(line.startswith("warning: quarantined claim marker x_raw.csv.claim") for line in lines), lines
    assert "x_raw.csv.claim" not in buckets.input_keys()
    assert buckets.input.read_bytes("x_raw.csv.claim.quarantined")[0].decode() == marker
    assert _file(buckets, "processed") == "good.tif,1\n"


def _put_misnamed(buckets, data: bytes) -> None:
    """A manifest whose name holds the byte 0xE9 (Latin-1 'é'), which is not UTF-8: on a folder bucket a file of
    that name; on S3 a PUT whose path says %E9 (boto3 cannot send such a key, another client can)."""
    if buckets.kind == "folder":
        with open(os.fsencode(buckets.input.base) + b"/caf\xe9_raw.csv", "wb") as fh:
            fh.write(data)
        return
    import http.client
    from urllib.parse import urlsplit

    endpoint = urlsplit(buckets.config.endpoint)
    conn = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
    conn.request("PUT", f"/{buckets.input_bucket}/caf%E9_raw.csv", body=data)
    assert conn.getresponse().status == 200
    conn.close()


def test_a_manifest_name_that_is_not_utf8_fails_that_manifest_and_the_tick_goes_on(buckets, tmp_path):
    """Such a name used to be refused (folders) or to end the tick in a traceback after the claim, on every
    tick: its rows were never answered. Now the manifest is answered with a failed file named from the name's
    safe rendering (U+FFFD for each byte that is not UTF-8, as S3 clients list it), a reason per row, and the
    tick's other manifest is converted."""
    _good_image(buckets, tmp_path)
    rows = [b"good.tif,1", b"other.tif,3", b"big.tif," + b"9" * 5000, b"caf\xe9.tif,1"]
    _put_misnamed(buckets, b"\n".join(rows) + b"\n")
    buckets.put_text("ok_raw.csv", "good.tif,1\n")
    lines: list[str] = []
    report = scan(_options(buckets, tmp_path), echo=lines.append)
    assert report.errors == [] and report.refused == [], (report.errors, report.refused)
    assert len(report.reconciled) == 2, lines
    keys = buckets.input_keys()
    processed = [k for k in keys if "_processed-" in k]
    assert [k.split("_")[0] for k in processed] == ["ok"], keys  # only the good manifest of the same tick
    assert buckets.input.read_bytes(processed[0])[0] == b"good.tif,1\n"
    failed = [k for k in keys if k.startswith("caf\ufffd_failed-") and not k.endswith("-reasons.csv")]
    assert len(failed) == 1, keys
    assert buckets.input.read_bytes(failed[0])[0] == b"\n".join(rows) + b"\n"  # every row, byte for byte
    import csv
    import io

    reasons_key = failed[0][: -len(".csv")] + "-reasons.csv"
    table = list(csv.DictReader(io.StringIO(buckets.input.read_bytes(reasons_key)[0].decode("utf-8"))))
    assert [int(r["line"]) for r in table] == [1, 2, 3, 4]
    assert all("not UTF-8" in r["reason"] for r in table[:2]), table
    assert "out of range 1-1024" in table[2]["reason"] and "not valid UTF-8" in table[3]["reason"], table
    # Answered once: the misnamed manifest is gone (its rows are in the failed file), no processing file is left,
    # and the next tick finds nothing more to do with it.
    assert not [k for k in keys if "raw.csv" in k or "processing" in k or k.endswith(".claim")], keys
    if buckets.kind == "folder":
        assert not os.path.exists(os.fsencode(buckets.input.base) + b"/caf\xe9_raw.csv")
    again = scan(_options(buckets, tmp_path), echo=lines.append)
    assert again.claimed == [] and again.reconciled == [] and again.errors == []
    assert sorted(buckets.input_keys()) == sorted(keys)


def test_a_misnamed_manifest_whose_claim_was_interrupted_is_failed_by_the_next_tick_not_converted(buckets, tmp_path, monkeypatch):
    """The process dies between the claim and failing the manifest (a BaseException stands in for the death):
    the next tick carries it on, and its preflight fails every row with the reason: nothing is converted."""
    import cog_pipeline.pegasus.workflow_gen as workflow_gen

    _good_image(buckets, tmp_path)
    _put_misnamed(buckets, b"good.tif,1\n")

    def dies(*_a, **_k):
        raise KeyboardInterrupt("killed after the claim")

    with monkeypatch.context() as patched:
        patched.setattr(workflow_gen, "generate", dies)
        with pytest.raises(KeyboardInterrupt):
            scan(_options(buckets, tmp_path), echo=lambda _m: None)
    assert [k for k in buckets.input_keys() if k.startswith("caf\ufffd_processing-")]
    lines: list[str] = []
    report = scan(_options(buckets, tmp_path), echo=lines.append)
    assert report.errors == [] and len(report.resumed) == 1 == len(report.reconciled), lines
    assert any(line.startswith("reconciled caf\ufffd_raw.csv: 0 processed, 1 failed") for line in lines), lines
    keys = buckets.input_keys()
    assert not [k for k in keys if "_processed-" in k or "processing" in k], keys
    (failed,) = [k for k in keys if "_failed-" in k and not k.endswith("-reasons.csv")]
    assert buckets.input.read_bytes(failed)[0] == b"good.tif,1\n"
    assert buckets.output_keys() == []  # nothing converted


def test_a_lock_held_by_a_stopped_scan_is_waited_for_a_bounded_time_and_named(tmp_path, monkeypatch):
    """A scan stopped (SIGSTOP) while holding a folder bucket's lock used to block every other scan, silently."""
    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "in" / "x_raw.csv").write_text("a.tif,1\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import fcntl, os, signal, sys\n"
            f"fh = open({str(root / 'in' / LOCK_FILE)!r}, 'a+b')\n"
            "fcntl.flock(fh.fileno(), fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGSTOP)\n"
        )],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(locking, "LOCK_WAIT", 1.0)
        options = ScanOptions("in", "out", StoreConfig(local_root=root), tmp_path / "work", progress=False, config=config_with(workers=1))
        with pytest.raises(StoreError, match=r"waited 1 s for the lock of folder bucket 'in' \(.*\); the process holding it is stalled"):
            scan(options, echo=lambda _m: None)
        assert (root / "in" / "x_raw.csv").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)


def test_a_lock_wait_in_another_process_ends_after_its_bound_and_names_the_lock(tmp_path):
    """Between two real processes: the waiter gives up after its bound with the lock's name, never hangs."""
    from cog_pipeline.storage.locking import held

    path = tmp_path / "lock"
    with held(path, "the test's lock"):
        other = subprocess.run(
            [sys.executable, "-c", (
                "from pathlib import Path\nfrom cog_pipeline.storage.locking import held\n"
                f"with held(Path({str(path)!r}), 'the test lock', timeout=0.5):\n    pass\n"
            )],
            capture_output=True, text=True, timeout=60,
        )
    assert other.returncode == 1 and f"LockTimeout: waited 0 s for the test lock ({path})" in other.stderr



def test_a_misnamed_manifest_whose_claimant_died_is_answered_once_across_work_dirs(tmp_path, monkeypatch):
    """Host A claims a manifest whose name is not UTF-8 and dies after its processing file (its marker goes
    stale). Host B (another work dir) completes A's claim on the bucket side, which must remove the raw file by
    the name it is listed under, not by its UTF-8 rendering: else B claims it again and its rows are answered
    twice. A's next tick then answers it, once."""
    import cog_pipeline.run.claim as claim_module
    from cog_pipeline.storage.store import StoreConfig

    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    with open(os.fsencode(root / "in") + b"/caf\xe9_raw.csv", "wb") as fh:
        fh.write(b"good.tif,1\n")

    def host(name: str) -> ScanOptions:
        return ScanOptions("in", "out", StoreConfig(local_root=root), tmp_path / name, progress=False, config=config_with(workers=1))

    def dies(*_a, **_k):
        raise KeyboardInterrupt("host A died after its processing file")

    with monkeypatch.context() as patched:
        patched.setattr(claim_module, "_finish_claim", dies)
        with pytest.raises(KeyboardInterrupt):
            scan(host("a"), echo=lambda _m: None)
    names = os.listdir(os.fsencode(root / "in"))
    assert b"caf\xe9_raw.csv" in names and any(b"_processing-" in n for n in names), names
    monkeypatch.setenv("COG_PIPELINE_STALE_MARKER_AGE", "1")
    time.sleep(2.1)  # A's marker is now stale
    lines: list[str] = []
    report_b = scan(host("b"), echo=lines.append)
    assert report_b.claimed == [] and b"caf\xe9_raw.csv" not in os.listdir(os.fsencode(root / "in")), lines
    report_a = scan(host("a"), echo=lambda _m: None)
    assert len(report_a.reconciled) == 1
    failed = [n for n in os.listdir(os.fsencode(root / "in")) if b"_failed-" in n and not n.endswith(b"-reasons.csv")]
    assert len(failed) == 1, failed
