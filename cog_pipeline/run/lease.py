"""Who is carrying a run on right now: a lease, not a bare PID.

A lease names its owner by host, boot id, pid and the process's start time, and carries an expiry that the
owner renews while it works. On the owner's own host the lease is alive exactly while that very process
lives (a reused PID has another start time, a reboot another boot id), so a dead owner is noticed at once;
seen from another host, where the process cannot be inspected, the lease is alive until it expires.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

LEASE_SECONDS = 300.0  # how long a lease holds without renewal, seen from another host


def this_host() -> str:
    return socket.gethostname()


@lru_cache(maxsize=1)
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); "" if unknown/gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may hold spaces: split after its closing ')'.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True)
class Lease:
    host: str
    boot_id: str
    pid: int
    started: str  # the process start time (process_start)
    expires: float  # wall-clock seconds since the epoch

    @property
    def owner_id(self) -> str:
        return f"{self.host}/{self.boot_id}/{self.pid}/{self.started}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Lease | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(str(data["host"]), str(data["boot_id"]), int(data["pid"]), str(data["started"]), float(data["expires"]))
        except (KeyError, TypeError, ValueError):
            return None


def mine(seconds: float = LEASE_SECONDS) -> Lease:
    """A fresh lease for this process (also how a renewal is written)."""
    pid = os.getpid()
    return Lease(this_host(), boot_id(), pid, process_start(pid), time.time() + seconds)


def is_mine(lease: Lease | None) -> bool:
    return lease is not None and lease.owner_id == mine(0).owner_id


def is_alive(lease: Lease | None, now: float | None = None) -> bool:
    """Whether the lease's owner may still be working (see the module docstring)."""
    if lease is None:
        return False
    if lease.host == this_host() and lease.boot_id == boot_id() and lease.started:
        return process_start(lease.pid) == lease.started
    if lease.host == this_host() and lease.boot_id != boot_id() and boot_id():
        return False  # this host rebooted since: that process is gone
    return (now if now is not None else time.time()) < lease.expires
