"""Object stores: the one interface every other module uses for buckets, with an S3 and a local-folder backend.

Everything above this module speaks in (bucket, key) pairs and never knows whether a bucket is an
S3-compatible endpoint or a folder on disk, so the embedded default and production share every line of
claim, workflow and reconcile logic.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

from cog_pipeline.storage import atomic, locking
from cog_pipeline.storage.media import object_headers


class StoreError(RuntimeError):
    """A bucket operation failed for a reason the caller should report (never contains secrets)."""


class ObjectNotFound(StoreError):
    """The key (or bucket) does not exist."""


class PreconditionFailed(StoreError):
    """A conditional write or delete lost: the object exists already, or changed since it was read."""


@dataclass(frozen=True)
class ObjectInfo:
    """What one listing entry tells: enough to reconcile without a request per object."""

    key: str
    size: int
    etag: str
    last_modified: datetime


class ObjectStore(Protocol):
    """One bucket. Keys are '/'-separated, never start with '/', and may hold any Unicode."""

    bucket: str

    def url(self, key: str) -> str:
        """A URL naming the object (s3://bucket/key or file:///…, percent-encoded) for catalogs."""

    def where(self, key: str) -> str:
        """The object named for a person (s3://bucket/key or a path), the key exactly as written."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with prefix, paginated: one request per 1000 keys on S3."""

    def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""

    def read_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The object's content with the info of exactly that version."""

    def create(self, key: str, data: bytes) -> ObjectInfo:
        """Write a new object; PreconditionFailed when the key exists (S3 If-None-Match: *)."""

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Write or overwrite an object."""

    def replace(self, key: str, data: bytes, if_match: str) -> ObjectInfo:
        """Overwrite the object only if its current ETag is if_match (S3 PUT If-Match): a compare-and-swap.

        PreconditionFailed when it changed or is gone. This is what fences a claim: only the holder of the
        marker's current version can renew it, and a stale marker is taken over by exactly one scan.
        """

    def check(self, key: str, if_match: str) -> ObjectInfo:
        """The object's info if its current ETag is if_match (S3 HEAD If-Match), else PreconditionFailed."""

    def read_head(self, key: str, length: int) -> bytes:
        """The first `length` bytes of the object (a ranged GET on S3), to sniff its type without reading it all."""

    def delete(self, key: str, if_match: str | None = None) -> None:
        """Remove an object; with if_match, only the version with that ETag (PreconditionFailed otherwise)."""

    def download(self, key: str, dest: Path, if_match: str | None = None) -> None:
        """Copy the object into a local file (multipart, parallel on S3); with if_match, only that version."""

    def upload(self, src: Path, key: str) -> ObjectInfo:
        """Copy a local file into the bucket (multipart, parallel on S3)."""

    def adopt(self, src: Path, key: str) -> ObjectInfo:
        """Publish a finished local file its caller will not touch again (a job's output): a folder bucket
        hard-links it, S3 uploads it."""


TMP_PREFIX = atomic.TMP_PREFIX  # temporary files, never listed
OBJECT_MODE = 0o644  # every object a folder bucket holds: what uploads and images have
LOCK_FILE = f"{TMP_PREFIX}-lock"  # a folder bucket's lock for conditional operations (hidden like temporaries)


def _is_control(ch: str) -> bool:
    """C0 and C1 control characters and DEL: never part of a key we write."""
    code = ord(ch)
    return code < 32 or 127 <= code < 160


def _validate_key(key: str) -> str:
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise StoreError(f"refusing unsafe object key {key!r}")
    if any(_is_control(ch) for ch in key):
        raise StoreError(f"refusing object key with control characters {key!r}")
    return key


def _validate_bucket(bucket: str) -> str:
    """A bucket name is one path segment: never empty, '.', '..', with '/' or control characters.

    For LocalStore the bucket is a folder under the root, so this is what keeps `--local-root` contained.
    """
    if not bucket or bucket in (".", "..") or any(ch in "/\\" or _is_control(ch) for ch in bucket):
        raise StoreError(f"bucket name {bucket!r} must be non-empty and hold no '/', '\\' or control characters")
    return bucket


# ----------------------------------------------------------------------------------------------------------------
# Local folder


def bucket_folder(root: Path, bucket: str) -> Path:
    """Where folder bucket `bucket` really is: ROOT/<bucket> with links resolved (a bucket folder may be a link
    to another disk; two names resolving to one folder are one bucket)."""
    return (Path(root) / _validate_bucket(bucket)).resolve()


def _durable_temp(path: Path, data: bytes) -> tuple[str, os.stat_result]:
    """A fsynced temporary beside `path` holding `data`, and its stat (the same inode a rename keeps)."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + "-", dir=path.parent)
    try:
        os.fchmod(fd, OBJECT_MODE)  # mkstemp's 0600 would hide result files from the folder's other users
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            return tmp, os.fstat(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise


class LocalStore:
    """A folder standing in for a bucket: the bucket is ROOT/<bucket>, a key is a path relative to it.

    Writes go to a temporary file in the destination folder and are renamed into place, so a reader never
    sees half an object and a crash never leaves one.

    ETags are version tokens made from the file's inode, size and nanosecond mtime, and every method
    (list, head, read_bytes, create, put_bytes) returns the same token for the same version, so
    `delete(key, if_match=info.etag)` works whatever produced `info`. Every write here lands by renaming a new
    file into place, so each version has a new inode: a rewrite changes the token even with identical size
    and timestamp. Content hashes were tried and rejected: listing would read every image in a county to
    learn that it exists, and the pre-flight lists inputs of many gigabytes. Unlike S3, rewriting identical
    bytes gives a new token; conditional requests then err on the side of "changed", which is safe.

    Conditional operations (create, replace, check, delete with if_match) are atomic between threads (a lock)
    and between processes (an flock on a hidden lock file in the bucket folder), so a compare-and-swap of a
    claim marker behaves as S3's If-Match does. Keys whose segments start with the temporary-file prefix are
    refused, since listings hide them (the lock file is one of those).
    """

    def __init__(self, root: Path, bucket: str) -> None:
        self.root = Path(root).resolve()
        self.bucket = _validate_bucket(bucket)
        self.base = bucket_folder(self.root, bucket)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.base)!r})"

    def _path(self, key: str) -> Path:
        _validate_key(key)
        if any(part.startswith(TMP_PREFIX) for part in key.split("/")):
            raise StoreError(f"refusing object key {key!r}: its name is reserved for temporary files")
        link = self._link_on(key)
        if link is not None:
            raise StoreError(f"refusing {key!r} in bucket {self.bucket!r}: {link} is a symbolic link, which a folder bucket never follows")
        return self.base / key

    def _link_on(self, relative: str) -> Path | None:
        """The first symbolic link on the way from the bucket folder to `relative`, or None. A key never passes
        through one: a link planted in the bucket could name a file (to read, to overwrite) or a folder anywhere
        else. With no link and no '..' a key's path stays inside the bucket."""
        here = self.base
        for part in relative.split("/"):
            here = here / part
            try:
                if stat.S_ISLNK(os.lstat(here).st_mode):
                    return here
            except (FileNotFoundError, NotADirectoryError):
                return None
        return None

    def _missing(self, key: str) -> ObjectNotFound:
        if not self.base.is_dir():
            return ObjectNotFound(f"bucket {self.bucket!r} does not exist (no folder {self.base})")
        return ObjectNotFound(f"{self.where(key)} does not exist")

    def _safe_prefix_folder(self, prefix: str) -> Path | None:
        """The folder a prefix's keys live in, or None when no valid key can start with the prefix."""
        folder, _, _ = prefix.rpartition("/")
        if not folder:
            return self.base
        if folder.startswith("/") or any(part in ("", ".", "..") for part in folder.split("/")):
            return None  # no valid key has such a folder; never let it name a path outside the bucket
        return self.base / folder

    def url(self, key: str) -> str:
        return (self.base / _validate_key(key)).as_uri()

    def where(self, key: str) -> str:
        return str(self.base / key)  # a name for a person only: never followed, so no link check here

    @staticmethod
    def _stat_info(key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}",
            last_modified=datetime.fromtimestamp(st.st_mtime, tz=timezone.utc),
        )

    def _info(self, key: str, path: Path) -> ObjectInfo:
        st = os.lstat(path)  # a symbolic link is not an object (its target may lie outside the bucket)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(str(path))
        return self._stat_info(key, st)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.base.is_dir():
            raise ObjectNotFound(f"bucket {self.bucket!r} does not exist (no folder {self.base})")
        # Walk only the folder the prefix can live in, and below it only the sub-folders whose keys can
        # start with the prefix, so listing one county does not walk the state.
        start = self._safe_prefix_folder(prefix)
        if start is None or not start.is_dir() or (start != self.base and self._link_on(prefix.rpartition("/")[0])):
            return  # no such folder, or one reached through a symbolic link (its files are not the bucket's)
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(self.base).as_posix()
            here = "" if rel == "." else f"{rel}/"
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(TMP_PREFIX)
                and ((here + d + "/").startswith(prefix) or prefix.startswith(here + d + "/"))
            ]
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    continue
                key = here + name
                if key.startswith(prefix):
                    found.append(key)
        for key in sorted(found):  # S3 lists in key order (UTF-8 bytes = code points); keep the same contract
            try:
                yield self._info(key, self.base / key)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue  # removed (or replaced by a folder) while listing: S3 would not list it either

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            return self._info(key, path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def read_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise self._missing(key) from exc
        return data, self._stat_info(key, st)

    def _prepare_parent(self, key: str, path: Path) -> None:
        if not self.base.is_dir():
            raise ObjectNotFound(f"bucket {self.bucket!r} does not exist (no folder {self.base})")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            # S3 lets 'a.tif' and 'a.tif/b' coexist; a folder cannot. Report it instead of an OSError.
            raise StoreError(f"cannot write {self.where(key)}: a parent of it is an object, not a folder") from exc

    def _write_atomic(self, key: str, path: Path, data: bytes, exclusive: bool) -> ObjectInfo:
        """Write one version and return its info, taken from the temporary file (same inode as the result)."""
        self._prepare_parent(key, path)
        tmp, st = _durable_temp(path, data)
        try:
            if exclusive:
                # link() fails when the target exists: an atomic create-if-absent, like If-None-Match.
                try:
                    os.link(tmp, path)
                except FileExistsError as exc:
                    raise PreconditionFailed(f"{self.where(key)} exists") from exc
                os.unlink(tmp)
            else:
                try:
                    os.replace(tmp, path)
                except IsADirectoryError as exc:
                    raise StoreError(f"cannot write {self.where(key)}: a folder of that name exists") from exc
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return self._stat_info(key, st)

    def create(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        self._prepare_parent(key, path)
        with self._exclusive():  # link() is atomic already; the lock orders it against replace/delete
            return self._write_atomic(key, path, data, exclusive=True)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._write_atomic(key, self._path(key), data, exclusive=False)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise conditional operations on this bucket folder across threads and processes."""
        if not self.base.is_dir():
            raise ObjectNotFound(f"bucket {self.bucket!r} does not exist (no folder {self.base})")
        try:
            with self._lock, locking.held(self.base / LOCK_FILE, f"the lock of folder bucket {self.bucket!r}"):
                yield
        except locking.LockTimeout as exc:
            raise StoreError(str(exc)) from None

    def replace(self, key: str, data: bytes, if_match: str) -> ObjectInfo:
        path = self._path(key)
        self._prepare_parent(key, path)
        # Write the new version beside the target first, then swap it in under the lock only if the
        # current version is still the one the caller holds.
        tmp, st = _durable_temp(path, data)
        try:
            with self._exclusive():
                self._current_version(key, if_match)
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self._stat_info(key, st)

    def check(self, key: str, if_match: str) -> ObjectInfo:
        with self._exclusive():
            return self._current_version(key, if_match)

    def _current_version(self, key: str, if_match: str) -> ObjectInfo:
        """The object's info if it is still the version `if_match` names (call under `_exclusive`)."""
        current = self.head(key)
        if current is None:
            raise PreconditionFailed(f"{self.where(key)} is gone")
        if current.etag != if_match:
            raise PreconditionFailed(f"{self.where(key)} changed since it was read")
        return current

    def read_head(self, key: str, length: int) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                return fh.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise self._missing(key) from exc

    def delete(self, key: str, if_match: str | None = None) -> None:
        path = self._path(key)
        if not self.base.is_dir():
            raise ObjectNotFound(f"bucket {self.bucket!r} does not exist (no folder {self.base})")
        with self._exclusive() if if_match is not None else self._lock:
            if if_match is not None:
                self._current_version(key, if_match)
            try:
                path.unlink()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                # Deleting a missing key succeeds on S3; a folder of that name is not an object either.
                if if_match is not None:
                    raise PreconditionFailed(f"{self.where(key)} is gone") from None

    def download(self, key: str, dest: Path, if_match: str | None = None) -> None:
        src = self._path(key)
        if not src.is_file():
            raise self._missing(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fh:
            if if_match is not None and self._stat_info(key, os.fstat(fh.fileno())).etag != if_match:
                raise PreconditionFailed(f"{self.url(key)} changed since it was read")
            with open(dest, "wb") as out:
                shutil.copyfileobj(fh, out, 1024 * 1024)

    def pin(self, key: str, dest: Path, if_match: str | None = None) -> None:
        """Put exactly the version `if_match` of `key` at `dest` without copying it: a hard link holds that
        version's inode, so a replacement uploaded later (renamed into place: a new inode) is not what is read.
        Across filesystems a symbolic link (checked once). PreconditionFailed when it is not that version."""
        src = self._path(key)
        if not src.is_file():
            raise self._missing(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)
        except OSError:
            os.symlink(src, dest)
        if if_match is not None and self._stat_info(key, os.stat(dest)).etag != if_match:
            raise PreconditionFailed(f"{self.url(key)} changed since it was read")

    def upload(self, src: Path, key: str) -> ObjectInfo:
        path = self._path(key)
        if not Path(src).is_file():
            raise StoreError(f"cannot upload {src}: not a readable file")
        self._prepare_parent(key, path)
        with atomic.replacing(path, OBJECT_MODE) as tmp:
            shutil.copyfile(src, tmp)
        return self._info(key, path)

    def adopt(self, src: Path, key: str) -> ObjectInfo:
        """Put a finished file its caller will not touch again at `key`: hard-linked, not copied, when the
        bucket folder is on the same filesystem (the local engine's outputs, which its scratch folder then
        drops), else uploaded. Durable like every write: the file is fsynced before it is renamed in place.

        Why: a copy writes every output byte a second time and its fsync then waits for all of them; the
        converter has already started writing the file back (transformations.convert), so the link's fsync
        has little left to wait for."""
        path = self._path(key)
        if not Path(src).is_file():
            raise StoreError(f"cannot upload {src}: not a readable file")
        self._prepare_parent(key, path)
        if not atomic.link_into_place(Path(src), path, OBJECT_MODE):  # another filesystem: a copy, as upload() does
            return self.upload(src, key)
        return self._info(key, path)

    def path_of(self, key: str) -> Path:
        """The file holding `key` (the local engine links inputs instead of copying them)."""
        return self._path(key)


# ----------------------------------------------------------------------------------------------------------------
# S3


@dataclass
class RequestCounter:
    """Counts HTTP requests a client sends, by operation: how tests and benchmarks hold reconcile to its budget."""

    by_operation: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())

    def __call__(self, model: object = None, **_: object) -> None:  # botocore 'before-call' handler
        name = getattr(model, "name", "unknown")
        with self._lock:
            self.by_operation[name] = self.by_operation.get(name, 0) + 1


def normalise_endpoint(endpoint: str | None, *, secure: bool = True) -> str | None:
    """Accept 'host:port', 'host' or a full URL, as the original tool did; default to https."""
    if not endpoint:
        return None
    endpoint = endpoint.strip()
    if "://" not in endpoint:
        endpoint = f"{'https' if secure else 'http'}://{endpoint}"
    parts = urlsplit(endpoint)
    if "@" in parts.netloc:  # user:pass@host: credentials in a URL would be stored and logged with it
        raise StoreError(
            f"endpoint {parts.scheme}://…@{parts.netloc.rpartition('@')[2]} holds credentials (user:pass@); "
            "give the host only and the keys with -a/-s key files or the AWS credential chain"
        )
    endpoint = endpoint.rstrip("/")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreError(f"endpoint {endpoint!r} is not an http(s) URL or host[:port]")
    try:
        parts.port  # noqa: B018 - raises ValueError for 'host:abc' or a port out of range
    except ValueError:
        raise StoreError(f"endpoint {endpoint!r} has an invalid port") from None
    return endpoint


MAX_KEY_FILE_BYTES = 64 * 1024  # a key file holds one short line; anything bigger is the wrong file


def _key_file_stat(path: Path, what: str) -> str | None:
    """Why `path` cannot be a key file, judged without reading it (a device such as /dev/urandom never ends)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"cannot read {what} file {path}: no such file"
    except OSError as exc:
        return f"cannot read {what} file {path}: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return f"cannot read {what} file {path}: it is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return f"cannot read {what} file {path}: not a regular file (a device, pipe or socket), give the file holding the key"
    if st.st_size > MAX_KEY_FILE_BYTES:
        return f"{what} file {path} is {st.st_size} bytes, too large for a key file (at most {MAX_KEY_FILE_BYTES})"
    return None


def key_file_problem(path: Path | str, what: str) -> str | None:
    """The one-line reason `path` is not a usable key file (missing, not a regular file, unreadable, binary,
    not UTF-8, empty, too large), or None. For the CLI to check -a/-s before anything else runs.

    The message names the file and never holds any of its bytes.
    """
    try:
        read_key_file(path, what)
    except StoreError as exc:
        return str(exc)
    return None


def read_key_file(path: Path | str, what: str) -> str:
    """Read an access/secret key file (first non-blank line) and never echo its content in errors.

    A UTF-8 byte order mark (editors on Windows add one) is ignored. A file that is not UTF-8 is an error
    whose message, like every other one here, names the file but holds none of its bytes. Only regular
    files are read, and at most MAX_KEY_FILE_BYTES of them.
    """
    # Errors are raised outside the except blocks: a UnicodeDecodeError carries the file's bytes, and even a
    # suppressed __context__ keeps it reachable from the StoreError (and shown by some traceback printers).
    path = Path(path)
    problem = _key_file_stat(path, what)
    text: str | None = None
    if problem is None:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            problem = f"cannot read {what} file {path}: {exc.strerror}"
        else:
            if len(raw) > MAX_KEY_FILE_BYTES:
                problem = f"{what} file {path} is too large for a key file (over {MAX_KEY_FILE_BYTES} bytes)"
            elif b"\x00" in raw:
                problem = f"{what} file {path} is binary (holds NUL bytes), not a text key file"
            else:
                try:
                    text = raw.decode("utf-8-sig")
                except UnicodeDecodeError:
                    problem = f"{what} file {path} is not UTF-8 text"
            del raw
    if text is None:
        raise StoreError(problem)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise StoreError(f"{what} file {path} is empty")


RETRY_MODES = ("standard", "adaptive")
USER_AGENT = "cog-pipeline"  # appended to botocore's user agent on every request this tool makes

_loader_lock = threading.Lock()
_shared_loader: object | None = None


def _botocore_session():  # -> botocore.session.Session
    """A fresh botocore session (so credentials are resolved anew each time) sharing one model loader.

    Loading the S3 service model is most of the cost of making a client (~0.1 s); the loader caches it.
    """
    import botocore.session

    global _shared_loader
    session = botocore.session.Session()
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _shared_loader)
    return session


@dataclass(frozen=True)
class StoreConfig:
    """How to reach buckets. Holds key file *paths*, never key material, so it can be written to run.json."""

    local_root: Path | None = None
    endpoint: str | None = None
    access_key_file: Path | None = None
    secret_key_file: Path | None = None
    region: str | None = None
    retry_mode: str = "standard"
    max_attempts: int = 10
    max_pool_connections: int = 32
    addressing_style: str | None = None  # None: path-style for custom endpoints, virtual for AWS
    profile: str | None = None  # a named AWS profile (~/.aws/config, credentials): its keys and region

    def to_json(self) -> dict[str, object]:
        return {
            "local_root": str(self.local_root) if self.local_root else None,
            "endpoint": self.endpoint,
            "access_key_file": str(self.access_key_file) if self.access_key_file else None,
            "secret_key_file": str(self.secret_key_file) if self.secret_key_file else None,
            "region": self.region,
            "retry_mode": self.retry_mode,
            "max_attempts": self.max_attempts,
            "max_pool_connections": self.max_pool_connections,
            "addressing_style": self.addressing_style,
            "profile": self.profile,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> StoreConfig:
        def path(value: object) -> Path | None:
            return Path(str(value)) if value else None

        return cls(
            local_root=path(data.get("local_root")),
            endpoint=data.get("endpoint") or None,  # type: ignore[arg-type]
            access_key_file=path(data.get("access_key_file")),
            secret_key_file=path(data.get("secret_key_file")),
            region=data.get("region") or None,  # type: ignore[arg-type]
            retry_mode=str(data.get("retry_mode") or "standard"),
            max_attempts=int(data.get("max_attempts") or 10),  # type: ignore[arg-type]
            max_pool_connections=int(data.get("max_pool_connections") or 32),  # type: ignore[arg-type]
            addressing_style=data.get("addressing_style") or None,  # type: ignore[arg-type]
            profile=data.get("profile") or None,  # type: ignore[arg-type]
        )

    def s3_client(self, counter: RequestCounter | None = None):  # -> botocore S3 client
        """A boto3 S3 client: explicit key files when given, else the standard AWS credential chain."""
        import boto3
        from botocore.config import Config

        if self.retry_mode not in RETRY_MODES:
            raise StoreError(f"retry mode must be standard or adaptive, not {self.retry_mode!r}")
        if self.addressing_style not in (None, "auto", "path", "virtual"):
            raise StoreError(f"addressing style must be auto, path or virtual, not {self.addressing_style!r}")
        if (self.access_key_file is None) != (self.secret_key_file is None):
            raise StoreError("give both an access key file (-a) and a secret key file (-s), or neither")
        endpoint = normalise_endpoint(self.endpoint)
        style = self.addressing_style or ("path" if endpoint else "auto")
        config = Config(
            retries={"mode": self.retry_mode, "max_attempts": self.max_attempts},
            s3={"addressing_style": style},
            max_pool_connections=self.max_pool_connections,
            signature_version="s3v4",
            user_agent_extra=USER_AGENT,  # names this tool's requests in the store's access log
        )
        kwargs: dict[str, object] = {"config": config, "endpoint_url": endpoint}
        if self.access_key_file is not None and self.secret_key_file is not None:
            kwargs["aws_access_key_id"] = read_key_file(self.access_key_file, "access key")
            kwargs["aws_secret_access_key"] = read_key_file(self.secret_key_file, "secret key")
        from botocore.exceptions import ProfileNotFound

        try:
            # A profile brings its own region unless --region says otherwise; else the environment, else us-east-1.
            session = boto3.session.Session(botocore_session=_botocore_session(), profile_name=self.profile,
                                            region_name=self.region or (None if self.profile else os.environ.get("AWS_DEFAULT_REGION")))
            client = session.client("s3", region_name=session.region_name or "us-east-1", **kwargs)
        except ProfileNotFound:
            raise StoreError(f"AWS profile {self.profile!r} is not in the AWS config or credentials files") from None
        if counter is not None:
            client.meta.events.register("before-call.s3", counter)
        return client


class S3Store:
    """One bucket on an S3-compatible endpoint, through boto3 (retries, pagination and multipart transfers)."""

    def __init__(self, bucket: str, client, counter: RequestCounter | None = None) -> None:
        self.bucket = bucket
        self.client = client
        self.counter = counter

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r})"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{quote(key, safe='/')}"

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _error(self, exc: Exception, key: str | None = None) -> StoreError:
        from botocore.exceptions import ClientError

        where = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # Only 412 and S3's conditional-write conflict are lost preconditions; other 409s
            # (BucketNotEmpty, OperationAborted, ...) are plain errors.
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                return PreconditionFailed(f"{where}: {code or status}")
            if code == "NoSuchBucket":
                return ObjectNotFound(f"bucket {self.bucket!r} does not exist (NoSuchBucket)")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return ObjectNotFound(f"{where} does not exist ({code or status})")
            return StoreError(f"{where}: S3 error {code or status}")
        return self._connection_error(exc) or StoreError(f"{where}: {type(exc).__name__}: {exc}")

    def _connection_error(self, exc: Exception) -> StoreError | None:
        """One line for an endpoint that cannot be reached, naming the likely fix (botocore's text is a page)."""
        from botocore.exceptions import EndpointConnectionError, SSLError

        endpoint = self.client.meta.endpoint_url
        if isinstance(exc, SSLError) and endpoint.startswith("https://"):
            return StoreError(f"{endpoint} does not answer over https (TLS failed); if it serves plain http, "
                              f"give -e http://{endpoint[len('https://'):]}")
        if isinstance(exc, EndpointConnectionError):
            return StoreError(f"cannot connect to the S3 endpoint {endpoint}")
        return None

    @staticmethod
    def _is_missing_bucket(exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "NoSuchBucket"

    @staticmethod
    def _etag(value: str | None) -> str:
        return (value or "").strip('"')

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"],
                        size=int(item.get("Size", 0)),
                        etag=self._etag(item.get("ETag")),
                        last_modified=item["LastModified"],
                    )
        except Exception as exc:  # noqa: BLE001 - translated into one clear error type
            raise self._error(exc) from exc

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            err = self._error(exc, key)
            if isinstance(err, ObjectNotFound):
                return None
            raise err from exc
        return ObjectInfo(key, int(resp["ContentLength"]), self._etag(resp.get("ETag")), resp["LastModified"])

    def read_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            data = resp["Body"].read()
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, key) from exc
        return data, ObjectInfo(key, len(data), self._etag(resp.get("ETag")), resp["LastModified"])

    def _put(self, key: str, data: bytes, **extra: str) -> ObjectInfo:
        _validate_key(key)
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **object_headers(key), **extra)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, key) from exc
        # The version we wrote, from the PUT's own answer (a HEAD could see a later writer's version, and
        # costs a request): its ETag, and the server's clock from the Date header, which reconcile compares
        # with outputs' LastModified, so the local clock never enters into it.
        headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        try:
            written = parsedate_to_datetime(headers["date"])
        except (KeyError, TypeError, ValueError):
            written = datetime.now(timezone.utc)
        return ObjectInfo(key, len(data), self._etag(resp.get("ETag")), written)

    def create(self, key: str, data: bytes) -> ObjectInfo:
        # If-None-Match: * is honoured by AWS and most S3-compatible stores; where it is ignored the claim
        # protocol's marker and the local lock still keep two scans apart.
        if self.head(key) is not None:
            raise PreconditionFailed(f"s3://{self.bucket}/{key} exists")
        return self._put(key, data, IfNoneMatch="*")

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._put(key, data)

    def replace(self, key: str, data: bytes, if_match: str) -> ObjectInfo:
        try:
            return self._put(key, data, IfMatch=f'"{if_match}"')
        except ObjectNotFound as exc:  # If-Match on a missing key: S3 answers 404
            raise PreconditionFailed(f"s3://{self.bucket}/{key} is gone") from exc

    def check(self, key: str, if_match: str) -> ObjectInfo:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=key, IfMatch=f'"{if_match}"')
        except Exception as exc:  # noqa: BLE001
            err = self._error(exc, key)
            if isinstance(err, ObjectNotFound) and not self._is_missing_bucket(exc):
                raise PreconditionFailed(f"s3://{self.bucket}/{key} is gone") from exc
            raise err from exc
        return ObjectInfo(key, int(resp["ContentLength"]), self._etag(resp.get("ETag")), resp["LastModified"])

    def read_head(self, key: str, length: int) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{max(length, 1) - 1}")
            return resp["Body"].read()[:length]
        except Exception as exc:  # noqa: BLE001
            err = self._error(exc, key)
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code == "InvalidRange":  # an empty object has no byte 0
                return b""
            raise err from exc

    def delete(self, key: str, if_match: str | None = None) -> None:
        if if_match is not None:
            current = self.head(key)
            if current is None:
                raise PreconditionFailed(f"s3://{self.bucket}/{key} is gone")
            if current.etag != if_match:
                raise PreconditionFailed(f"s3://{self.bucket}/{key} changed since it was read")
        kwargs: dict[str, str] = {}
        if if_match is not None:
            kwargs["IfMatch"] = f'"{if_match}"'
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, **kwargs)
        except Exception as exc:  # noqa: BLE001
            err = self._error(exc, key)
            if isinstance(err, ObjectNotFound) and not self._is_missing_bucket(exc):
                if if_match is None:
                    return  # deleting a missing key succeeds, as on S3 itself
                # With If-Match, S3 answers 404 when the object went away after our check: that is a lost
                # precondition for the caller, exactly like a changed object.
                raise PreconditionFailed(f"s3://{self.bucket}/{key} is gone") from exc
            raise err from exc

    def download(self, key: str, dest: Path, if_match: str | None = None) -> None:
        """With if_match, only that version: one GET If-Match (s3transfer's parallel ranged GETs take no
        If-Match), PreconditionFailed if the object was replaced since `if_match` was read."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if if_match is None:
                self.client.download_file(self.bucket, key, str(dest))
                return
            body = self.client.get_object(Bucket=self.bucket, Key=key, IfMatch=f'"{if_match}"')["Body"]
            with open(dest, "wb") as out:
                for chunk in body.iter_chunks(1024 * 1024):
                    out.write(chunk)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, key) from exc

    def upload(self, src: Path, key: str) -> ObjectInfo:
        _validate_key(key)
        try:
            self.client.upload_file(str(src), self.bucket, key, ExtraArgs=object_headers(key))
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, key) from exc
        info = self.head(key)
        if info is None:
            raise StoreError(f"{key}: uploaded, but the store does not list it")
        return info

    def adopt(self, src: Path, key: str) -> ObjectInfo:
        """An S3 bucket cannot link a local file: an upload."""
        return self.upload(src, key)

    def copy(self, src_key: str, key: str) -> None:
        """Copy an object of this bucket to `key` inside the store, with the headers `key` gets (no byte leaves
        the store; multipart past 5 GB). Onto itself it only replaces those headers."""
        _validate_key(key)
        extra = {**object_headers(key), "MetadataDirective": "REPLACE"}  # S3 copies in place only with REPLACE
        try:
            self.client.copy({"Bucket": self.bucket, "Key": src_key}, self.bucket, key, ExtraArgs=extra)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, key) from exc


def open_store(bucket: str, config: StoreConfig, counter: RequestCounter | None = None) -> ObjectStore:
    """The store for one bucket: a folder under config.local_root when set, else S3."""
    _validate_bucket(bucket)
    if config.local_root is not None:
        return LocalStore(config.local_root, bucket)
    return S3Store(bucket, config.s3_client(counter), counter)
