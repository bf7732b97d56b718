"""Where each job's files live: job-local LFNs, and the two replica catalogs that map them to objects.

Conventions (shared with `cog_pipeline.pegasus.workflow_gen` and the local engine):

* A job names its files with opaque, job-local LFNs derived from its id (:func:`job_lfns`):
  ``ID0000001.in.tif`` (input), then one per output declared in ``cog_pipeline.outputs``: ``ID0000001.tif``
  and ``ID0000001.jpg``. A key never appears in an LFN or in a job's arguments: the planner joins arguments
  with spaces into an unquoted shell line, and PegasusLite names local files after LFNs.
* The raw key lives only in PFNs: ``replicas.yml`` maps each input LFN to its object in the input bucket (the
  input replica catalog), and ``outputs.yml`` maps each output LFN to its object in the output bucket (the
  output replica catalog Pegasus' ``Replica`` output mapper reads: ``pegasus.dir.storage.mapper``).
* Every replica is on the site ``storage`` (the S3 site of the site catalog), except the inputs of folder
  buckets, which are files on the access point: site ``local``, where the planner's stage-in jobs run.
* S3 PFN: ``s3://<identity>@<site>/<bucket>/<raw key>`` -- Pegasus' S3 URL form; the identity and site name
  select the ``[identity@site]`` and ``[site]`` sections of ``credentials.conf``. Keys are RAW: pegasus-s3
  passes the path to boto3 undecoded, so ``Eau%20Claire`` would be a different object. Keys the Pegasus tools
  cannot carry at all are refused at preflight: ``replicas.pegasus_keys``.
* Folder PFN (embedded/local mode): ``file://<local_root>/<bucket>/<key>`` built with ``Path.as_uri()``.
* :func:`object_of_pfn` is the one inverse, used by the local engine to run the same catalogs Pegasus runs.
* ``checksum: {sha256: ...}`` only when the digest is actually known; never guessed from an ETag.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from cog_pipeline.outputs import declared

DEFAULT_SITE = "storage"
DEFAULT_IDENTITY = "cog"
INPUT_LFN_SUFFIX = ".in.tif"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_IDENTITY_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def job_lfns(job_id: str) -> tuple[str, ...]:
    """(input, then each declared output: COG, JPEG) LFNs of one job: opaque, job-local names (see the module
    docstring), in the converter's argument order."""
    return (job_id + INPUT_LFN_SUFFIX, *(kind.lfn(job_id) for kind in declared()))


def check_name(value: str, what: str) -> str:
    """Identity and site names go into URLs' user@host part and INI section names: keep them plain."""
    if not _IDENTITY_RE.match(value or ""):
        raise ValueError(f"{what} {value!r} must be letters, digits, '.', '_' or '-'")
    return value


def s3_url(bucket: str, key: str = "", *, identity: str = DEFAULT_IDENTITY, site: str = DEFAULT_SITE) -> str:
    """Pegasus' S3 URL for an object (or, with an empty key, the bucket root without a trailing '/')."""
    check_name(identity, "S3 identity")
    check_name(site, "site name")
    if not bucket or "/" in bucket:
        raise ValueError(f"bucket name {bucket!r} must be non-empty and contain no '/'")
    root = f"s3://{identity}@{site}/{bucket}"
    # Raw key: pegasus-s3 passes the URL's path to boto3 as the key without decoding it (Pegasus 5.1,
    # measured in tests/test_pegasus_transfer.py), so "%20" would name a different object than " ".
    return f"{root}/{key}" if key else root


def file_url(local_root: Path | str, bucket: str, key: str = "") -> str:
    """file:// URI of an object in a folder-backed bucket (or of the bucket folder itself)."""
    if not bucket or "/" in bucket:
        raise ValueError(f"bucket name {bucket!r} must be non-empty and contain no '/'")
    base = Path(local_root).resolve() / bucket
    return (base / key).as_uri() if key else base.as_uri()


def location_url(
    bucket: str,
    key: str = "",
    *,
    local_root: Path | str | None = None,
    identity: str = DEFAULT_IDENTITY,
    site: str = DEFAULT_SITE,
) -> str:
    """The replica URL of `key` in `bucket`: a file URI when buckets are folders, else Pegasus' S3 URL."""
    if local_root is not None:
        return file_url(local_root, bucket, key)
    return s3_url(bucket, key, identity=identity, site=site)


