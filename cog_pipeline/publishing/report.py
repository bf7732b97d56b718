"""The run report: one self-contained HTML page answering "did it work, what failed and why, how do I fix it".

Built from the run directory's typed documents (cog_pipeline.run.rundir: RunInfo, Preflight, Decisions, JobRecord),
which publishing hands over when it has them, plus cheap looks at the buckets: one listing for sizes and, per
processed image shown, the picture its local-engine worker left beside the job's record when the COG in the
bucket is still that job's (thumbnail.py), else a ranged read of its COG's smallest overview (a COG keeps it
near the front, so GDAL fetches one or two 64 KiB blocks instead of the whole file or the full-size JPEG, and
it works the same on S3 and folder buckets). The page is bounded: at most SHOWN_ROWS failed rows, images and
jobs, each table with the count of the rest. Every piece may be missing: a report is written for a run in any state. Every key is user data and is
escaped; the page fetches nothing and needs no JavaScript (one inline line only marks images as loaded).
"""

from __future__ import annotations

import base64
import heapq
import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cog_pipeline.outputs import COG
from cog_pipeline.publishing.thumbnail import THUMB_PX, read_thumbnail, thumbnail_jpeg, thumbnail_path
from cog_pipeline.run.naming import RunNames, base_of
from cog_pipeline.run.rundir import DamagedRunDir, Decisions, JobRecord, Preflight, ProcessedOutput, RunDir, RunInfo
from cog_pipeline.run.rundir.jobs import iter_job_records
from cog_pipeline.storage.store import ObjectInfo, ObjectStore, StoreError

REPORT_NAME = "report.html"
# Result-file links: the run directory keeps copies under results/; the uploaded copy sits beside them.
RESULTS_HREF = "results/"
# The page shows at most this many failed rows, images and jobs (with the counts of all): a 2,000,000-row
# manifest gets a page of a few MB, and the result files in the bucket list every row.
SHOWN_ROWS = 1000


@dataclass
class ImageRow:
    """One processed image, as the report shows it."""

    line: int
    key: str
    size_in: int | None = None
    size_out: int | None = None
    seconds: float | None = None
    attempts: int | None = None
    note: str = ""
    thumbnail: str | None = None  # data: URI
    # The converter's verdict that the JPEG preview is one flat colour (job record `preview_uniform`): an
    # operator could not tell it from an empty conversion, so the report flags it. None: not reported.
    uniform_preview: bool | None = None


@dataclass
class RunView:
    """Everything the report shows, read from a run directory (pure data; rendering is separate)."""

    name: str
    info: dict[str, Any]
    counts: dict[str, int]
    failed: list[dict[str, Any]] = field(default_factory=list)  # line, text, reason, category, next_step
    images: list[ImageRow] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)  # job_id, key, status, seconds, end (epoch)
    result: dict[str, Any] = field(default_factory=dict)
    provenance_lines: int = 0  # lines of provenance.jsonl (written at reconcile, before the report)
    more_failed: int = 0  # failed rows not shown (the reasons file lists every one)
    more_images: int = 0  # processed images not shown (the processed file lists every one)
    more_jobs: int = 0  # jobs not on the timeline


# ---------------------------------------------------------------------------------------------------------------
# What failed, and what to do about it

