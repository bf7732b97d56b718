"""Claim manifests: rename `*raw.csv` to `*processing-<TS>.csv` before any work is scheduled.

The claim is the only step that must be exclusive, and it is fenced. Its protocol, in order:

1. take a local lock (one scan at a time on this access point) and make `workflow-run-<TS>/`, state *claiming*
   (TS is the true claim second, `-N` for the N-th run in one second);
2. create the marker `<manifest>.claim` with a conditional create (S3 If-None-Match: *, link() on folders).
   Its content names the claimant (ClaimToken: host, pid, random id, time), so a PUT whose answer was lost
   and whose retry got 412 is recognised as our own by reading the marker back. Holding it, check that no
   file of this manifest in the bucket uses TS yet (another work dir or host claimed an earlier upload in
   the same second); if one does, give the marker back and start again at 1 with the next `-N`;
3. read the manifest, copy it into the run directory;
4. fence: renew the marker (PUT If-Match its last ETag; a locked compare-and-swap on folders);
5. create `<base>processing-<TS>.csv` (create-if-absent, lost answers recognised the same way);
6. fence again. If it fails, a scan took the stale marker over while we were between 4 and 5: our
   processing file is deleted (If-Match its ETag) and the claim is lost. (A scan that instead found our
   processing file completed our claim: that is told apart by the raw manifest being gone and no other
   processing file of the manifest existing.)
7. record *claimed* and the token (with the processing file's ETag, for `fence_check` at reconcile);
8. fence, delete the raw manifest only if it is still the version read (If-Match), so a manifest re-uploaded
   meanwhile is kept for the next tick, and delete the marker If-Match our last version.

A takeover of a marker nobody renewed for STALE_MARKER_AGE is a single conditional delete of exactly the
version judged stale (`recover_claims`): one scan wins it, and the sleeper's next renewal fails.
A crash between any two steps leaves either a raw manifest (claimed next time; an abandoned marker is
cleaned up by `recover_claims`) or a processing file with its run directory (carried on next time).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath

from cog_pipeline.config import SETTINGS, env_value
from cog_pipeline.run.naming import (
    CLAIM_MARKER_SUFFIX,
    PROCESSING_RE,
    RESULT_RE,
    RUN_DIR_PREFIX,
    TIMESTAMP_RE,
    RunNames,
    listing_prefix,
    matches_pattern,
    unique_timestamp,
)
from cog_pipeline.run.rundir import ABANDONED, CLAIMED, CLAIMING, RunDir, RunInfo, list_run_dirs
from cog_pipeline.storage import locking
from cog_pipeline.storage.store import ObjectInfo, ObjectStore, PreconditionFailed, StoreConfig, StoreError

LOCK_NAME = ".cog-pipeline.lock"
QUARANTINE_SUFFIX = ".quarantined"  # a malformed claim marker, moved aside (never matched by a pattern: not .csv)
# A marker not renewed for this long is abandoned (a claim takes seconds and renews at every step):
# claim.stale_marker_age_s, set by COG_PIPELINE_STALE_MARKER_AGE for tests that reproduce a stall in seconds.
STALE_MARKER_AGE = timedelta(seconds=SETTINGS["claim.stale_marker_age_s"].default)


def stale_marker_age() -> timedelta:
    """claim.stale_marker_age_s (config.py), read at each call so a test can set its environment variable."""
    return timedelta(seconds=env_value("claim.stale_marker_age_s"))


class ClaimError(RuntimeError):
    """A claim cannot proceed (lock held too long, bucket unreachable); nothing was changed."""


@dataclass(frozen=True)
class PendingManifest:
    info: ObjectInfo
    problem: str | None = None  # why it will not be claimed (e.g. base name not unique)

    @property
    def name(self) -> str:
        """The key as messages and result files show it (always UTF-8: see `safe_manifest_name`)."""
        return safe_manifest_name(self.info.key)


@dataclass(frozen=True)
class Claim:
    run_dir: RunDir
    names: RunNames
    token: ClaimToken | None = None
    failed: str | None = None  # the manifest failed whole at its claim (its name): the run is reconciled already


@contextmanager
def scan_lock(work_dir: Path, timeout: float | None = None) -> Iterator[None]:
    """One claiming scan at a time on this machine; the lock dies with the process, so a crash never wedges it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        with locking.held(work_dir / LOCK_NAME, "the scan lock of this work dir (another scan)", timeout):
            yield
    except locking.LockTimeout as exc:
        raise ClaimError(str(exc)) from None


