"""Claim manifests: rename `*raw.csv` to `*processing-<TS>.csv` before any work is scheduled.

The claim is the only step that must be exclusive. Its protocol, in order:

1. take a local lock (one scan at a time on this access point) and make `workflow-run-<TS>/`, state *claiming*;
2. create the marker `<manifest>.claim` with a conditional create (S3 If-None-Match: *, O_EXCL-style on
   folders): whoever creates it owns the claim, so two scans, even on two hosts, never both claim;
3. copy the manifest into the run directory and create `<base>processing-<TS>.csv` (again create-if-absent);
4. record *claimed*, then delete the raw manifest only if it is still the version read (If-Match), so a
   manifest re-uploaded meanwhile is kept for the next tick, and finally delete the marker.

A crash between any two steps leaves either a raw manifest (claimed next time; an abandoned marker is
cleaned up by `recover_claims`) or a processing file with its run directory (carried on next time).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath

from .naming import (
    CLAIM_MARKER_SUFFIX,
    PROCESSING_RE,
    RUN_DIR_PREFIX,
    RunNames,
    format_timestamp,
    listing_prefix,
    matches_pattern,
    parse_timestamp,
)
from .rundir import ABANDONED, CLAIMED, CLAIMING, RunDir, RunInfo, list_run_dirs
from .store import ObjectInfo, ObjectStore, PreconditionFailed, StoreConfig, StoreError

LOCK_NAME = ".cog-pipeline.lock"
# A marker older than this whose claim never completed is abandoned (a claim takes seconds).
STALE_MARKER_AGE = timedelta(minutes=10)


class ClaimError(RuntimeError):
    """A claim cannot proceed (lock held too long, bucket unreachable); nothing was changed."""


@dataclass(frozen=True)
class PendingManifest:
    info: ObjectInfo
    problem: str | None = None  # why it will not be claimed (e.g. base name not unique)


@dataclass(frozen=True)
class Claim:
    run_dir: RunDir
    names: RunNames


@contextmanager
def scan_lock(work_dir: Path, timeout: float = 120.0) -> Iterator[None]:
    """One claiming scan at a time on this machine; the lock dies with the process, so a crash never wedges it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(work_dir / LOCK_NAME, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ClaimError(f"another scan has held {work_dir / LOCK_NAME} for over {timeout:.0f} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class BucketView:
    """What one listing of the manifest prefix shows: work to claim, claims in flight, runs in flight."""

    pending: list[PendingManifest]
    markers: list[ObjectInfo]
    processing: list[ObjectInfo]


def look(store: ObjectStore, pattern: str) -> BucketView:
    """List the bucket once under the pattern's literal prefix and sort what is there."""
    manifests: list[ObjectInfo] = []
    markers: list[ObjectInfo] = []
    processing: list[ObjectInfo] = []
    for info in store.list(listing_prefix(pattern)):
        if info.key.endswith(CLAIM_MARKER_SUFFIX):
            if matches_pattern(info.key[: -len(CLAIM_MARKER_SUFFIX)], pattern):
                markers.append(info)
        elif PROCESSING_RE.match(info.key):
            processing.append(info)
        elif matches_pattern(info.key, pattern):
            manifests.append(info)
    by_name: dict[str, list[str]] = {}
    for info in manifests:
        by_name.setdefault(PurePosixPath(info.key).name, []).append(info.key)
    pending = []
    for info in manifests:
        same = by_name[PurePosixPath(info.key).name]
        problem = None
        if len(same) > 1:
            problem = (
                f"manifest base name {PurePosixPath(info.key).name!r} is not unique in the bucket "
                f"({', '.join(sorted(same))}); rename all but one so results cannot be confused"
            )
        pending.append(PendingManifest(info, problem))
    return BucketView(pending, markers, processing)


def allocate_run_dir(work_dir: Path, now: datetime | None = None) -> tuple[str, RunDir]:
    """A fresh workflow-run-<TS>/ whose TS no other run has used, bumping by a second when needed."""
    moment = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    existing = sorted(p.name for p in work_dir.glob(f"{RUN_DIR_PREFIX}*"))
    if existing:
        try:
            latest = parse_timestamp(existing[-1][len(RUN_DIR_PREFIX) :])
            moment = max(moment, latest + timedelta(seconds=1))
        except ValueError:
            pass
    while True:
        ts = format_timestamp(moment)
        path = work_dir / f"{RUN_DIR_PREFIX}{ts}"
        try:
            path.mkdir(parents=True)
            return ts, RunDir(path)
        except FileExistsError:
            moment += timedelta(seconds=1)


def _marker_body(names: RunNames, etag: str) -> bytes:
    return json.dumps(
        {"timestamp": names.timestamp, "host": socket.gethostname(), "pid": os.getpid(), "etag": etag}
    ).encode()


def claim_one(
    store: ObjectStore,
    manifest: ObjectInfo,
    *,
    work_dir: Path,
    output_bucket: str,
    store_config: StoreConfig,
    engine: str = "local",
) -> Claim | None:
    """Claim one manifest. None when another scan owns it (nothing of ours is left behind)."""
    ts, run_dir = allocate_run_dir(work_dir)
    names = RunNames(manifest.key, ts)
    info = RunInfo(
        timestamp=ts,
        input_bucket=store.bucket,
        output_bucket=output_bucket,
        manifest_key=manifest.key,
        processing_key=names.processing_key,
        store=store_config.to_json(),
        state=CLAIMING,
        engine=engine,
    )
    run_dir.save(info)
    try:
        store.create(names.claim_marker_key, _marker_body(names, manifest.etag))
    except PreconditionFailed:
        shutil.rmtree(run_dir.path, ignore_errors=True)
        return None
    try:
        data, read = store.read_bytes(manifest.key)
    except StoreError:
        # The manifest vanished between listing and reading: someone else finished a claim, or it was removed.
        store.delete(names.claim_marker_key)
        shutil.rmtree(run_dir.path, ignore_errors=True)
        return None
    (run_dir.path / RunDir.MANIFEST).write_bytes(data)
    info.manifest_etag = read.etag
    run_dir.save(info)
    processing = store.create(names.processing_key, data)
    _finish_claim(store, run_dir, names, processing, read.etag)
    return Claim(run_dir, names)


def _finish_claim(store: ObjectStore, run_dir: RunDir, names: RunNames, processing: ObjectInfo, etag: str) -> None:
    info = run_dir.load()
    info.state = CLAIMED
    info.claimed_at = processing.last_modified.isoformat()
    run_dir.save(info)
    _delete_raw(store, names.manifest_key, etag)
    store.delete(names.claim_marker_key)


def recover_claims(store: ObjectStore, work_dir: Path, view: BucketView, now: datetime | None = None) -> list[str]:
    """Finish or undo claims a crash interrupted. Returns one line per action, for the scan's log.

    Call with the scan lock held and a fresh `look()`; the caller looks again afterwards.
    """
    now = now or datetime.now(timezone.utc)
    actions: list[str] = []
    runs = {r.timestamp: r for r in list_run_dirs(work_dir)}
    handled: set[str] = set()
    for marker in view.markers:
        manifest_key = marker.key[: -len(CLAIM_MARKER_SUFFIX)]
        ts = _marker_timestamp(store, marker.key)
        run_dir = runs.get(ts or "")
        if run_dir is not None and run_dir.load().manifest_key == manifest_key:
            handled.add(run_dir.timestamp)
            actions.extend(_recover_local(store, run_dir))
            continue
        if now - marker.last_modified < STALE_MARKER_AGE:
            continue  # another scan may be mid-claim right now
        if ts and store.head(RunNames(manifest_key, ts).processing_key) is not None:
            # A claim (not ours) got as far as the processing file: complete its bucket side.
            etag = _marker_field(store, marker.key, "etag") or ""
            _delete_raw(store, manifest_key, etag)
            actions.append(f"completed another host's claim of {manifest_key} (its processing file has no run here)")
        else:
            actions.append(f"removed stale claim marker {marker.key}; {manifest_key} stays raw")
        store.delete(marker.key)
    for ts, run_dir in runs.items():
        if ts in handled:
            continue
        info = run_dir.load()
        if info.state == CLAIMING and info.input_bucket == store.bucket:
            actions.extend(_recover_local(store, run_dir))
    return actions


def _recover_local(store: ObjectStore, run_dir: RunDir) -> list[str]:
    info = run_dir.load()
    names = RunNames(info.manifest_key, info.timestamp)
    etag = str(info.manifest_etag or "")
    if info.state == CLAIMING:
        processing = store.head(names.processing_key)
        if processing is None:
            if _marker_timestamp(store, names.claim_marker_key) == info.timestamp:
                store.delete(names.claim_marker_key)
            run_dir.set_state(ABANDONED)
            shutil.rmtree(run_dir.path, ignore_errors=True)
            return [f"undid an interrupted claim of {info.manifest_key}; it stays raw"]
        _finish_claim(store, run_dir, names, processing, etag)
        return [f"completed an interrupted claim of {info.manifest_key} -> {names.processing_key}"]
    # Claimed, but the raw manifest or the marker outlived a crash.
    _delete_raw(store, names.manifest_key, etag)
    store.delete(names.claim_marker_key)
    return [f"cleaned up after the claim of {info.manifest_key} -> {names.processing_key}"]


def _delete_raw(store: ObjectStore, key: str, etag: str) -> None:
    try:
        store.delete(key, if_match=etag)
    except PreconditionFailed:
        pass  # gone already, or re-uploaded since: then it is new work for the next claim


def _marker_field(store: ObjectStore, key: str, field_name: str) -> str | None:
    try:
        data, _ = store.read_bytes(key)
        return str(json.loads(data.decode()).get(field_name) or "") or None
    except (StoreError, ValueError, UnicodeDecodeError, AttributeError):
        return None


def _marker_timestamp(store: ObjectStore, key: str) -> str | None:
    return _marker_field(store, key, "timestamp")
