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
        if mode is not None and mode != 0o600:  # mkstemp made it 0600 already: secrets are never chmod-ed
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(dest: Path, data: bytes, mode: int | None = None) -> None:
    with replacing(dest, mode) as tmp:
        tmp.write_bytes(data)