@dataclass(frozen=True)
class BucketView:
    """What one listing of the manifest prefix shows: work to claim, claims in flight, runs in flight."""

    pending: list[PendingManifest]
    markers: list[ObjectInfo]
    processing: list[ObjectInfo]


MAX_MANIFEST_BYTES = 256 * 1024 * 1024  # ~5 million rows; anything bigger is not a manifest someone wrote
SNIFF_BYTES = 1024
# Magic numbers of files that are certainly not a manifest (TIFF first: the images live in the same bucket).
_BINARY_MAGIC = {
    b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image", b"II+\x00": "a BigTIFF image", b"MM\x00+": "a BigTIFF image",
    b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "a gzip file", b"%PDF": "a PDF",
}


def manifest_object_problem(store: ObjectStore, info: ObjectInfo) -> str | None:
    """Why a matched object is not a text CSV manifest, or None. Reads at most its first KiB (a ranged GET).

    A glob can match more than manifests (an image named `x.csv`, an export left in the bucket); such an
    object is skipped and reported, never renamed or deleted. Text means: no known binary magic (TIFF
    `II*\\0`/`MM\\0*` first), no NUL byte and few other control bytes. Bytes above 0x7f are allowed: a
    Latin-1 row is still a row, and fails by itself with its bytes returned.
    """
    if info.size > MAX_MANIFEST_BYTES:
        return f"{info.key} is {info.size} bytes, too large to be a manifest (at most {MAX_MANIFEST_BYTES})"
    if info.size == 0:
        return None  # an empty manifest is answered with an empty processed file
    try:
        head = store.read_head(info.key, SNIFF_BYTES)
    except StoreError:
        return None  # gone since the listing: the claim will notice
    for magic, what in _BINARY_MAGIC.items():
        if head.startswith(magic):
            return f"{info.key} is {what}, not a CSV manifest; it is left in place"
    controls = sum(b < 32 and b not in (9, 10, 12, 13) for b in head)
    # One stray control byte is a bad row (it fails by itself); NULs or many control bytes are a binary file.
    if b"\x00" in head or controls * 10 > len(head):
        return f"{info.key} holds binary data (NUL or control bytes), not a text CSV manifest; it is left in place"
    return None


# Run-record fields (kept by RunInfo.unknown) of a manifest whose name is not UTF-8.
SOURCE_KEY = "source_key"  # the key exactly as listed (a folder name's bytes as surrogates), read and deleted
FAILS_WHOLE = "fails_whole"  # why every row fails: set at the claim, before the processing file exists


