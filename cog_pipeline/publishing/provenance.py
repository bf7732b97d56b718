"""Provenance: every COG says where it came from, and every run keeps a line per output.

Three parts, one job each:
- `provenance_metadata` is what the converter embeds in the COG's own GDAL metadata domain `COG_PIPELINE`
  (stored in the TIFF's GDAL_METADATA tag, 42112, inside the header: pixels and the COG layout are
  unchanged). On GDAL >= 3.8 the COG driver copies a source domain with the creation option
  `SRC_MDD=COG_PIPELINE`; see `embed_with_copy`.
- `append_provenance` writes `provenance.jsonl` in the run directory (input version -> output versions).
- `read_provenance` reads that domain back from a bucket by ranged reads: GDAL's TIFF reader through
  `ranged.opener_for` fetches the header's 64 KiB block(s) only, growing when the IFD or the tag lies
  further in, and never downloads the pixels. The same code serves S3 (GetObject Range) and folder buckets.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cog_pipeline.storage.store import ObjectInfo, ObjectStore

if TYPE_CHECKING:
    from cog_pipeline.run.rundir import ProcessedOutput

DOMAIN = "COG_PIPELINE"
PROVENANCE_FILE = "provenance.jsonl"


def provenance_metadata(
    *,
    source_bucket: str,
    source_key: str,
    source_etag: str,
    source_size: int,
    manifest_key: str,
    run_id: str,
    converter_version: str,
    creation_options: dict[str, str] | None = None,
    gdal_version: str | None = None,
    now: datetime | None = None,
) -> dict[str, str]:
    """KEY -> value for the COG_PIPELINE domain. Keys travel as values, never inside a URL."""
    if gdal_version is None:
        import rasterio

        gdal_version = rasterio.__gdal_version__
    options = creation_options or {}
    return {
        "SOURCE_BUCKET": source_bucket,
        "SOURCE_KEY": source_key,
        "SOURCE_ETAG": source_etag,
        "SOURCE_SIZE": str(int(source_size)),
        "MANIFEST_KEY": manifest_key,
        "RUN_ID": run_id,
        "CONVERTER_VERSION": converter_version,
        "GDAL_VERSION": gdal_version,
        "CREATION_OPTIONS": " ".join(f"{k}={v}" for k, v in sorted(options.items())),
        "CREATED_UTC": (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def metadata_arguments(metadata: dict[str, str]) -> list[str]:
    """The converter's command-line form: `--metadata KEY=VALUE` per item (one argv element each, no quoting)."""
    out: list[str] = []
    for key, value in metadata.items():
        out += ["--metadata", f"{key}={value}"]
    return out


def embed_with_copy(src: Path, dst: Path, metadata: dict[str, str], **creation_options: Any) -> None:
    """Write a COG of `src` at `dst` carrying `metadata` in the COG_PIPELINE domain (GDAL >= 3.8).

    The domain is set on an in-memory GeoTIFF copy of the source and copied by the COG driver (SRC_MDD), so the
    metadata lands in the header at creation time and the layout stays a valid COG.
    """
    import rasterio
    from rasterio.shutil import copy

    with rasterio.open(src) as source, rasterio.MemoryFile() as mem:
        profile = source.profile | {"driver": "GTiff"}
        with mem.open(**profile) as tmp:
            tmp.write(source.read())
            tmp.update_tags(ns=DOMAIN, **metadata)
        with mem.open() as tagged:
            copy(tagged, dst, driver="COG", SRC_MDD=DOMAIN, **({"compress": "LZW"} | creation_options))


# ---------------------------------------------------------------------------------------------------------------
# Per job, from the workflow generator: one argument, safe through HTCondor and pegasus-cluster

METADATA_B64 = "--metadata-b64"  # the converter's option: a base64url JSON object of KEY -> value


def encode_metadata(metadata: dict[str, str]) -> str:
    """base64url of compact JSON, unpadded: only [A-Za-z0-9_-], so no quoting layer (HTCondor's arguments,
    pegasus-cluster's whitespace split, a shell) can change it, whatever the keys hold."""
    data = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_metadata(text: str) -> dict[str, str]:
    """The inverse of `encode_metadata` (the converter has its own copy of these few lines)."""
    value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("metadata must be a JSON object")
    return {str(k): str(v) for k, v in value.items()}


def converter_version(converter: Path) -> str:
    """`cog-pipeline X.Y.Z, generate_cog sha256:<12 hex>`: the package and the exact converter build staged."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("cog-pipeline")
    except PackageNotFoundError:
        package = "unknown"
    try:
        digest = "sha256:" + hashlib.sha256(Path(converter).read_bytes()).hexdigest()[:12]
    except OSError:
        digest = "unreadable"
    return f"cog-pipeline {package}, {Path(converter).name} {digest}"


def converter_creation_options(profile_overrides: tuple[str, ...] = ()) -> dict[str, str]:
    """The COG creation options of the run's profile (transformations/profile.py; the thread count varies per
    worker and is left out) and the JPEG preview's quality."""
    from cog_pipeline.transformations.profile import with_overrides

    profile = with_overrides(profile_overrides)
    options = {k: v for k, v in profile.creation_options(1).items() if k != "NUM_THREADS"}
    return options | {"JPEG_QUALITY": str(profile.jpeg_quality)}


