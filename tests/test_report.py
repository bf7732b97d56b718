"""The run report: built from a real run (the pipeline on folder buckets, real rasters, failing rows), checked
as HTML and rendered in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cog_pipeline.pipeline import ScanOptions, scan
from cog_pipeline.publishing.report import next_step, report_key, upload_report, write_report
from cog_pipeline.run.rundir import RunDir
from cog_pipeline.storage.store import LocalStore, StoreConfig

from .conftest import REPO_ROOT
from tests.conftest import config_with

HOSTILE = 'Eau Claire/<script>alert(1)</script> "&\' Ünïcødé.tif'
GOOD = {
    "Counties/WI/Wood/rgb.tif": ("rasterio/RGB.byte.tif", 3),
    "Counties/WI/Wood/shade.tif": ("rasterio/shade.tif", 1),
    HOSTILE: ("rasterio/RGBA.byte.tif", 4),
}
BAD_ROWS = [
    "Counties/WI/Sauk/corrupt.tif,3",  # uploaded, damaged pixels
    "Counties/WI/Sauk/not-uploaded.tif,3",
    "Counties/WI/Sauk/typo.tif,three",
]


@pytest.fixture(scope="module")
def run(shared_testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StoreConfig]:
    """One real scan, shared by this module's tests (converting is the slow part)."""
    root = tmp_path_factory.mktemp("report") / "buckets"
    for name in ("in", "out"):
        (root / name).mkdir(parents=True)
    for key, (src, _) in GOOD.items():
        (root / "in" / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_testdata / src, root / "in" / key)
    (root / "in/Counties/WI/Sauk").mkdir(parents=True)
    shutil.copyfile(shared_testdata / "rasterio/corrupt.tif", root / "in/Counties/WI/Sauk/corrupt.tif")
    rows = [f"{key},{bands}" for key, (_, bands) in GOOD.items()] + BAD_ROWS
    (root / "in/batch_raw.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = StoreConfig(local_root=root)
    options = ScanOptions("in", "out", config, root.parent / "work", progress=False, config=config_with(workers=2, retries=0))
    report = scan(options, echo=lambda _m: None)
    assert len(report.reconciled) == 1
    return report.reconciled[0].path, config


class _Collect(HTMLParser):
    """Tags with attributes and text by element id/class: enough to assert on the page's structure."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Collect:
    parser = _Collect()
    parser.feed(page)
    return parser


@pytest.mark.slow
def test_report_counts_failures_and_thumbnails(run: tuple[Path, StoreConfig]) -> None:
    run_dir, config = run
    path = write_report(run_dir, output_store=LocalStore(config.local_root, "out"), input_store=LocalStore(config.local_root, "in"))
    page = path.read_text(encoding="utf-8")
    parsed = _parse(page)
    counts = re.findall(r'data-count="(\w[\w ]*)"><b>(\d+)</b>', page)
    assert dict(counts)["processed"] == "3" and dict(counts)["failed"] == "3" and dict(counts)["rows"] == "6"
    assert page.count('class="failed-row"') == 3
    text = "".join(parsed.text)
    assert "Re-upload the image" in text  # corrupt.tif
    assert "Upload the image (or correct the key" in text  # not-uploaded.tif
    assert "whole number" in text  # 'three'
    assert "retry_raw.csv" in text
    thumbs = [a for t, a in parsed.tags if t == "img"]
    assert len(thumbs) == 3 and all(a["src"].startswith("data:image/jpeg;base64,") for a in thumbs)
    assert page.count('class="image-row"') == 3
    assert "http://" not in page and "https://" not in page  # nothing fetched from anywhere


@pytest.mark.slow
def test_hostile_keys_are_escaped(run: tuple[Path, StoreConfig]) -> None:
    run_dir, config = run
    page = write_report(run_dir, output_store=LocalStore(config.local_root, "out")).read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &quot;&amp;&#x27; Ünïcødé.tif" in page
    assert page.count("<script>") == 1  # only the page's own image-loaded marker


_V1_RUN = ('{"timestamp": "20250101-000000", "input_bucket": "in", "output_bucket": "out", "manifest_key": "a_raw.csv", '
           '"processing_key": "a_processing-20250101-000000.csv", "store": {}, "engine": "pegasus", "state": "%s", "extra": %s}')


def test_report_of_a_bare_run_dir(tmp_path: Path) -> None:
    """A run directory holding nothing but run.json (claimed, never run) still gets a report."""
    (tmp_path / "run.json").write_text(_V1_RUN % ("claimed", "{}"))
    page = write_report(tmp_path, output_store=None).read_text(encoding="utf-8")
    assert "Not reconciled yet" in page and "No submit directory recorded" in page


def test_pegasus_commands_are_named(tmp_path: Path) -> None:
    # A version-1 run.json (its Pegasus facts in "extra"): read through the migration in cog_pipeline.run.rundir.
    (tmp_path / "run.json").write_text(_V1_RUN % ("running", '{"submit_dir": "/s/run 1"}'))
    page = write_report(tmp_path, output_store=None).read_text(encoding="utf-8")
    assert "pegasus-analyzer &#x27;/s/run 1&#x27;" in page
    assert "pegasus-statistics -s all &#x27;/s/run 1&#x27;" in page


@pytest.mark.parametrize(
    ("reason", "category", "expected"),
    [
        ("malformed row: band count 'x' is not an integer", "", "BAD_ROW"),
        ("bad key: key does not end in '.tif'", "", "BAD_KEY"),
        ("input object does not exist: file:///x", "", "MISSING_INPUT"),
        ("BAND_MISMATCH: manifest says 3 bands, file has 4", "BAND_MISMATCH", "BAND_MISMATCH"),
        ("INPUT_UNREADABLE: cannot read", "INPUT_UNREADABLE", "INPUT_UNREADABLE"),
        ("stage-in failed: boom", "STAGE_IN_FAILED", "TRANSFER"),
        ("missing from the output bucket: a.tif", "", "NOT_DELIVERED"),
    ],
)
def test_next_step_categories(reason: str, category: str, expected: str) -> None:
    got, step = next_step(reason, category, "resubmit by renaming X")
    assert got == expected and step


@pytest.mark.slow
def test_upload_beside_result_files(run: tuple[Path, StoreConfig]) -> None:
    run_dir, config = run
    write_report(run_dir, output_store=None)
    store = LocalStore(config.local_root, "in")
    key = upload_report(run_dir, store)
    ts = RunDir(run_dir).timestamp
    assert key == report_key("batch_raw.csv", ts) == f"batch_report-{ts}.html"
    from urllib.parse import unquote

    local, uploaded = (run_dir / "report.html").read_text(encoding="utf-8"), store.read_bytes(key)[0].decode("utf-8")
    links = lambda page: [a["href"] for t, a in _parse(page).tags if t == "a" and a.get("class") == "result-file"]  # noqa: E731
    # Result files are links: in the run directory to its results/ copies, in the bucket to the files beside it.
    assert len(links(local)) == 3 and all((run_dir / unquote(h)).is_file() for h in links(local))
    assert all((config.local_root / "in" / unquote(h)).is_file() for h in links(uploaded))
    assert [f"results/{h}" for h in links(uploaded)] == links(local)


# ---------------------------------------------------------------------------------------------------------------
# A real browser

def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the browser test cannot run")


def _browser(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
           "--virtual-time-budget=3000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


# Measures the laid-out page (a copy of the report with this script added; the report itself is unchanged): the
# viewport width, then per failed row its display and whether the row, its reason and its next step lie fully
# inside the viewport, then whether the page scrolls sideways. The copy runs in an iframe of the width under
# test (headless Chromium lays a window out at least 500 px wide) and posts its answer to the page around it.
_PROBE = """<script>window.addEventListener('load',function(){var vw=document.documentElement.clientWidth;
var rows=[].slice.call(document.querySelectorAll('tr.failed-row')).map(function(r){
function inside(e){var b=e.getBoundingClientRect();return b.width>0&&b.left>=0&&b.right<=vw}
return [getComputedStyle(r).display,inside(r),inside(r.querySelector('td.reason')),inside(r.querySelector('td.next-step'))].join(',')});
parent.postMessage(vw+'|'+rows.join(';')+'|'+(document.documentElement.scrollWidth<=vw),'*')})</script>"""


def _probe(page: Path, width: int, tmp_path: Path) -> tuple[int, list[list[str]], bool]:
    probed = tmp_path / f"probe-{width}.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    frame = tmp_path / f"frame-{width}.html"
    frame.write_text(f'<!DOCTYPE html><html><body style="margin:0"><iframe src="{probed.name}" style="width:{width}px;height:2400px;border:0"></iframe>'
                     "<script>window.addEventListener('message',function(e){document.body.setAttribute('data-probe',e.data)})</script></body></html>",
                     encoding="utf-8")
    dom = _browser("--window-size=1400,2400", "--hide-scrollbars", "--dump-dom", frame.as_uri()).stdout
    found = re.search(r'data-probe="(\d+)\|([^|"]*)\|(true|false)"', dom)
    assert found, dom[-2000:]
    return int(found[1]), [row.split(",") for row in found[2].split(";")], found[3] == "true"


@pytest.mark.slow
def test_report_in_headless_chromium_at_desktop_and_phone_width(run: tuple[Path, StoreConfig], tmp_path: Path) -> None:
    run_dir, config = run
    path = write_report(run_dir, output_store=LocalStore(config.local_root, "out"), input_store=LocalStore(config.local_root, "in"))
    proc = _browser("--dump-dom", path.as_uri())
    dom = proc.stdout
    assert 'data-images-loaded="true:3"' in dom, proc.stderr[-2000:]
    assert dom.count('class="failed-row"') == 3
    assert '<b>3</b>processed' in dom
    assert "<script>alert(1)</script>" not in dom.split("<script>window")[0]
    assert re.search(r"<h1 [^>]*>batch_raw\.csv</h1>", dom)  # the headline is the manifest
    # Desktop: a table, every cell on screen. Phone (390 px): each failed row is a card, its reason and next
    # step on screen, and nothing scrolls sideways.
    width, rows, no_side_scroll = _probe(path, 1200, tmp_path)
    assert width == 1200 and no_side_scroll and rows == [["table-row", "true", "true", "true"]] * 3
    width, rows, no_side_scroll = _probe(path, 390, tmp_path)
    assert width == 390 and no_side_scroll and rows == [["block", "true", "true", "true"]] * 3
    shots = Path(os.environ.get("COG_REPORT_SHOTS", tmp_path))  # COG_REPORT_SHOTS=/tmp/report-shots keeps them
    shots.mkdir(parents=True, exist_ok=True)
    for name, size in (("desktop.png", "1280,1500"), ("phone.png", "390,2400")):
        _browser(f"--screenshot={shots / name}", f"--window-size={size}", "--hide-scrollbars", path.as_uri())
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("COG_REPORT_SCREENSHOT"):  # refresh the README's picture: COG_REPORT_SCREENSHOT=1 pytest -k chromium
        shutil.copyfile(shots / "desktop.png", REPO_ROOT / "docs" / "report.png")


def test_reason_is_said_once_keys_wrap_at_folders_and_a_uniform_preview_is_flagged() -> None:
    from cog_pipeline.publishing.report import ImageRow, RunView, reason_once, render

    assert reason_once("INPUT_UNREADABLE: INPUT_UNREADABLE: truncated", "INPUT_UNREADABLE") == "truncated"
    assert reason_once("input object does not exist: x", "MISSING_INPUT") == "input object does not exist: x"
    view = RunView("workflow-run-1", {"manifest_key": "a/b <i>_raw.csv"}, {"rows": 2, "processed": 2, "failed": 0, "jobs": 2, "job_failures": 0},
                   images=[ImageRow(1, "x/flat.tif", uniform_preview=True), ImageRow(2, "x/fine.tif", uniform_preview=False)])
    page = render(view)
    assert '<h1 class="key">a/<wbr>b &lt;i&gt;_raw.csv</h1>' in page
    assert page.count('class="flag uniform-preview"') == 1 and "x/<wbr>flat.tif <span" in page


# ---------------------------------------------------------------------------------------------------------------
# Commands and status renderers

@pytest.mark.slow
def test_report_command_rewrites_and_uploads(run: tuple[Path, StoreConfig]) -> None:
    from click.testing import CliRunner

    from cog_pipeline.cli.operator import report_cmd

    run_dir, config = run
    (run_dir / "report.html").unlink(missing_ok=True)
    result = CliRunner().invoke(report_cmd, [str(run_dir), "--upload"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == str(run_dir / "report.html")
    assert 'data-count="processed"><b>3</b>' in (run_dir / "report.html").read_text(encoding="utf-8")
    key = f"batch_report-{RunDir(run_dir).timestamp}.html"
    assert f"uploaded {key}" in result.output and (config.local_root / "in" / key).is_file()


def test_status_table_shows_user_text_literally() -> None:
    from cog_pipeline.cli.operator import render_status_table

    rows = [
        {"run": "workflow-run-20261201-101500", "state": "running", "done": 7, "failed": 1, "age": "3m", "engine": "pegasus", "where": "/s/[b]x[/b] ü"},
        {"run": "workflow-run-20261201-101600", "state": "reconciled", "done": 5, "failed": 0, "age": "1h", "engine": "local", "where": None},
    ]
    text = render_status_table(rows)
    assert "2 run(s)" in text and "[b]x[/b] ü" in text and "\x1b[" not in text
    line = next(ln for ln in text.splitlines() if "101500" in ln)
    assert "running" in line and " 7 " in line and "pegasus" in line


def test_status_json_is_stable() -> None:
    import json

    from cog_pipeline.cli.operator import STATUS_COLUMNS, status_json

    out = json.loads(status_json([{"run": "r", "state": "running", "done": 1, "extra": "dropped"}]))
    assert out["schema_version"] == 1
    assert list(out["runs"][0]) == list(STATUS_COLUMNS) and out["runs"][0]["done"] == 1 and out["runs"][0]["failed"] is None


def test_thumbnail_by_ranged_reads_on_both_stores(buckets, shared_testdata: Path, tmp_path: Path) -> None:
    """The smallest overview, not the whole COG: few GetObject requests, a decodable JPEG of thumbnail size."""
    import base64

    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    from cog_pipeline.publishing.report import THUMB_PX, thumbnail_data_uri

    cog = tmp_path / "cog.tif"
    copy(shared_testdata / "rasterio/RGB.byte.tif", cog, driver="COG", compress="LZW", blocksize=256)
    key = "Eau Claire/a b ü.tif"
    buckets.output.upload(cog, key)
    before = buckets.counter.by_operation.get("GetObject", 0)
    uri = thumbnail_data_uri(buckets.output, key)
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    with MemoryFile(base64.b64decode(uri.split(",", 1)[1])) as mem, mem.open() as img:
        assert max(img.width, img.height) == THUMB_PX and img.count == 3
    if buckets.kind == "s3":
        assert 1 <= buckets.counter.by_operation["GetObject"] - before <= 3
    assert rasterio.open(cog).overviews(1)  # the COG has overviews to read from


def _image_srcs(page: str) -> dict[str, str]:
    """key -> the data: URI of its thumbnail, from the report's picture grid."""
    return {a["alt"]: a["src"] for t, a in _parse(page).tags if t == "img" and a.get("class") == "thumb"}


@pytest.mark.slow
def test_the_report_shows_the_pictures_the_workers_left_while_the_cog_is_theirs(run: tuple[Path, StoreConfig]) -> None:
    """Each local-engine job leaves jobs/<id>.thumb.jpg (made from its JPEG preview beside the other jobs); the report
    uses it only while the bucket still holds that job's COG (same etag), and a torn picture is never used."""
    import base64

    from cog_pipeline.publishing.report import thumbnail_data_uri

    run_dir, config = run
    out_store = LocalStore(config.local_root, "out")
    records = {r.key: r for r in RunDir(run_dir).job_records().values() if r.status == "succeeded"}
    assert len(records) == 3
    thumbs = {key: run_dir / "jobs" / f"{rec.job_id}.thumb.jpg" for key, rec in records.items()}
    assert all(p.read_bytes()[:2] == b"\xff\xd8" for p in thumbs.values())

    def srcs() -> dict[str, str]:
        return _image_srcs(write_report(run_dir, output_store=out_store).read_text(encoding="utf-8"))

    def uri(path: Path) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    assert srcs() == {key: uri(path) for key, path in thumbs.items()}

    rgb, shade = "Counties/WI/Wood/rgb.tif", "Counties/WI/Wood/shade.tif"
    saved = {k: thumbs[k].read_bytes() for k in (rgb, shade, HOSTILE)}
    rgb_picture = "data:image/jpeg;base64," + base64.b64encode(saved[rgb]).decode("ascii")
    thumbs[HOSTILE].write_bytes(saved[rgb])  # its COG untouched: the report shows the file, not the COG
    thumbs[rgb].write_bytes(saved[rgb][: len(saved[rgb]) // 2])  # torn: no end-of-image marker
    thumbs[shade].write_bytes(saved[rgb])  # whole, but its COG is replaced below: only the etag tells
    cog = out_store.path_of(shade)
    replacement = cog.with_name("replacement.tif")
    shutil.copyfile(cog, replacement)
    os.replace(replacement, cog)  # the same bytes as a new object: another etag, so not the job's COG any more
    try:
        now = srcs()
        assert now[HOSTILE] == rgb_picture
        assert now[rgb] == thumbnail_data_uri(out_store, rgb) != uri(thumbs[rgb])
        assert now[shade] == thumbnail_data_uri(out_store, shade) != rgb_picture
    finally:
        for key, data in saved.items():
            thumbs[key].write_bytes(data)


def test_a_thumbnail_is_rgb_from_three_bands_grey_from_one_and_stretched_from_uint16(tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    from cog_pipeline.publishing.thumbnail import THUMB_PX, thumbnail_jpeg
    from tests import rasters

    cases = {
        "rgba.tif": (rasters.textured(4, 300, 500), "RGB"),
        "grey.tif": (rasters.textured(1, 500, 300), "L"),
        "deep.tif": ((rasters.textured(1, 200, 200).astype(np.uint16) * 40 + 1000), "L"),
    }
    for name, (data, mode) in cases.items():
        path = rasters.write(tmp_path / name, data)
        with Image.open(io.BytesIO(thumbnail_jpeg(str(path)))) as img:
            assert img.mode == mode and max(img.size) == min(THUMB_PX, max(data.shape[1:]))
            pixels = np.asarray(img)
        if name == "deep.tif":  # the uint16 range spread over 0-255
            assert pixels.min() <= 10 and pixels.max() >= 245


def test_damaged_run_files_are_tolerated(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{not json")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "ID1.json").write_text('{"job_id": "ID1", "trunc')
    (tmp_path / "manifest.csv").write_text("a.tif,1\nb.tif,1\n")
    page = write_report(tmp_path, output_store=None).read_text(encoding="utf-8")
    assert 'data-count="rows"><b>2</b>' in page and "No job records." in page


# ---------------------------------------------------------------------------------------------------------------
# Wired into the pipeline: reconcile writes and uploads the report; the demo ends by naming it

@pytest.mark.slow
def test_reconcile_wrote_and_uploaded_the_report(run: tuple[Path, StoreConfig]) -> None:
    """The module's scan went through pipeline.finish: report.html is there and beside the result files."""
    run_dir, config = run
    key = f"batch_report-{RunDir(run_dir).timestamp}.html"
    uploaded = (config.local_root / "in" / key).read_text(encoding="utf-8")
    assert 'data-count="processed"><b>3</b>' in uploaded and uploaded.count('class="failed-row"') == 3
    assert (run_dir / "report.html").is_file()
    assert "provenance.jsonl</code> in the run directory has 3 line(s)" in uploaded  # written before the report


@pytest.mark.slow
def test_a_report_error_never_fails_the_reconcile(run: tuple[Path, StoreConfig]) -> None:
    """report.html cannot be written (a directory stands there): finish still answers, with one warning line."""
    from cog_pipeline.pipeline import finish

    run_dir, _ = run
    (run_dir / "report.html").unlink()
    (run_dir / "report.html").mkdir()
    (run_dir / "report.html" / "in-the-way").write_text("x")
    lines: list[str] = []
    try:
        result = finish(RunDir(run_dir), echo=lines.append)
    finally:
        shutil.rmtree(run_dir / "report.html")
    assert result.already_done and (result.processed, result.failed) == (3, 3)
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    assert len(warnings) == 1 and "report not written" in warnings[0] and "\n" not in warnings[0]
    write_report(run_dir, output_store=None)  # leave the shared run as the other tests expect it


@pytest.mark.slow
def test_demo_ends_with_its_report(tmp_path: Path) -> None:
    """`cog-pipeline demo` prints the report's path last; the page shows the five images and both failed rows."""
    from click.testing import CliRunner

    from cog_pipeline.cli.main import main
    from cog_pipeline.examples import EXAMPLE_BAD_ROWS, EXAMPLE_IMAGES

    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path / "demo"), "--size", "64", "--quiet"])
    assert result.exit_code == 0, result.output
    last = result.output.splitlines()[-1]
    assert last.startswith("report: ") and last.endswith("report.html")
    page = Path(last.removeprefix("report: ")).read_text(encoding="utf-8")
    parsed = _parse(page)
    thumbs = [a for t, a in parsed.tags if t == "img" and a.get("class") == "thumb"]
    assert sorted(a["alt"] for a in thumbs) == sorted(k for k, _ in EXAMPLE_IMAGES)
    assert all(a["src"].startswith("data:image/jpeg;base64,") for a in thumbs)
    assert page.count('class="failed-row"') == len(EXAMPLE_BAD_ROWS) == 2
    text = "".join(parsed.text)
    assert "Upload the image (or correct the key" in text and "whole number" in text and "example_retry_raw.csv" in text
    assert list((tmp_path / "demo/buckets/cog-input").glob("example_report-*.html"))
