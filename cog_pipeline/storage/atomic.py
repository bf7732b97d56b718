"""Replace a file so that a crash leaves the old version or the new one, never half of one.

Run state, result copies, credentials and objects in folder buckets are all written this way; the only
thing that differs between them is what goes into the temporary file and its permissions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".cog-pipeline-tmp"


@contextmanager
def replacing(dest: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is fsynced and renamed onto `dest`, else removed.

    The temporary file is created mode 0600 (mkstemp) and only then given `mode`, so a secret written into
    it is never readable by others, not even for a moment.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}-", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _seal(tmp, dest, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def link_into_place(src: Path, dest: Path, mode: int | None = None) -> bool:
    """Hard-link a finished `src` beside `dest`, fsync it and rename it onto `dest`, as :func:`replacing`
    would publish a copy; False (and nothing written) when `src` cannot be linked there (another filesystem)."""
    tmp = dest.parent / f"{TMP_PREFIX}-{os.getpid()}-{os.urandom(6).hex()}"
    try:
        os.link(src, tmp)
    except OSError:
        return False
    try:
        _seal(tmp, dest, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def _seal(tmp: Path, dest: Path, mode: int | None) -> None:
    """Give the temporary its mode, make its bytes durable, then rename it onto `dest`."""
    if mode is not None and mode != 0o600:  # mkstemp made it 0600 already: secrets are never chmod-ed
        os.chmod(tmp, mode)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


def write_bytes(dest: Path, data: bytes, mode: int | None = None) -> None:
    with replacing(dest, mode) as tmp:
        tmp.write_bytes(data)