def next_step(reason: str, category: str, resubmit: str) -> tuple[str, str]:
    """(category, the concrete next step) for one failed row's reason. `resubmit` says how to resubmit."""
    text = reason.lower()
    rules: list[tuple[bool, str, str]] = [
        ("duplicate of line" in text, "DUPLICATE", "Nothing extra: the row is the same image as the line named; fix that one."),
        ("band count" in text and "malformed" in text, "BAD_ROW", f"Write the band count as a whole number (1-1024) in the row, then {resubmit}."),
        ("malformed" in text, "BAD_ROW", f"Make the row 'key,bands', then {resubmit}."),
        ("not valid utf-8" in text, "BAD_ROW", f"Save the manifest as UTF-8, then {resubmit}."),
        (text.startswith("bad key"), "BAD_KEY", f"Rename the object (and the row) to a key ending in .tif without the problem named, then {resubmit}."),
        ("input object does not exist" in text, "MISSING_INPUT", f"Upload the image (or correct the key's spelling in the row), then {resubmit}."),
        (category == "BAND_MISMATCH" or "band_mismatch" in text, "BAND_MISMATCH", f"Fix the band count in the row to match the file, then {resubmit}."),
        (category == "INPUT_UNREADABLE" or "input_unreadable" in text, "INPUT_UNREADABLE", f"Re-upload the image: it is corrupt or not a GeoTIFF. Then {resubmit}."),
        (category == "UNSUPPORTED_INPUT" or "unsupported_input" in text, "UNSUPPORTED_INPUT", f"Convert the image to a supported layout (see docs/conversion.md), re-upload it, then {resubmit}."),
        (category == "OUT_OF_DISK" or "out_of_disk" in text, "OUT_OF_DISK", f"Free disk on the workers (or request more), then {resubmit}."),
        (category.startswith("STAGE_") or "stage-in" in text or "stage-out" in text, "TRANSFER", f"Check the buckets are reachable with the run's credentials, then {resubmit}."),
        (category in ("HELD", "REMOVED", "JOB_FAILED"), category, f"Look at pegasus-analyzer's output for the job, then {resubmit}."),
    ]
    for matched, cat, step in rules:
        if matched:
            return cat, step
    return (category or "NOT_DELIVERED"), f"Look at the job log in jobs/ and {resubmit}; if it fails again, report it."


def _failed_rows(failed_sample: list[dict[str, Any]], category_of: dict[int, str], resubmit: str) -> list[dict[str, Any]]:
    rows = []
    for row in failed_sample:
        line = int(row.get("line", 0))
        reason = str(row.get("reason") or "")
        category, step = next_step(reason, category_of.get(line, ""), resubmit)
        rows.append({"line": line, "text": str(row.get("text", "")), "reason": reason_once(reason, category), "category": category, "next_step": step})
    return rows


def reason_once(reason: str, category: str) -> str:
    """The reason without a leading `CATEGORY: ` (however often repeated): the report shows the category beside it."""
    while category and reason.startswith(f"{category}: "):
        reason = reason[len(category) + 2:]
    return reason


def _resubmit_hint(manifest_key: str, failed_key: str | None) -> str:
    if not failed_key:
        return "resubmit the row in a new manifest"
    return f"resubmit by renaming {failed_key} to {base_of(manifest_key)}retry_raw.csv"


# ---------------------------------------------------------------------------------------------------------------
# Reading the run

