"""The operator's world around a tick: the tick history, notifications (a real SMTP server and a real HTTP server on
127.0.0.1), `--json`'s schema version and errors, warnings kept off the terminal, and the `status` / `report` /
`scan` messages (issue 21)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from cog_pipeline.cli.main import main
from cog_pipeline.cli.operator import render_status_table
from cog_pipeline.cli.tick_log import SCHEMA_VERSION, prometheus_text, read_history

KEY = "Counties/Eau Claire/byte.tif"


def _buckets(shared_testdata: Path, root: Path, *, rows: str | None = None) -> list[str]:
    (root / "in" / KEY).parent.mkdir(parents=True, exist_ok=True)
    (root / "out").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared_testdata / "rasterio" / "byte.tif", root / "in" / KEY)
    (root / "in" / "m_raw.csv").write_text(rows if rows is not None else f"{KEY},1\nnot-uploaded.tif,1\n", encoding="utf-8")
    return ["scan", "--input-bucket", "in", "--output-bucket", "out", "--local-root", str(root), "-w", str(root / "work"), "--workers", "1"]


def _profile(path: Path, **notify: object) -> Path:
    lines = ["[notify]"] + [f"{k} = {json.dumps(v)}" for k, v in notify.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# The tick history, --json, Prometheus

@pytest.mark.slow
def test_every_tick_appends_one_versioned_timestamped_line_and_json_prints_the_same_record(shared_testdata, tmp_path):
    root = tmp_path / "b"
    prom = tmp_path / "cog.prom"
    args = [*_buckets(shared_testdata, root), "--config", str(_profile(tmp_path / "p.toml", prometheus_textfile=str(prom)))]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    second = CliRunner().invoke(main, args)  # nothing to claim: still a line
    assert second.exit_code == 0, second.output
    first, last = read_history(root / "work")
    assert first == printed
    assert first["schema_version"] == last["schema_version"] == SCHEMA_VERSION
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["started"]) and first["ended"] >= first["started"]
    assert first["counts"] == {"claimed": 1, "resumed": 0, "reconciled": 1, "in_flight": 0, "errors": 0, "rows_processed": 1, "rows_failed": 1}
    (run,) = first["runs"]
    assert (run["manifest_key"], run["processed"], run["failed"]) == ("m_raw.csv", 1, 1) and run["failed_key"].startswith("m_failed-")
    assert last["counts"]["claimed"] == 0 and last["error"] is None and last["runs"] == []
    text = prom.read_text()
    assert 'cog_pipeline_last_tick{count="rows_failed"} 0' in text and "cog_pipeline_tick_error 0" in text  # the last tick's


def test_prometheus_text_has_one_sample_per_count():
    record = {"ended": "2026-12-07T10:00:00Z", "error": "boom", "counts": {"claimed": 2, "rows_failed": 5}}
    text = prometheus_text(record)
    assert 'cog_pipeline_last_tick{count="rows_failed"} 5' in text and "cog_pipeline_tick_error 1" in text
    assert "cog_pipeline_tick_timestamp_seconds 1796637600" in text


def test_a_fatal_error_under_json_is_json_on_stdout_and_a_line_in_the_history(tmp_path):
    (tmp_path / "in").mkdir()
    args = ["scan", "--input-bucket", "in", "--output-bucket", "nope", "--local-root", str(tmp_path), "-w", str(tmp_path / "work"), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["schema_version"] == SCHEMA_VERSION and out["exit_code"] == 1 and "nope" in out["error"]
    (line,) = read_history(tmp_path / "work")
    assert line["error"] == out["error"] and line["counts"]["errors"] == 1


def test_a_usage_error_under_json_is_json_too(tmp_path):
    result = CliRunner().invoke(main, ["scan", "--input-bucket", "a", "--output-bucket", "a", "--local-root", str(tmp_path), "--json"])
    assert result.exit_code == 2
    assert "overwrite" in json.loads(result.stdout)["error"]


# ---------------------------------------------------------------------------------------------------------------
# Notifications: a real SMTP server and a real HTTP server on 127.0.0.1

@pytest.fixture()
def smtp_sink():
    from aiosmtpd.controller import Controller

    class Sink:
        def __init__(self) -> None:
            self.messages: list[tuple[str, list[str], bytes]] = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 OK"

    sink = Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@pytest.fixture()
def webhook_sink():
    received: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's hook name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(500 if self.path.startswith("/broken") else 204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_tick_with_failed_rows_sends_an_email_and_posts_the_webhook(shared_testdata, tmp_path, smtp_sink, webhook_sink):
    sink, smtp_port = smtp_sink
    received, http_port = webhook_sink
    profile = _profile(tmp_path / "p.toml", email_to="ops@example.org, gis@example.org", email_from="cog@example.org",
                       smtp_host="127.0.0.1", smtp_port=smtp_port, webhook_url=f"http://127.0.0.1:{http_port}/hook?token=s3cret")
    result = CliRunner().invoke(main, [*_buckets(shared_testdata, tmp_path / "b"), "--config", str(profile)])
    assert result.exit_code == 0, result.output
    ((sender, recipients, content),) = sink.messages
    assert (sender, recipients) == ("cog@example.org", ["ops@example.org", "gis@example.org"])
    text = content.decode()
    assert "Subject: cog-pipeline: 1 row(s) failed, 1 processed (m_raw.csv)" in text
    assert re.search(r"m_failed-\d{8}-\d{6}-reasons\.csv", text) and "report: " in text
    ((path, content_type, body),) = received
    assert path == "/hook?token=s3cret" and content_type == "application/json"
    posted = json.loads(body)
    assert posted == read_history(tmp_path / "b" / "work")[0]
    assert "s3cret" not in result.output  # the webhook's token is never printed
    # A clean tick (no failed rows) sends nothing: nobody is woken for good news.
    (tmp_path / "b" / "in" / "m_raw.csv").write_text(f"{KEY},1\n", encoding="utf-8")
    assert CliRunner().invoke(main, [*_buckets(shared_testdata, tmp_path / "b", rows=f"{KEY},1\n"), "--config", str(profile)]).exit_code == 0
    assert len(sink.messages) == 1 and len(received) == 1


def test_unreachable_mail_and_a_failing_webhook_are_one_warning_each_and_never_print_the_url(tmp_path, webhook_sink):
    from cog_pipeline.config import Notify
    from cog_pipeline.cli.notify import notify

    _, http_port = webhook_sink
    closed = _free_port()
    record = {"counts": {"rows_failed": 1, "rows_processed": 0, "errors": 0}, "runs": [], "error": None,
              "started": "s", "ended": "e", "work_dir": "w"}
    lines: list[str] = []
    sent = notify(Notify(email_to="a@example.org", smtp_host="127.0.0.1", smtp_port=closed, timeout_s=2,
                         webhook_url=f"http://127.0.0.1:{http_port}/broken?token=s3cret"), record, lines.append)
    assert sent == []
    assert len(lines) == 2 and all(ln.startswith("warning: ") and "\n" not in ln for ln in lines)
    assert "HTTP 500" in lines[1] and "s3cret" not in " ".join(lines)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_notify_settings_are_checked_and_the_webhook_is_hidden_in_config_show(tmp_path):
    bad = _profile(tmp_path / "bad.toml", on="sometimes")
    result = CliRunner().invoke(main, ["config", "show", "--config", str(bad)])
    assert result.exit_code == 2 and "notify.on must be one of failures, always, never" in result.output
    good = _profile(tmp_path / "good.toml", webhook_url="https://hooks.example.org/T0/B0/s3cret")
    shown = CliRunner().invoke(main, ["config", "show", "--config", str(good)]).output
    assert 'webhook_url = "<set, hidden>"  # file ' in shown and "s3cret" not in shown


# ---------------------------------------------------------------------------------------------------------------
# Warnings to the log, the report path on stdout

def test_warnings_raised_inside_a_tick_are_lines_in_the_log(shared_testdata, tmp_path, capfd):
    import warnings

    import rasterio

    from cog_pipeline.cli.warnings_log import warnings_to_log

    with warnings_to_log(tmp_path / "work") as log:
        warnings.simplefilter("always")
        with rasterio.open(shared_testdata / "seed" / "1band.tif") as src:  # no georeferencing: rasterio warns
            src.transform  # noqa: B018
    out, err = capfd.readouterr()
    assert "Warning" not in out + err
    text = log.read_text()
    assert "NotGeoreferencedWarning" in text and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text)
    assert len(text.splitlines()) >= 1 and log == tmp_path / "work" / "cog-pipeline.log"


@pytest.mark.slow
def test_a_scan_of_images_without_georeferencing_prints_no_warning_and_ends_with_its_report(shared_testdata, tmp_path):
    pytest.importorskip("rio_stac")
    root = tmp_path / "b"
    args = _buckets(shared_testdata, root)
    # The seed image has no georeferencing: rio-stac warns about it while the STAC Item is written.
    shutil.copyfile(shared_testdata / "seed" / "1band.tif", root / "in" / KEY)
    proc = subprocess.run([sys.executable, "-m", "cog_pipeline", *args, "--stac"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"report: {next((root / 'work').glob('workflow-run-*'))}/report.html"
    assert "report:" not in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# status and report

def test_status_of_a_work_dir_that_does_not_exist_is_an_error(tmp_path):
    result = CliRunner().invoke(main, ["status", "-w", str(tmp_path / "nonexistent")])
    assert result.exit_code == 1
    assert result.output == f"error: work directory {tmp_path / 'nonexistent'} does not exist (give -w WORK_DIR, where the workflow-run-<TS>/ directories are)\n"


def test_report_of_a_work_dir_refuses_and_names_a_run(tmp_path):
    (tmp_path / "workflow-run-20261207-100000").mkdir()
    (tmp_path / "workflow-run-20261207-100000" / "run.json").write_text("{}")
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not a run directory (no run.json); it holds 1 run(s), e.g." in result.output
    assert not (tmp_path / "report.html").exists()


LONG_ROW = {"run": "workflow-run-20261207-101500", "manifest": "Counties/Eau Claire/very-long-manifest-name_raw.csv",
            "state": "reconciled", "rows": 1200, "done": 1190, "failed": 10, "age": "3h", "engine": "local",
            "where": "/home/operator/cog-work/workflow-run-20261207-101500/report.html"}


@pytest.mark.parametrize("width", [80, 120])
def test_status_table_never_breaks_a_word_and_prints_where_in_full(width):
    table = render_status_table([LONG_ROW, {**LONG_ROW, "age": "45s"}], width=width)
    lines = table.splitlines()
    assert all(len(line) <= width for line in lines if not line.startswith("workflow-run-"))
    body = [ln for ln in lines if ln.startswith("20261207-101500 ")]
    assert len(body) == 2  # one line per run: nothing wrapped onto a second line
    for line in body:
        cells = re.split(r"\s{2,}", line.strip())
        assert cells[0] == "20261207-101500" and cells[2:6] == ["reconciled", "1200", "1190", "10"]
        assert LONG_ROW["manifest"].startswith(cells[1].rstrip("…"))  # cut with an ellipsis if at all, never folded
    assert (width >= 120) == (LONG_ROW["manifest"] in table)
    assert f"{LONG_ROW['run']}: {LONG_ROW['where']}" in lines


@pytest.mark.slow
def test_status_shows_one_table_with_the_manifest_rows_and_one_age_format(shared_testdata, tmp_path):
    root = tmp_path / "b"
    assert CliRunner().invoke(main, _buckets(shared_testdata, root)).exit_code == 0
    result = CliRunner().invoke(main, ["status", "-w", str(root / "work")])
    assert result.exit_code == 0
    headers = [ln for ln in result.output.splitlines() if ln.startswith("run ") and "manifest" in ln]
    assert len(headers) == 1 and "m_raw.csv" in result.output
    (row,) = json.loads(CliRunner().invoke(main, ["status", "-w", str(root / "work"), "--json"]).stdout)["runs"]
    assert (row["manifest"], row["rows"], row["done"], row["failed"]) == ("m_raw.csv", 2, 1, 1)
    assert re.fullmatch(r"\d+[smhd]", row["age"])


# ---------------------------------------------------------------------------------------------------------------
# Endpoints, profiles, extras

@pytest.mark.slow  # botocore retries the TLS failure (about 35 s) before it reaches us
def test_an_https_endpoint_that_speaks_http_is_one_line_naming_the_fix(s3_server, tmp_path):
    host = s3_server.removeprefix("http://")
    result = CliRunner().invoke(main, ["scan", "--input-bucket", "in", "--output-bucket", "out", "-e", host, "-w", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == f"error: https://{host} does not answer over https (TLS failed); if it serves plain http, give -e http://{host}\n"


def test_profile_takes_keys_and_region_from_the_aws_files(s3_server, bucket_name, tmp_path, monkeypatch):
    import boto3

    (tmp_path / "config").write_text("[profile ops]\nregion = eu-west-2\n")
    (tmp_path / "credentials").write_text("[ops]\naws_access_key_id = opskey\naws_secret_access_key = opssecret\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    from cog_pipeline.storage.store import StoreConfig, StoreError

    client = StoreConfig(endpoint=s3_server, profile="ops").s3_client()
    assert client.meta.region_name == "eu-west-2"
    assert client._request_signer._credentials.access_key == "opskey"
    admin = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    for name in (bucket_name, bucket_name + "x"):
        admin.create_bucket(Bucket=name)
    result = CliRunner().invoke(main, ["scan", "--input-bucket", bucket_name, "--output-bucket", bucket_name + "x", "-e", s3_server,
                                       "--profile", "ops", "-w", str(tmp_path / "w"), "--dry-run"])
    assert (result.exit_code, result.output) == (0, "nothing to claim\n")
    with pytest.raises(StoreError, match="AWS profile 'nobody' is not in the AWS config or credentials files"):
        StoreConfig(endpoint=s3_server, profile="nobody").s3_client()
    result = CliRunner().invoke(main, ["scan", "--input-bucket", "a", "--output-bucket", "b", "--profile", "ops", "--local-root", str(tmp_path)])
    assert result.exit_code == 2 and "--profile" in result.output


def test_the_stac_extra_is_installed_from_the_checkout(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "rio_stac", None)  # as if the extra were not installed
    result = CliRunner().invoke(main, ["scan", "--input-bucket", "a", "--output-bucket", "b", "--local-root", str(tmp_path), "--stac"])
    assert result.exit_code == 2 and "pip install -e '.[stac]'" in result.output


def test_no_doc_or_message_installs_the_unregistered_package_name():
    repo = Path(__file__).resolve().parents[1]
    code = [p for folder in ("cog_pipeline", "crondor", "pegasus", "replicas", "transformations") for p in repo.glob(f"{folder}/**/*.py")]
    texts = [*repo.glob("*.md"), *repo.glob("docs/*.md"), *code]
    offenders = [str(p.relative_to(repo)) for p in texts if "cog-pipeline[" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_stac_base_url_needs_stac_and_an_http_url(tmp_path):
    args = ["scan", "--input-bucket", "a", "--output-bucket", "b", "--local-root", str(tmp_path)]
    expected = {"https://cogs.example.org/": "error: --stac-base-url (publish.stac_base_url) needs --stac (publish.stac)\n",
                "cogs.example.org": "error: publish.stac_base_url must be an http:// or https:// URL\n"}
    for url, message in expected.items():
        result = CliRunner().invoke(main, [*args, *(["--stac"] if url == "cogs.example.org" else []), "--stac-base-url", url])
        assert (result.exit_code, result.output) == (2, message)


def test_every_json_output_carries_the_schema_version_and_its_errors(tmp_path):
    (tmp_path / "out").mkdir()
    status = CliRunner().invoke(main, ["status", "-w", str(tmp_path), "--json"])
    assert json.loads(status.stdout) == {"schema_version": SCHEMA_VERSION, "runs": []}
    missing = CliRunner().invoke(main, ["status", "-w", str(tmp_path / "nonexistent"), "--json"])
    assert missing.exit_code == 1 and json.loads(missing.stdout)["error"].startswith("work directory ")
    gone = CliRunner().invoke(main, ["provenance", "--local-root", str(tmp_path), "--bucket", "out", "--key", "no such.tif", "--json"])
    out = json.loads(gone.stdout)
    assert gone.exit_code == 1 and out["schema_version"] == SCHEMA_VERSION and "no such.tif" in out["error"] and "%20" not in out["error"]


def test_status_into_a_closed_pipe_exits_quietly(tmp_path):
    """`cog-pipeline status | head`: the reader going away is not an error line."""
    (tmp_path / "work").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "cog_pipeline", "status", "-w", str(tmp_path / "work")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # no reader: the first write meets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and err == ""