def safe_manifest_name(key: str) -> str:
    """`key` in UTF-8: each byte of a folder file name that is not UTF-8 (a surrogate here) becomes U+FFFD,
    which is what S3 clients list for such bytes in a key (botocore decodes listings with errors='replace')."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def manifest_name_problem(key: str) -> str | None:
    """Why the manifest's name is not UTF-8, or None. Such a manifest is claimed under `safe_manifest_name`
    and failed whole, a reason on every row, so its rows are answered (in a failed file beside it, named from
    the safe rendering) and no result file carries a name the uploader did not write. No row is converted:
    result files named after a rendering would be answers to a manifest nobody uploaded under that name.

    A folder bucket can hold such a file name (its bytes are kept); an S3 key that was not UTF-8 reaches us
    with U+FFFD for each bad byte (the store, or botocore's listing, replaced them)."""
    safe = safe_manifest_name(key)
    if safe != key:
        shown = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        what = f"the manifest's name '{shown}' is not UTF-8 (\\xNN: a byte that is not)"
    elif "\ufffd" in key:
        what = f"the manifest's name '{key}' was not UTF-8 (the store lists each byte that was not as U+FFFD)"
    else:
        return None
    return (f"{what}; object keys are UTF-8, so its results are named after '{safe}' and none of its rows was "
            "converted: rename the manifest in UTF-8 and upload it again")


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
        problem = manifest_object_problem(store, info)
        if problem is None and len(same) > 1:
            problem = (
                f"manifest base name {PurePosixPath(info.key).name!r} is not unique in the bucket "
                f"({', '.join(sorted(same))}); rename all but one so results cannot be confused"
            )
        pending.append(PendingManifest(info, problem))
    return BucketView(pending, markers, processing)


def allocate_run_dir(work_dir: Path, now: datetime | None = None, taken: frozenset[str] = frozenset()) -> tuple[str, RunDir]:
    """A fresh workflow-run-<TS>/ named for the true claim second: the N-th run in one second gets `-N`.

    `taken`: timestamps the bucket already uses for this manifest (another work dir or host claimed them).
    Earlier versions bumped the time by a second per collision, so a tick claiming many manifests dated
    them into the future; the suffix keeps every name unique and every timestamp true.
    """
    moment = now or datetime.now(timezone.utc)
    ordinal = 1
    while True:
        ts = unique_timestamp(moment, ordinal)
        path = work_dir / f"{RUN_DIR_PREFIX}{ts}"
        try:
            if ts not in taken:
                path.mkdir(parents=True)
                return ts, RunDir(path)
        except FileExistsError:
            pass
        ordinal = 2 if ordinal == 1 else ordinal + 1


def timestamps_in_bucket(store: ObjectStore, base: str, timestamp: str) -> frozenset[str]:
    """Claim timestamps of the claim second of `timestamp` that any run of this manifest base already used
    in the bucket (processing, processed or failed files): three listings of a few keys each."""
    second = timestamp[: len("YYYYmmdd-HHMMSS")]
    used = set()
    for kind in ("processing", "processed", "failed"):
        for info in store.list(f"{base}{kind}-{second}"):
            match = RESULT_RE.search(info.key)
            if match and info.key[: match.start()] == base:
                used.add(match.group(2))
    return frozenset(used)


# ---------------------------------------------------------------------------------------------- fencing


class ClaimLost(RuntimeError):
    """This scan no longer owns the claim (its marker was taken over, or its processing file is not its own)."""


@dataclass(frozen=True)
class ClaimToken:
    """Who claims: written into the marker so the owner (and only it) recognises the marker as its own."""

    id: str  # random: unique even for two claims by one process in one second
    host: str
    pid: int
    created: str  # ISO time on the claimant's clock, for people reading the marker
    timestamp: str  # the run's claim timestamp (names the processing file)
    manifest_etag: str  # the version of the raw manifest being claimed
    processing_etag: str | None = None  # set once the processing file exists: what fence_check compares
    # The raw manifest's key as listed, when its name is not UTF-8 (the run's names use its UTF-8 rendering):
    # a scan completing this claim for a dead owner deletes the raw file by this name.
    source_key: str | None = None

    @classmethod
    def new(cls, timestamp: str, manifest_etag: str, source_key: str | None = None) -> ClaimToken:
        return cls(
            uuid.uuid4().hex, socket.gethostname(), os.getpid(),
            datetime.now(timezone.utc).isoformat(timespec="seconds"), timestamp, manifest_etag, source_key=source_key,
        )

    def marker_body(self, renewal: int) -> bytes:
        """The marker's content; `renewal` makes every renewal a new version (a new ETag) the owner can tell apart."""
        fields = {k: v for k, v in asdict(self).items() if k != "processing_etag" and not (k == "source_key" and v is None)}
        # "etag" is the field name older scans wrote the manifest version under; keep it readable for them.
        return json.dumps({**fields, "etag": self.manifest_etag, "renewal": renewal}, sort_keys=True).encode()

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ClaimToken:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})  # type: ignore[arg-type]