def load_run(run_dir: Path, *, output_store: ObjectStore | None = None, input_store: ObjectStore | None = None,
             thumbnails: bool = True, info: RunInfo | None = None, decisions: Decisions | None = None,
             processed: list[ProcessedOutput] | None = None, sources: dict[str, ObjectInfo] | None = None,
             preflight: Preflight | None = None) -> RunView:
    """Read a run directory (and, when stores are given, sizes and thumbnails) into a RunView.

    Publishing hands over what it holds (run.json, reconcile's decisions with the outputs its listing found,
    the inputs' listing); anything not given is read from the run directory (and the buckets) here. The view
    is bounded: at most `SHOWN_ROWS` failed rows, images and jobs, with the counts of all of them.
    """
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    if info is None:
        try:
            info = rd.load()
        except DamagedRunDir:
            info = None
    if decisions is None:
        decisions = Decisions.load(run_dir)
    if preflight is None:
        preflight = Preflight.load(run_dir)
    result = decisions.result if decisions is not None else {}
    manifest_key = info.manifest_key if info is not None else ""
    resubmit = _resubmit_hint(manifest_key, result.get("failed_key"))
    failed_sample = decisions.failed_sample[:SHOWN_ROWS] if decisions is not None else []
    if processed is not None:  # handed over by publishing: its outputs as reconcile's listing found them
        shown = [(o.line, o.key, o.objects[COG.name], o.note) for o in processed[:SHOWN_ROWS]]
        n_images = len(processed)
    else:  # the first processed rows reconcile kept, with their COGs as they are now
        sample = decisions.processed_sample[:SHOWN_ROWS] if decisions is not None else []
        prefix = (info.output_prefix or "") if info is not None else ""
        listed = _listed(output_store, [prefix + str(r["key"]) for r in sample])
        shown = [(int(r["line"]), str(r["key"]), listed.get(prefix + str(r["key"])), "") for r in sample]
        n_images = len(shown) if decisions is None else decisions.images
    wanted_lines = {int(r.get("line", 0)) for r in failed_sample} | {line for line, *_ in shown}
    records, timeline, n_records, n_failed = _read_records(run_dir / "jobs", wanted_lines)
    counts = {
        "rows": decisions.rows if decisions is not None and decisions.rows else _manifest_rows(run_dir),
        "processed": int(result.get("processed") or 0),
        "failed": int(result.get("failed") or 0),
        "jobs": preflight.jobs if preflight is not None else n_records,
        "job_failures": n_failed,
    }
    category_of = {line: str(r.category or "") for line, r in records.items() if r.status == "failed"}
    view = RunView(run_dir.name, info.to_json() if info is not None else {}, counts,
                   _failed_rows(failed_sample, category_of, resubmit), result=result)
    view.more_failed = counts["failed"] - len(view.failed)
    view.more_images = n_images - len(shown)
    view.more_jobs = n_records - len(timeline)
    view.provenance_lines = _count_lines(run_dir / "provenance.jsonl")
    view.jobs = timeline
    notes = {int(n["line"]): str(n.get("note") or "") for n in (decisions.noted_sample if decisions is not None else [])}
    if sources is None and shown:
        sources = _listed(input_store, [key for _, key, *_ in shown])
    for line, key, cog, note in shown:
        rec = records.get(line)
        image = ImageRow(line, key, getattr((sources or {}).get(key), "size", None), getattr(cog, "size", None),
                         rec.seconds if rec else None, rec.attempts if rec else None, note or notes.get(line, ""),
                         uniform_preview="PREVIEW_UNIFORM" in str((rec.warning if rec else "") or ""))
        if thumbnails and output_store is not None and cog is not None:
            image.thumbnail = _job_thumbnail(run_dir, rec, cog.key, cog.etag)
            if image.thumbnail is None and (info is None or info.engine != "pegasus"):
                # Never on the Pegasus engine: no image byte is read on the access point (docs/chtc.md).
                image.thumbnail = thumbnail_data_uri(output_store, cog.key, cog.size)
        view.images.append(image)
    return view


def _read_records(jobs_dir: Path, lines: set[int]) -> tuple[dict[int, JobRecord], list[dict[str, Any]], int, int]:
    """One pass over the job records: (the records of `lines`, the first SHOWN_ROWS jobs by start time for
    the timeline, how many records, how many failed). Records are read one at a time, never all kept."""
    wanted: dict[int, JobRecord] = {}
    count = failed = 0

    def entries() -> Any:
        nonlocal count, failed
        for record, end in iter_job_records(jobs_dir):
            count += 1
            failed += record.status == "failed"
            if record.line is not None and record.line in lines:
                wanted[record.line] = record
            seconds = float(record.seconds or 0.0)
            yield {"job_id": str(record.job_id), "key": str(record.key or ""), "status": str(record.status),
                   "seconds": seconds, "end": float(end)}

    timeline = heapq.nsmallest(SHOWN_ROWS, entries(), key=lambda j: (j["end"] - j["seconds"], j["job_id"]))
    return wanted, timeline, count, failed


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def _job_thumbnail(run_dir: Path, record: JobRecord | None, key: str, etag: str) -> str | None:
    """The picture the job's worker made (thumbnail.py), if the COG in the bucket is still the one it made."""
    if record is None:
        return None
    made = (record.outputs or {}).get(key) or {}
    if record.status != "succeeded" or not made.get("etag") or made.get("etag") != etag:
        return None
    data = read_thumbnail(thumbnail_path(run_dir / "jobs", str(record.job_id)))
    return _jpeg_data_uri(data) if data else None


def _jpeg_data_uri(data: bytes) -> str:
    return f"data:image/jpeg;base64,{base64.b64encode(data).decode('ascii')}"


