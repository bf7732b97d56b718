"""Which object keys the REAL Pegasus worker tools can carry, measured against a real HTTP S3 server (moto).

A key reaches Pegasus only inside a PFN: jobs name their files with job-local LFNs (``ID0000001.in.tif``).
Every key is fed to the real ``pegasus-transfer`` (from the ``pegasus-wms.worker`` wheel, which calls the real
``pegasus-s3`` by name on PATH) in the transfer list the 5.1.2 planner writes into PegasusLite's stage-in
heredoc and each stage-out job's ``.in`` file: its JSON text with each URL pasted in unescaped, as that
planner writes it (tests/production/ checks the same keys against the real planner's own files), and URLs
built by the project's own ``replicas.catalog.s3_url``:

* stage-in: the input PFN ``s3://cog@storage/<in>/<key>`` to the job-local file ``ID<n>.in.tif``, which must
  arrive byte for byte;
* stage-out (``s3 -> s3``, what a nonsharedfs stage-out job does): the job-local scratch object
  ``.../ID<n>.tif`` to the output PFN, which must land at exactly that key (checked with a boto3 listing).

``replicas.pegasus_keys.pegasus_key_problem`` is the rule the pegasus engine applies at preflight. The last
test ties it to these measurements: the rule refuses a key exactly when a real tool fails on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cog_pipeline.replicas.catalog import s3_url
from cog_pipeline.replicas.pegasus_keys import pegasus_key_problem

SITE = "storage"
IDENTITY = "cog"

LONG_KEY = "long/" + "/".join(["x" * 99] * 9)[: 900 - len("long/") - len(".tif")] + ".tif"
assert len(LONG_KEY) == 900

# (test id, key). Keys mirror real county/aerial folder names plus every character suspected of trouble.
KEYS: list[tuple[str, str]] = [
    ("plain", "Counties/WI/Wood/plain.tif"),
    ("space-eau-claire", "Counties/WI/Eau Claire/x.tif"),
    ("space-fond-du-lac", "Counties/WI/Fond du Lac/x.tif"),
    ("space-st-croix", "Counties/WI/St. Croix/x.tif"),
    ("non-ascii-facade", "Façade/x.tif"),
    ("non-ascii-otsu", "Ōtsu/x.tif"),
    ("comma", "a,b/x.tif"),
    ("plus", "a+b/x.tif"),
    ("percent", "a%20b/x.tif"),
    ("ampersand", "a&b/x.tif"),
    ("equals", "a=b/x.tif"),
    ("paren", "a(1)/x.tif"),
    ("bracket", "a[1]/x.tif"),
    ("at", "a@b/x.tif"),
    ("quote", "O'Brien/x.tif"),
    ("hash", "a#b/x.tif"),
    ("question", "a?b/x.tif"),
    ("long-900", LONG_KEY),
    ("double-quote", 'a"b/x.tif'),
    ("semicolon", "a;b/x.tif"),
    ("backslash", "a\\b/x.tif"),
    ("star", "a*b/x.tif"),
    ("dollar", "a$HOME/x.tif"),
    ("dollar-brace", "a${HOME}b/x.tif"),
    ("backtick", "a`b`/x.tif"),
    ("tilde", "~a/x.tif"),
    ("leading-space", " a/x.tif"),
    ("trailing-space", "a/x.tif "),
    ("double-slash", "a//b/x.tif"),
    ("tab", "a\tb/x.tif"),
    ("colon", "a:b/x.tif"),
    ("exclamation", "a!b/x.tif"),
    ("pipe", "a|b/x.tif"),
    ("angle", "a<b>/x.tif"),
    ("caret-brace", "a^{b}/x.tif"),
    ("long-segment-300", "seg/" + "y" * 296 + ".tif"),
    ("long-segment-255-bytes", "seg/" + "y" * 251 + ".tif"),
    ("dollar-digit", "price$5/x.tif"),
    ("dollar-one-letter", "a$b/x.tif"),
    ("nbsp", "a\u00a0b/x.tif"),
    ("em-space", "a\u2003b/x.tif"),
    ("trailing-nbsp", "a/x.tif\u00a0"),
    ("brace-only", "a{b}/x.tif"),
]


def _pegasus_cli() -> Path:
    try:
        import Pegasus.transfer  # noqa: F401 - only present with the pegasus-wms.worker wheel
        import Pegasus
    except ImportError:
        pytest.skip("pegasus-wms.worker is not installed (pip install -e '.[test]'): no real pegasus-transfer")
    cli = Path(Pegasus.__file__).parent / "cli"
    if not (cli / "pegasus-transfer.py").is_file() or not (cli / "pegasus-s3.py").is_file():
        pytest.skip(f"{cli} has no pegasus-transfer.py / pegasus-s3.py")
    return cli


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> Path:
    """A folder of two-line wrappers so pegasus-transfer finds pegasus-s3 on PATH, as on a worker."""
    cli = _pegasus_cli()
    folder = tmp_path_factory.mktemp("pegasus-bin")
    for name in ("pegasus-transfer", "pegasus-s3"):
        wrapper = folder / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{cli / (name + ".py")}" "$@"\n')
        wrapper.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def s3_env(s3_server, tools, tmp_path_factory) -> dict:
    """Buckets, a PEGASUS_CREDENTIALS file as replicas/credentials.py renders it (mode 0600) and the env."""
    import boto3

    from cog_pipeline.replicas.credentials import render_credentials

    folder = tmp_path_factory.mktemp("pegasus-creds")
    cred = folder / "credentials.conf"
    fd = os.open(cred, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(render_credentials(SITE, IDENTITY, s3_server, "us-east-1", "testing-access-key", "testing-secret-key"))
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    buckets = {"in": f"peg-in-{os.getpid()}", "out": f"peg-out-{os.getpid()}", "scratch": f"peg-scratch-{os.getpid()}"}
    for name in buckets.values():
        client.create_bucket(Bucket=name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEGASUS_")}
    env.update(PATH=f"{tools}{os.pathsep}{env.get('PATH', '')}", PEGASUS_CREDENTIALS=str(cred), HOME=str(folder))
    return {"client": client, "buckets": buckets, "env": env}


def _entry(n: int, lfn: str, src: tuple[str, str], dst: tuple[str, str]) -> str:
    """One transfer of the list, as the 5.1.2 planner writes it: its values pasted between quotes, unescaped."""
    return (
        f' {{ "type": "transfer",\n   "linkage": "input",\n   "lfn": "{lfn}",\n   "id": {n},\n'
        f'   "src_urls": [\n     {{ "site_label": "{src[0]}", "url": "{src[1]}" }}\n   ],\n'
        f'   "dest_urls": [\n     {{ "site_label": "{dst[0]}", "url": "{dst[1]}" }}\n   ] }}\n'
    )


def _run_transfer(env: dict, entries: list[str], work: Path) -> subprocess.CompletedProcess:
    """Run the real pegasus-transfer on one transfer list (one try per pair, so a failure is not retried)."""
    listing = work / "transfer.in"
    listing.write_text("[\n" + " ,\n".join(entries) + "]\n", encoding="utf-8")
    return subprocess.run(
        ["pegasus-transfer", "-m", "1", "-n", "4", "--file", str(listing)],
        env=env, cwd=work, capture_output=True, text=True, timeout=600,
    )


def _keys_in(client, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _payload(direction: str, key: str) -> bytes:
    return f"{direction} {key}\n".encode("utf-8") * 7


def measure(s3_env: dict, keys: list[str], work: Path) -> dict[str, dict[str, str | None]]:
    """Per key and direction: None when the real tools carried it exactly, else what went wrong.

    Each key gets its own transfer list and pegasus-transfer run, as each job has its own (a list the key
    breaks fails only that job), and its own output bucket, so where a mangled upload landed is attributable.
    """
    from concurrent.futures import ThreadPoolExecutor

    client, env = s3_env["client"], s3_env["env"]
    src_bucket, scratch_bucket = s3_env["buckets"]["in"], s3_env["buckets"]["scratch"]

    def one(n: int, key: str) -> dict[str, str | None]:
        out_bucket, job = f"{s3_env['buckets']['out']}-{n}", f"ID{n:07d}"
        client.create_bucket(Bucket=out_bucket)
        client.put_object(Bucket=src_bucket, Key=key, Body=_payload("stage-in", key))
        scratch = f"pegasus-scratch/run0001/{job}.tif"
        client.put_object(Bucket=scratch_bucket, Key=scratch, Body=_payload("s3-copy", key))
        folder = work / job
        folder.mkdir()
        target = folder / f"{job}.in.tif"
        _run_transfer(env, [
            # stage-in: input PFN -> the job-local input file (what PegasusLite does on the worker)
            _entry(1, f"{job}.in.tif", (SITE, s3_url(src_bucket, key, identity=IDENTITY, site=SITE)), ("local", "file://" + str(target))),
            # stage-out: the job-local scratch object -> the output PFN (what a nonsharedfs stage-out job does)
            _entry(2, f"{job}.tif", (SITE, s3_url(scratch_bucket, scratch, identity=IDENTITY, site=SITE)),
                   (SITE, s3_url(out_bucket, key, identity=IDENTITY, site=SITE))),
        ], folder)
        arrived = target.is_file() and target.read_bytes() == _payload("stage-in", key)
        landed = _keys_in(client, out_bucket)
        copied = landed == [key] and client.get_object(Bucket=out_bucket, Key=key)["Body"].read() == _payload("s3-copy", key)
        return {
            "stage-in": None if arrived else ("bytes differ" if target.is_file() else "no file arrived"),
            "stage-out": None if copied else f"landed at {landed!r}",
        }

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(keys, pool.map(one, range(1, len(keys) + 1), keys)))


@pytest.fixture(scope="module")
def real_results(s3_env, tmp_path_factory) -> dict[str, dict[str, str | None]]:
    """Every key of KEYS measured once per module with the real tools, one pegasus-transfer run per key."""
    return measure(s3_env, [key for _, key in KEYS], tmp_path_factory.mktemp("xfer"))


@pytest.mark.slow
def test_plain_key_round_trips_with_the_real_tools(real_results):
    """The harness itself works: a plain key stages in, out and across with the real tools."""
    assert real_results["Counties/WI/Wood/plain.tif"] == {"stage-in": None, "stage-out": None}


@pytest.mark.slow
@pytest.mark.parametrize("key", [k for _, k in KEYS], ids=[i for i, _ in KEYS])
def test_rule_refuses_exactly_the_keys_the_real_tools_fail_on(real_results, key):
    from cog_pipeline.run.manifest import check_key

    if check_key(key):
        pytest.skip(f"the manifest refuses {key!r} for every engine ({check_key(key)}): it never reaches Pegasus")
    results = real_results[key]
    failed = {direction: why for direction, why in results.items() if why is not None}
    problem = pegasus_key_problem(key)
    print(f"{key!r}: real={failed or 'ok'} rule={problem!r}")
    assert (problem is not None) == bool(failed), f"real tools: {failed or 'all ok'}; rule: {problem!r}"


def test_refusal_names_the_character_and_the_way_out():
    reason = pegasus_key_problem("Counties/O'Brien/x.tif")
    assert reason is not None and "'" in reason and "rename the object, or run this manifest with --engine local" in reason
    assert pegasus_key_problem("Counties/WI/Eau Claire/x.tif") is None


@pytest.mark.slow
def test_real_cleanup_cannot_remove_a_scratch_key_with_a_space(s3_env, tmp_path):
    """Measured, not refused: pegasus-s3 ``rm -F`` splits its URL list on whitespace, so a per-file cleanup
    job (``--cleanup leaf`` on an S3 staging site) fails for keys with spaces, and the scratch copy stays.
    The outputs are already at their keys by then, so rows are still processed; the planner must not rely on
    per-file S3 cleanup (plan with ``--cleanup none`` and remove the run's scratch prefix another way)."""
    client, bucket = s3_env["client"], s3_env["buckets"]["scratch"]
    outcome = {}
    for key in ("cleanup/plain.tif", "cleanup/Eau Claire/x.tif"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
        listing = [{"type": "remove", "target": {"site_label": SITE, "url": s3_url(bucket, key, identity=IDENTITY, site=SITE), "recursive": False}}]
        (tmp_path / "rm.in").write_text(json.dumps(listing))
        done = subprocess.run(["pegasus-transfer", "-m", "1", "--file", str(tmp_path / "rm.in")],
                              env=s3_env["env"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        outcome[key] = (done.returncode, key in _keys_in(client, bucket))
        client.delete_object(Bucket=bucket, Key=key)
    assert outcome == {"cleanup/plain.tif": (0, False), "cleanup/Eau Claire/x.tif": (1, True)}