@dataclass
class _Fence:
    """The owner's hold on its marker: the marker's current ETag, advanced by each conditional renewal."""

    key: str
    token: ClaimToken
    etag: str
    renewals: int = 0


def write_recognised(store: ObjectStore, key: str, data: bytes, if_match: str | None = None) -> ObjectInfo:
    """A conditional write (create if absent, or replace if_match) that also succeeds when an earlier attempt
    of it did; PreconditionFailed when the key holds other bytes, which are never overwritten.

    If the server applied our PUT but the response was lost, botocore retries and the retry fails its own
    precondition (412): the object then holds exactly our bytes, so it is ours and we carry on at once.
    """
    try:
        return store.create(key, data) if if_match is None else store.replace(key, data, if_match)
    except PreconditionFailed:
        try:
            current, info = store.read_bytes(key)
        except StoreError:
            raise PreconditionFailed(f"{key}: lost the conditional write") from None
        if current == data:
            return info
        raise


def _take_marker(store: ObjectStore, key: str, token: ClaimToken) -> _Fence | None:
    """Create the marker if absent (If-None-Match: *). None when another claimant holds it."""
    try:
        info = write_recognised(store, key, token.marker_body(0), None)
    except PreconditionFailed:
        return None
    return _Fence(key, token, info.etag)


def _renew(store: ObjectStore, fence: _Fence) -> None:
    """The fence: rewrite the marker only if it is still the version we last wrote (If-Match).

    Succeeding proves the claim is ours at this instant and moves the marker to a new version, so a scan
    that judged the previous version stale can no longer take it over (its If-Match fails); failing means a
    takeover happened, and nothing more may be published.
    """
    body = fence.token.marker_body(fence.renewals + 1)
    try:
        info = write_recognised(store, fence.key, body, fence.etag)
    except PreconditionFailed as exc:
        raise ClaimLost(f"the claim marker {fence.key} is no longer ours ({exc})") from None
    fence.etag, fence.renewals = info.etag, fence.renewals + 1


def fence_check(store: ObjectStore, names: RunNames, token: ClaimToken) -> None:
    """Raise ClaimLost unless this claim's processing file is still the very object the claim created.

    One conditional request (S3 HEAD If-Match on its ETag; an equivalent locked comparison on folders).
    Reconcile calls it before writing result files: a run whose processing file was removed or replaced
    (by an operator cancelling it, or another claim) must not answer for the manifest.
    """
    if not token.processing_etag:
        raise ClaimLost(f"the claim of {names.manifest_key} never recorded its processing file")
    try:
        store.check(names.processing_key, token.processing_etag)
    except PreconditionFailed as exc:
        raise ClaimLost(f"{names.processing_key} is not this claim's processing file any more ({exc})") from None


def claim_token(info: RunInfo) -> ClaimToken | None:
    """The token a claim recorded in run.json (None for runs claimed before fencing existed)."""
    data = info.claim_token
    return ClaimToken.from_json(data) if isinstance(data, dict) else None


def _results_in_place(store: ObjectStore, results: dict[str, Path]) -> bool:
    """Every result file is already in the bucket with this run's bytes: a reconcile that crashed after
    publishing (and after removing its processing file) is being repeated, not a claim lost."""
    if not results:
        return False
    for key, path in results.items():
        try:
            data, _ = store.read_bytes(key)
        except StoreError:
            return False
        if data != path.read_bytes():
            return False
    return True


def fence_before_results(store: ObjectStore, run_dir: RunDir, info: RunInfo, names: RunNames, results: dict[str, Path]) -> None:
    """The fence reconcile passes before it writes any result file (`results`: key -> local copy).

    Runs claimed before fencing existed carry no token and pass. A repeated reconcile whose result files
    are all in place passes too (its processing file is gone because it removed it). Otherwise the
    processing file must still be this claim's (`fence_check`); if not, the run is marked ABANDONED (no
    result file of it is ever written, so the manifest is answered once, by whoever holds it now) and
    ClaimLost is raised.
    """
    token = claim_token(info)
    if token is None:
        return
    try:
        fence_check(store, names, token)
    except ClaimLost:
        if _results_in_place(store, results):
            return
        run_dir.set_state(ABANDONED)
        raise