def _manifest_rows(run_dir: Path) -> int:
    """The manifest's rows (blank lines are not rows), counted as a stream."""
    from cog_pipeline.run.manifest import iter_raw_lines

    try:
        return sum(1 for line in iter_raw_lines(run_dir / "manifest.csv") if line.strip(b" \t"))
    except OSError:
        return 0


def _listed(store: ObjectStore | None, keys: list[str]) -> dict[str, ObjectInfo]:
    """What one listing says of each key (size, etag); nothing when there is no store or it cannot be listed."""
    if store is None or not keys:
        return {}
    from cog_pipeline.storage.listing import find_keys

    try:
        return find_keys(store, keys)
    except StoreError:
        return {}


def thumbnail_data_uri(store: ObjectStore, key: str, size: int | None = None, max_px: int = THUMB_PX) -> str | None:
    """A small JPEG data: URI of the COG's smallest overview, read by ranges; None when it cannot be read."""
    import warnings

    from cog_pipeline.storage.ranged import OPEN_NAME, opener_for

    try:
        opener, _ = opener_for(store, key, size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: a picture, not a map
            data = thumbnail_jpeg(OPEN_NAME, opener=opener, max_px=max_px)
        return _jpeg_data_uri(data)
    except Exception:  # noqa: BLE001 - a missing picture must never cost the report
        return None


# ---------------------------------------------------------------------------------------------------------------
# Rendering

_CSS = """
:root{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1b1f23;background:#fff}
body{margin:0 auto;max-width:1100px;padding:12px}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1.2em 0 .4em;border-bottom:1px solid #ddd}
.counts{display:flex;flex-wrap:wrap;gap:8px}.count{flex:1 1 120px;border:1px solid #ddd;border-radius:6px;padding:8px;text-align:center}
.count b{display:block;font-size:1.8em}.ok b{color:#1a7f37}.bad b{color:#cf222e}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}th{background:#f6f8fa}
td.num{text-align:right;white-space:nowrap}td.key{min-width:11em}code,.key{font-family:ui-monospace,Menlo,monospace;overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:6px;background:#fafafa}
figure img{width:100%;height:auto;display:block;image-rendering:auto}figcaption{font-size:.8em;overflow-wrap:anywhere}
.flag{display:inline-block;background:#fff8c5;border:1px solid #d4a72c;border-radius:4px;padding:0 4px;font-size:.85em}
.files a{font-family:ui-monospace,Menlo,monospace;overflow-wrap:anywhere}
.bar{position:relative;height:14px;background:#eef}.bar span{position:absolute;top:0;bottom:0;background:#0969da}
.bar span.failed{background:#cf222e}.meta{color:#57606a;font-size:.9em}
@media (max-width:600px){body{padding:6px}th,td{padding:3px}.count b{font-size:1.4em}
#failed thead{display:none}#failed,#failed tbody,#failed tr,#failed td{display:block;width:auto}
#failed tr{border:1px solid #d0d7de;border-left:4px solid #cf222e;border-radius:6px;margin:0 0 10px;padding:6px 8px}
#failed td{border:0;padding:2px 0;text-align:left}#failed td::before{content:attr(data-label);display:block;font-size:.75em;color:#57606a;text-transform:uppercase}}
"""
# Marks the page when every picture has decoded: a browser test (and a person) can tell "thumbnails loaded".
_SCRIPT = ("window.addEventListener('load',function(){var i=[].slice.call(document.images);"
           "document.body.setAttribute('data-images-loaded',String(i.every(function(x){return x.complete&&x.naturalWidth>0}))+':'+i.length)})")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _key(value: Any) -> str:
    """A key (or row) escaped, with a line-break opportunity after each '/': it wraps between folders, not mid-word."""
    return "/<wbr>".join(_e(part) for part in str(value).split("/"))


def _bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _counts_html(view: RunView) -> str:
    c = view.counts
    cells = [("rows", c["rows"], ""), ("processed", c["processed"], "ok"), ("failed", c["failed"], "bad" if c["failed"] else "ok"),
             ("jobs", c["jobs"], ""), ("job failures", c["job_failures"], "bad" if c["job_failures"] else "")]
    return '<div class="counts">' + "".join(
        f'<div class="count {cls}" data-count="{_e(name)}"><b>{value}</b>{_e(name)}</div>' for name, value, cls in cells) + "</div>"


def _failed_html(view: RunView) -> str:
    if not view.failed:
        return "<p>No failed rows.</p>"
    body = "".join(
        f'<tr class="failed-row"><td class="num" data-label="line">{r["line"]}</td><td class="key" data-label="row">{_key(r["text"])}</td>'
        f'<td data-label="category">{_e(r["category"])}</td><td class="reason" data-label="reason">{_e(r["reason"])}</td>'
        f'<td class="next-step" data-label="next step">{_e(r["next_step"])}</td></tr>' for r in view.failed)
    return ('<div class="scroll"><table id="failed"><thead><tr><th>line</th><th>row</th><th>category</th><th>reason</th>'
            f"<th>next step</th></tr></thead><tbody>{body}</tbody></table></div>"
            + _more(view.more_failed, "failed rows", "the reasons file lists every one"))


def _more(count: int, what: str, where: str) -> str:
    """The line under a table that shows only the first rows."""
    return f'<p class="meta more">{count:,} more {_e(what)} not shown: {_e(where)}.</p>' if count > 0 else ""


def _images_html(view: RunView) -> str:
    if not view.images:
        return "<p>No processed images.</p>"
    figures = "".join(
        f'<figure><img class="thumb" alt="{_e(i.key)}" src="{_e(i.thumbnail)}"><figcaption>{_key(i.key)}{_uniform(i)}</figcaption></figure>'
        for i in view.images if i.thumbnail)
    rows = "".join(
        f'<tr class="image-row"><td class="key">{_key(i.key)}{_uniform(i)}</td><td class="num">{_bytes(i.size_in)}</td><td class="num">{_bytes(i.size_out)}</td>'
        f'<td class="num">{(f"{i.size_out / i.size_in:.2f}" if i.size_in and i.size_out else "–")}</td>'
        f'<td class="num">{(f"{i.seconds:.1f} s" if i.seconds is not None else "–")}</td><td class="num">{_e(i.attempts if i.attempts is not None else "–")}</td>'
        f"<td>{_e(i.note)}</td></tr>" for i in view.images)
    return (f'<div class="grid">{figures}</div><div class="scroll"><table id="images"><thead><tr><th>key</th><th>in</th>'
            f'<th>out</th><th>out/in</th><th>conversion</th><th>attempts</th><th>note</th></tr></thead><tbody>{rows}</tbody></table></div>'
            + _more(view.more_images, "processed images", "the processed file lists every one"))


def _uniform(image: ImageRow) -> str:
    return (' <span class="flag uniform-preview" title="every pixel of the JPEG preview has one value: check the source">'
            "uniform preview</span>") if image.uniform_preview else ""


def _timeline_html(view: RunView) -> str:
    jobs = [j for j in view.jobs if j["seconds"] >= 0]
    if not jobs:
        return "<p>No job records.</p>"
    start = min(j["end"] - j["seconds"] for j in jobs)
    span = max(max(j["end"] for j in jobs) - start, 1e-3)
    rows = []
    for j in sorted(jobs, key=lambda j: j["end"] - j["seconds"]):
        left = (j["end"] - j["seconds"] - start) / span * 100
        width = max(j["seconds"] / span * 100, 0.5)
        cls = "failed" if j["status"] == "failed" else ""
        rows.append(f'<tr><td class="key">{_key(j["key"] or j["job_id"])}</td><td class="num">{j["seconds"]:.1f} s</td>'
                    f'<td style="width:50%"><div class="bar"><span class="{cls}" style="left:{left:.2f}%;width:{width:.2f}%"></span></div></td></tr>')
    return (f'<p class="meta">Span {span:.1f} s from the first job start to the last job end.</p><div class="scroll"><table id="timeline">{"".join(rows)}</table></div>'
            + _more(view.more_jobs, "jobs", "the first to start are shown; jobs/ holds every record"))


def _engine_html(view: RunView) -> str:
    info = view.info
    parts = [f"<p>Engine: <b>{_e(info.get('engine', 'unknown'))}</b>; state <b>{_e(info.get('state', 'unknown'))}</b>.</p>"]
    submit_dir = (info.get("pegasus") or {}).get("submit_dir")
    if info.get("engine") == "pegasus":
        if submit_dir:
            parts.append(f"<p>Submit directory: <code>{_e(submit_dir)}</code></p><pre><code>pegasus-analyzer {_e(_shell(submit_dir))}\n"
                         f"pegasus-statistics -s all {_e(_shell(submit_dir))}</code></pre>")
        else:
            parts.append("<p>No submit directory recorded (the workflow was not submitted).</p>")
    return "".join(parts)


def _shell(text: str) -> str:
    import shlex

    return shlex.quote(str(text))


def _lineage_html(view: RunView) -> str:
    """Where an output's history is: the COG's own metadata, provenance.jsonl, and STAC when the run made it."""
    parts = [f"<p>Each COG carries its lineage in its <code>COG_PIPELINE</code> metadata domain "
             f"(<code>cog-pipeline provenance BUCKET/KEY</code>); <code>provenance.jsonl</code> in the run directory has "
             f"{view.provenance_lines} line(s), one per output.</p>"]
    if view.info.get("stac"):
        from cog_pipeline.publishing.stac import collection_key

        parts.append(f"<p>STAC: an Item beside each COG and the Collection <code>{_e(collection_key(str(view.info.get('manifest_key', ''))))}</code> "
                     f"in <code>{_e(view.info.get('output_bucket', '?'))}</code>.</p>")
    return "".join(parts)


def render(view: RunView) -> str:
    """The whole page as one string: stdlib string building, every user value escaped."""
    info, result = view.info, view.result
    files = "".join(
        f'<li><a class="result-file" href="{RESULTS_HREF}{_e(quote(result[k].rpartition("/")[2]))}">{_key(result[k])}</a></li>'
        for k in ("processed_key", "failed_key", "reasons_key") if result.get(k))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>cog-pipeline report: {_e(info.get('manifest_key', view.name))}</title><style>{_CSS}</style></head><body>"
        f"<h1 class=\"key\">{_key(info.get('manifest_key', view.name))}</h1><p class=\"meta\">Run <code>{_e(view.name)}</code>, "
        f"<code>{_e(info.get('input_bucket', '?'))}</code> → <code>{_e(info.get('output_bucket', '?'))}</code>; report written {when}.</p>"
        f"{_counts_html(view)}"
        + (f'<ul class="files">{files}</ul>' if files else "<p>Not reconciled yet: no result files.</p>")
        + f"<h2>Failed rows</h2>{_failed_html(view)}<h2>Processed images</h2>{_images_html(view)}"
        f"<h2>Job timeline</h2>{_timeline_html(view)}<h2>Engine</h2>{_engine_html(view)}<h2>Lineage</h2>{_lineage_html(view)}"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_report(run_dir_path: Path, *, output_store: ObjectStore | None, input_store: ObjectStore | None = None,
                 **given: Any) -> Path:
    """Write report.html in the run directory (atomically) and return its path. Never needs a bucket.
    `given`: the documents the caller already holds (see `load_run`)."""
    from cog_pipeline.storage import atomic

    run_dir_path = Path(run_dir_path)
    page = render(load_run(run_dir_path, output_store=output_store, input_store=input_store, **given))
    path = run_dir_path / REPORT_NAME
    atomic.write_bytes(path, page.encode("utf-8"), 0o644)
    return path


def report_key(manifest_key: str, timestamp: str) -> str:
    """`Counties/test_raw.csv` at TS -> `Counties/test_report-TS.html`, beside the result files."""
    return f"{RunNames(manifest_key, timestamp).base}report-{timestamp}.html"


def upload_report(run_dir_path: Path, input_store: ObjectStore, info: RunInfo | None = None) -> str:
    """Put the run's report.html beside its result files in the input bucket; returns the key."""
    run_dir_path = Path(run_dir_path)
    info = info or RunDir(run_dir_path).load()
    key = report_key(info.manifest_key, info.timestamp)
    page = (run_dir_path / REPORT_NAME).read_bytes()
    # Beside the result files, its links point at them, not at the run directory's results/ copies.
    page = page.replace(f'class="result-file" href="{RESULTS_HREF}'.encode(), b'class="result-file" href="')
    input_store.put_bytes(key, page)
    return key