def object_of_pfn(pfn: str, local_root: Path | str | None = None) -> tuple[str, str]:
    """(bucket, key) of a PFN this module wrote: the inverse of :func:`s3_url` and :func:`file_url`."""
    if pfn.startswith("s3://"):
        _, _, path = pfn[len("s3://") :].partition("/")  # identity@site, then bucket/raw key
        bucket, _, key = path.partition("/")
    elif pfn.startswith("file://") and local_root is not None:
        root = Path(local_root).resolve().as_uri() + "/"
        if not pfn.startswith(root):
            raise ValueError(f"{pfn!r} is not under the buckets' folder {root!r}")
        bucket, _, key = unquote(pfn[len(root) :]).partition("/")
    else:
        raise ValueError(f"{pfn!r} is not a replica location of this run")
    if not bucket or not key:
        raise ValueError(f"{pfn!r} names no object")
    return bucket, key


@dataclass(frozen=True)
class ReplicaEntry:
    """One input replica: what goes into replicas.yml for one manifest row."""

    lfn: str
    pfn: str
    site: str = DEFAULT_SITE
    sha256: str | None = None

    def to_document(self) -> dict:
        """The entry as Pegasus.api's ReplicaCatalog writes it (key order included)."""
        doc: dict = {"lfn": self.lfn, "pfns": [{"site": self.site, "pfn": self.pfn}]}
        if self.sha256:
            doc["checksum"] = {"sha256": self.sha256}
        return doc


def replica_entries(
    objects: Iterable[tuple[str, str]],
    bucket: str,
    *,
    local_root: Path | str | None = None,
    identity: str = DEFAULT_IDENTITY,
    site: str = DEFAULT_SITE,
    sha256: Mapping[str, str] | None = None,
) -> list[ReplicaEntry]:
    """One entry per (LFN, key) pair, in the given order. `sha256` maps keys to known hex digests (others omitted)."""
    sha256 = sha256 or {}
    entries = []
    if local_root is not None:
        base = Path(local_root).resolve() / bucket
        root_uri = base.as_uri()
    else:
        root_uri = s3_url(bucket, identity=identity, site=site)
    for lfn, key in objects:
        if local_root is not None:
            pfn = (base / key).as_uri()
        else:
            pfn = f"{root_uri}/{key}"  # raw, as s3_url() (kept inline: 100,000 rows)
        digest = sha256.get(key)
        if digest is not None and not _SHA256_RE.match(digest):
            raise ValueError(f"sha256 for {key!r} is not 64 lowercase hex digits")
        entries.append(ReplicaEntry(lfn, pfn, site, digest))
    return entries


# Characters that are valid in JSON strings but not printable (or are line breaks) in YAML 1.1: escaped as
# \uXXXX, which both JSON and YAML double-quoted scalars understand, so every line stays valid in both.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def yaml_json(value) -> str:
    """JSON text for `value` that is also a valid YAML flow node with the same meaning."""
    text = json.dumps(value, ensure_ascii=False)
    if _YAML_UNSAFE.search(text):
        text = _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def write_replica_catalog(path: Path, entries: Iterable[ReplicaEntry], header: Mapping | None = None) -> int:
    """Write replicas.yml quickly: block YAML with one JSON flow mapping per replica. Returns the entry count.

    The document equals what Pegasus.api's ``ReplicaCatalog.write()`` produces for the same entries (tested),
    but costs one C-level json.dumps per entry instead of PyYAML's Python representer.
    """
    from Pegasus.api.replica_catalog import PEGASUS_VERSION

    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        if header:
            fh.write(f"x-pegasus: {yaml_json(dict(header))}\n")
        fh.write(f"pegasus: {yaml_json(PEGASUS_VERSION)}\n")
        fh.write("replicas:")
        lines = []
        for entry in entries:
            lines.append("\n- " + yaml_json(entry.to_document()))
            count += 1
            if len(lines) >= 4096:
                fh.write("".join(lines))
                lines.clear()
        fh.write("".join(lines))
        fh.write(" []\n" if count == 0 else "\n")
    return count