# ---------------------------------------------------------------------------------------------- claiming


def claim_one(
    store: ObjectStore,
    manifest: ObjectInfo,
    *,
    work_dir: Path,
    output_bucket: str,
    store_config: StoreConfig,
    engine: str = "local",
    output_prefix: str | None = None,
) -> Claim | None:
    """Claim one manifest. None when another scan owns it (nothing of ours is left behind); ClaimLost when
    we held its marker but a scan took it over while we stalled (nothing of ours is left behind either).

    The claim timestamp is unique in the bucket, not only in this work dir: once the marker is ours (so no
    other claimant of this manifest can publish meanwhile), the bucket is asked which timestamps of this
    second the manifest's files already use; a taken one is given back and the claim starts again with the
    next ordinal. Another host claiming an earlier upload of the same manifest in the same second therefore
    never shares a processing or result file with this claim.
    """
    moment = datetime.now(timezone.utc)
    taken: frozenset[str] = frozenset()
    while True:
        ts, run_dir = allocate_run_dir(work_dir, moment, taken)
        outcome = _claim_as(store, manifest, ts, run_dir, output_bucket, store_config, engine, output_prefix)
        if not isinstance(outcome, frozenset):
            break
        taken = taken | outcome
    return outcome


def _claim_as(
    store: ObjectStore, manifest: ObjectInfo, ts: str, run_dir: RunDir, output_bucket: str,
    store_config: StoreConfig, engine: str, output_prefix: str | None,
) -> Claim | None | frozenset[str]:
    """claim_one with the timestamp `ts`; the bucket's used timestamps of that second when `ts` is one."""
    name_problem = manifest_name_problem(manifest.key)
    names = RunNames(safe_manifest_name(manifest.key), ts)  # every file the run writes has a UTF-8 name
    token = ClaimToken.new(ts, manifest.etag, manifest.key if name_problem else None)
    info = RunInfo(
        timestamp=ts,
        input_bucket=store.bucket,
        output_bucket=output_bucket,
        manifest_key=names.manifest_key,
        processing_key=names.processing_key,
        store=store_config.to_json(),
        state=CLAIMING,
        engine=engine,
        output_prefix=output_prefix or None,
    )
    info.claim_token = token.to_json()
    if name_problem:
        info.unknown.update({SOURCE_KEY: manifest.key, FAILS_WHOLE: name_problem})
    run_dir.save(info)
    fence = _take_marker(store, names.claim_marker_key, token)
    if fence is None:
        shutil.rmtree(run_dir.path, ignore_errors=True)
        return None
    used = timestamps_in_bucket(store, names.base, ts)
    if ts in used:
        _release_marker(store, fence.key, fence.etag)
        shutil.rmtree(run_dir.path, ignore_errors=True)
        return used
    try:
        data, read = store.read_bytes(manifest.key)
    except StoreError:
        # The manifest vanished between listing and reading: someone else finished a claim, or it was removed.
        _release_marker(store, fence.key, fence.etag)
        shutil.rmtree(run_dir.path, ignore_errors=True)
        return None
    (run_dir.path / RunDir.MANIFEST).write_bytes(data)
    info.manifest_etag = read.etag
    run_dir.save(info)
    try:
        processing = _publish_processing(store, names, data, fence, read.etag, manifest.key)
    except ClaimLost:
        # Not "another scan claimed it": we held the marker and a takeover (after a stall) took it.
        run_dir.set_state(ABANDONED)
        shutil.rmtree(run_dir.path, ignore_errors=True)
        raise
    token = replace(token, processing_etag=processing.etag)
    fence.token = token
    info.claim_token = token.to_json()
    run_dir.save(info)
    _finish_claim(store, run_dir, info, names, processing, read.etag, fence)
    # A name that is not UTF-8 fails the manifest whole: the workflow's preflight fails its rows with the reason.
    return Claim(run_dir, names, token, failed=name_problem)