def job_metadata_encoder(*, source_bucket: str, listed: dict[str, ObjectInfo], manifest_key: str, run_id: str,
                         converter: Path, profile: tuple[str, ...] = ()) -> Callable[[str], str]:
    """key -> the encoded `--metadata-b64` value for that input, from the pre-flight listing's ETag and size.

    GDAL_VERSION and CREATED_UTC are left to the converter: it knows the GDAL it converted with (the
    container's, not this host's) and when it wrote the COG.
    """
    base = provenance_metadata(source_bucket=source_bucket, source_key="", source_etag="", source_size=0,
                               manifest_key=manifest_key, run_id=run_id, converter_version=converter_version(converter),
                               creation_options=converter_creation_options(profile), gdal_version="")
    for name in ("GDAL_VERSION", "CREATED_UTC", "SOURCE_KEY", "SOURCE_ETAG", "SOURCE_SIZE"):
        del base[name]
    # 100,000 jobs: encode the run-wide part once. JSON allows spaces before a comma, so the head is padded to a
    # multiple of 3 bytes, where base64 of a concatenation is the concatenation of the base64s.
    head = json.dumps(base, ensure_ascii=False, separators=(",", ":"), sort_keys=True)[:-1].encode("utf-8")
    head += b" " * (-len(head) % 3)
    prefix = base64.urlsafe_b64encode(head).decode("ascii")

    def encode(key: str) -> str:
        info = listed.get(key)
        tail = json.dumps({"SOURCE_ETAG": info.etag if info else "", "SOURCE_KEY": key,
                           "SOURCE_SIZE": str(info.size) if info else ""}, ensure_ascii=False, separators=(",", ":"))
        return prefix + base64.urlsafe_b64encode(b"," + tail[1:].encode("utf-8")).rstrip(b"=").decode("ascii")

    return encode


# ---------------------------------------------------------------------------------------------------------------
# provenance.jsonl

def provenance_line(
    *,
    record: dict[str, Any],
    source: ObjectInfo | None,
    outputs: dict[str, ObjectInfo],
    source_bucket: str,
    output_bucket: str,
    run_id: str,
    host: str | None = None,
) -> dict[str, Any]:
    """One line of provenance.jsonl from a job record and the listed versions of its input and outputs."""
    return {
        "run_id": run_id,
        "source": {"bucket": source_bucket, "key": source.key if source else record.get("key"),
                   "etag": source.etag if source else None, "size": source.size if source else None},
        "outputs": [{"bucket": output_bucket, "key": o.key, "etag": o.etag, "size": o.size} for o in outputs.values()],
        "status": record.get("status"),
        "attempts": record.get("attempts"),
        "seconds": record.get("seconds"),
        "host": host or socket.gethostname(),
        "written_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def append_provenance(run_dir: Path, line: dict[str, Any]) -> None:
    """Append one JSON line, whole: one write() under O_APPEND and an exclusive lock, so lines never interleave."""
    data = (json.dumps(line, ensure_ascii=False, sort_keys=True, default=str) + "\n").encode("utf-8")
    fd = os.open(Path(run_dir) / PROVENANCE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
    finally:
        os.close(fd)


def record_provenance(
    run_dir: Path,
    *,
    processed: Iterable[ProcessedOutput],
    sources: dict[str, ObjectInfo],
    source_bucket: str,
    output_bucket: str,
) -> int:
    """Write provenance.jsonl, one line per processed row, whole and atomically; returns the lines.

    `processed`: reconcile's decisions, each with its outputs as reconcile's listing found them (recorded
    under the row's key); `sources`: a listing of their inputs. Rewriting the file (not appending) keeps a
    repeated reconcile from duplicating lines; lines are written as they are made, never all held at once.
    """
    from cog_pipeline.run.naming import job_id_of
    from cog_pipeline.run.rundir.jobs import JobRecord, job_file
    from cog_pipeline.storage import atomic

    run_dir = Path(run_dir)
    run_id = run_dir.name.rpartition("workflow-run-")[2]
    host = socket.gethostname()
    count = 0
    with atomic.replacing(run_dir / PROVENANCE_FILE, 0o644) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in processed:
            record = JobRecord.load(job_file(run_dir / "jobs", job_id_of(row.line)))
            facts = record.to_json() if record is not None and record.line == row.line else {"key": row.key}
            line = provenance_line(record=facts, source=sources.get(row.key), outputs=row.objects,
                                   source_bucket=source_bucket, output_bucket=output_bucket, run_id=run_id, host=host)
            fh.write(json.dumps(line, ensure_ascii=False, sort_keys=True, default=str) + "\n")
            count += 1
    return count


def read_provenance_lines(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / PROVENANCE_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------------
# Reading it back from a bucket

def read_provenance(store: ObjectStore, key: str, *, stats: dict[str, int] | None = None) -> dict[str, str]:
    """The COG_PIPELINE domain of the object at `key`, by ranged reads of its header ({} when it has none).

    `stats`, when given, receives the number of requests and bytes fetched.
    """
    import rasterio

    from cog_pipeline.storage.ranged import OPEN_NAME, opener_for

    opener, blocks = opener_for(store, key)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        with rasterio.open(OPEN_NAME, opener=opener) as src:
            tags = dict(src.tags(ns=DOMAIN))
    if stats is not None:
        stats.update(requests=blocks.requests, bytes=blocks.bytes_fetched)
    return tags


def find_run_dir(work_dir: Path, run_id: str) -> Path | None:
    """The run directory a RUN_ID names, under a work directory (run ids are claim timestamps)."""
    from cog_pipeline.run.naming import RUN_DIR_PREFIX

    candidate = Path(work_dir) / f"{RUN_DIR_PREFIX}{run_id}"
    return candidate if (candidate / "run.json").is_file() else None