def _raw_key(info: RunInfo) -> str:
    """The key the run's manifest was read from (its name as listed, which a run names only in UTF-8)."""
    return str(info.unknown.get(SOURCE_KEY) or info.manifest_key)


def _publish_processing(
    store: ObjectStore, names: RunNames, data: bytes, fence: _Fence, etag: str, raw_key: str | None = None
) -> ObjectInfo:
    """Create the processing file between two fences; undo it if the second shows the claim was taken over."""
    _renew(store, fence)
    processing = write_recognised(store, names.processing_key, data, None)
    try:
        _renew(store, fence)
    except ClaimLost:
        if not _taken_over(store, names, etag, raw_key):
            # A scan that found our marker stale *with* our processing file completed our claim for us.
            return processing
        try:
            store.delete(names.processing_key, if_match=processing.etag)
        except PreconditionFailed:
            pass
        raise
    return processing


def _taken_over(store: ObjectStore, names: RunNames, manifest_etag: str, raw_key: str | None = None) -> bool:
    """After losing the marker with our processing file published: did another scan take the claim over?

    A takeover claims from the raw manifest and deletes it only after creating its own processing file; a
    scan completing *our* claim deletes the raw manifest and creates nothing. So: raw still at the version we
    read, or another processing file of this manifest present -> taken over.
    """
    raw = store.head(raw_key or names.manifest_key)
    if raw is not None and raw.etag == manifest_etag:
        return True
    prefix = f"{names.base}processing-"
    return any(
        info.key != names.processing_key and (m := PROCESSING_RE.match(info.key)) and m.group("base") == names.base
        for info in store.list(prefix)
    )


def _finish_claim(
    store: ObjectStore, run_dir: RunDir, info: RunInfo, names: RunNames, processing: ObjectInfo, etag: str,
    fence: _Fence | None = None,
) -> None:
    info.state = CLAIMED
    info.claimed_at = processing.last_modified.isoformat()
    run_dir.save(info)
    if fence is not None:
        try:
            _renew(store, fence)  # the fence before deleting the raw manifest
        except ClaimLost:
            # Only a scan that saw our processing file can have removed our marker now: it completed the claim.
            fence_check(store, names, fence.token)
    _delete_raw(store, _raw_key(info), etag)
    if fence is not None:
        _release_marker(store, fence.key, fence.etag)
    else:
        _release_own_marker(store, names, info.timestamp)


def _release_marker(store: ObjectStore, key: str, etag: str) -> None:
    """Delete the marker only if it is still the version we hold (a newer claimant's marker stays)."""
    try:
        store.delete(key, if_match=etag)
    except PreconditionFailed:
        pass


def _read_marker(store: ObjectStore, key: str) -> tuple[dict[str, object], ObjectInfo] | None:
    try:
        data, info = store.read_bytes(key)
    except StoreError:
        return None
    try:
        body = json.loads(data.decode())
    except (ValueError, UnicodeDecodeError):
        body = {}
    return (body if isinstance(body, dict) else {}), info


def _release_own_marker(store: ObjectStore, names: RunNames, timestamp: str) -> None:
    """After a crash: remove the marker if it is this run's (by its timestamp), conditionally on its version."""
    found = _read_marker(store, names.claim_marker_key)
    if found is not None and found[0].get("timestamp") == timestamp:
        _release_marker(store, names.claim_marker_key, found[1].etag)


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
        found = _read_marker(store, marker.key)
        if found is None:
            continue  # gone since the listing
        body, current = found
        ts = str(body.get("timestamp") or "")
        if ts and not TIMESTAMP_RE.fullmatch(ts):
            actions.extend(_quarantine_marker(store, marker.key, current))
            continue
        run_dir = runs.get(ts)
        if run_dir is not None and run_dir.load().manifest_key == manifest_key:
            handled.add(run_dir.timestamp)
            actions.extend(_recover_local(store, run_dir))
            continue
        if current.etag != marker.etag or now - marker.last_modified < stale_marker_age():
            continue  # renewed since the listing, or another scan may be mid-claim right now
        actions.extend(_recover_stale(store, manifest_key, marker.key, body, current))
    for ts, run_dir in runs.items():
        info = run_dir.load() if ts not in handled or run_dir.path.is_dir() else None
        if ts not in handled and info.state == CLAIMING and info.input_bucket == store.bucket:
            actions.extend(_recover_local(store, run_dir))
            info = run_dir.load() if run_dir.path.is_dir() else None  # None: the claim was undone
    return actions


def _quarantine_marker(store: ObjectStore, marker_key: str, current: ObjectInfo) -> list[str]:
    """A marker whose timestamp no claim can have written (`../../x`, control characters, 5,000 characters)
    would name keys no store takes, on every scan. It is moved aside (copied to `<marker>.quarantined`, then
    deleted If-Match the version read), so the manifest is claimed again and the bytes stay for a person."""
    aside = marker_key + QUARANTINE_SUFFIX
    try:
        data, _ = store.read_bytes(marker_key)
        store.put_bytes(aside, data)
        store.delete(marker_key, if_match=current.etag)
    except PreconditionFailed:
        return []  # changed since it was read: the next scan judges it again
    return [f"warning: quarantined claim marker {marker_key}: its timestamp is not a claim timestamp; moved to {aside}"]


def _recover_stale(
    store: ObjectStore, manifest_key: str, marker_key: str, body: dict[str, object], current: ObjectInfo
) -> list[str]:
    """Another claimant's marker, unrenewed for STALE_MARKER_AGE. Every step is conditional on the version
    judged stale, so an owner that wakes and renews meanwhile keeps its claim and we back off."""
    ts = str(body.get("timestamp") or "")
    if ts and store.head(RunNames(manifest_key, ts).processing_key) is not None:
        # That claim got as far as its processing file: it owns the manifest; complete its bucket side.
        try:
            store.check(marker_key, current.etag)
        except PreconditionFailed:
            return []
        raw_key = str(body.get("source_key") or manifest_key)  # a name that is not UTF-8: as listed
        _delete_raw(store, raw_key, str(body.get("manifest_etag") or body.get("etag") or ""))
        _release_marker(store, marker_key, current.etag)
        return [f"completed another host's claim of {manifest_key} (its processing file has no run here)"]
    # The takeover is this one conditional delete: exactly one scan can remove this version, and the owner's
    # next renewal (If-Match on it) then fails, so it publishes nothing more.
    try:
        store.delete(marker_key, if_match=current.etag)
    except PreconditionFailed:
        return []
    return [f"removed stale claim marker {marker_key}; {manifest_key} stays raw"]


def _recover_local(store: ObjectStore, run_dir: RunDir) -> list[str]:
    info = run_dir.load()
    names = RunNames(info.manifest_key, info.timestamp)
    etag = str(info.manifest_etag or "")
    if info.state == CLAIMING:
        processing = store.head(names.processing_key)
        if processing is None:
            _release_own_marker(store, names, info.timestamp)
            run_dir.set_state(ABANDONED)
            shutil.rmtree(run_dir.path, ignore_errors=True)
            return [f"undid an interrupted claim of {info.manifest_key}; it stays raw"]
        token = claim_token(info)
        if token is not None and not token.processing_etag:
            info.claim_token = replace(token, processing_etag=processing.etag).to_json()
            run_dir.save(info)
        _finish_claim(store, run_dir, info, names, processing, etag)
        return [f"completed an interrupted claim of {info.manifest_key} -> {names.processing_key}"]
    # Claimed, but the raw manifest or the marker outlived a crash.
    _delete_raw(store, _raw_key(info), etag)
    _release_own_marker(store, names, info.timestamp)
    return [f"cleaned up after the claim of {info.manifest_key} -> {names.processing_key}"]


def _delete_raw(store: ObjectStore, key: str, etag: str) -> None:
    try:
        store.delete(key, if_match=etag)
    except PreconditionFailed:
        pass  # gone already, or re-uploaded since: then it is new work for the next claim
