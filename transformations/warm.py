"""The ``generate_cog`` entry point: hand the conversion to this job's warm converter, else convert here.

On Pegasus each image is one ``generate_cog`` process, and a clustered HTCondor job runs many of them
one after another in one working directory. Each would pay Python start-up, numpy and libgdal
(about half the work of a 1000x1000 image). Pegasus must keep seeing one process per task (its exit
code and stdout/stderr drive retries, pegasus-exitcode and pegasus-analyzer), so the workflow keeps
its shape and the *process* gets thin instead: it connects to a warm server (``warm_server.py``) that
has the converter and GDAL loaded, which forks a child that runs exactly ``cli.main(argv)`` with this
process's arguments, working directory, umask and environment. This process relays the child's
stdout/stderr and exits the way the child exited (a signal is re-raised on this process, so
pegasus-kickstart records the same ``signalled`` status a crashing converter would have had).

This module is the client path, so it imports only the standard library: numpy, GDAL and the
converter itself are imported only when it falls back to converting in its own process, which it
does whenever no server can be reached or a server dies mid-request (never a lost conversion).

Environment: ``COG_PIPELINE_WARM`` = ``0`` (never), ``1`` (always), unset (only inside an HTCondor
job, where the job's end kills the server); ``COG_PIPELINE_WARM_IDLE`` = seconds a server waits for
the next request (default 20); ``COG_PIPELINE_WARM_TRACE`` = a file both sides append JSON lines to
(which process served what, the client's loaded modules, the server's CPU time at exit).
"""

from __future__ import annotations

import _socket  # the public socket module costs ~9 ms per process setting up its enums; this is its C core
import marshal
import os
import struct
import sys
import zlib

TYPE_CHECKING = False  # the typing module costs ~7 ms per client; annotations are strings here anyway
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

WARM_ENV = "COG_PIPELINE_WARM"
IDLE_ENV = "COG_PIPELINE_WARM_IDLE"
TRACE_ENV = "COG_PIPELINE_WARM_TRACE"
DEFAULT_IDLE_S = 20.0
#: What a thin client must never load; the trace lists any of them found in ``sys.modules``.
HEAVY_MODULES = ("numpy", "osgeo", "rasterio", "PIL")
#: Environment that decides how the interpreter or GDAL start up (read once, at load): a client
#: whose values differ gets a server of its own instead of one set up differently.
_STARTUP_ENV_PREFIXES = ("GDAL_", "CPL_", "PROJ_", "OGR_", "PYTHON", "LC_", "LANG", "COG_PIPELINE_GDAL_BACKEND")
_FRAME = struct.Struct("!Q")
_MAX_FRAME = 1 << 30
_CONNECT_TIMEOUT_S = 10.0
_START_TIMEOUT_S = 10.0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status of this ``generate_cog`` invocation: served warm when possible, else converted here."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        outcome = warm_outcome(args) if warm_enabled(os.environ) else None
    except Exception:  # noqa: BLE001 - whatever goes wrong on the warm path, this process converts
        outcome = None
    if outcome is None:
        return convert_here(args)
    return deliver(outcome)


def warm_enabled(env: Mapping[str, str]) -> bool:
    """Whether to use a warm server: ``COG_PIPELINE_WARM`` decides, else on only inside an HTCondor job.

    Inside a job, HTCondor kills every process of the job when it ends, so a server never outlives
    the job; elsewhere (a shell, xargs, tests) an idle server would linger for the idle timeout."""
    wanted = env.get(WARM_ENV, "").strip().lower()
    if wanted in ("0", "no", "off", "false"):
        return False
    if wanted in ("1", "yes", "on", "true"):
        return True
    return "_CONDOR_JOB_AD" in env or "_CONDOR_SCRATCH_DIR" in env


def convert_here(args: List[str]) -> int:
    """The cold path: import the converter into this process and run it, as before warm servers."""
    from .cli import main as cli_main  # noqa: PLC0415 - the heavy import, only when not served

    return cli_main(args)


def warm_outcome(args: List[str]) -> Optional[Dict[str, Any]]:
    """The served child's outcome (header, stdout, stderr), starting a server if none is live; None: convert here."""
    try:
        address = server_address(os.environ)
    except OSError:  # no working directory to key the server on
        return None
    if address is None:
        return None
    outcome, reason = request(address, args)
    if outcome is None and reason == "no server" and start_server(address):
        outcome, reason = request(address, args)
    trace({"role": "client", "served_by": outcome and outcome["server"], "fallback": reason,
           "heavy": sorted(m for m in HEAVY_MODULES if m in sys.modules)})
    return outcome


def server_address(env: Mapping[str, str]) -> Optional[str]:
    """The abstract UNIX socket name of this job's server for this directory, or None off Linux.

    Abstract names (Linux) leave no file behind, have no 108-byte path problem, vanish with the
    server, and a second bind fails, so two starters cannot both serve. The name carries the user,
    the working directory's device and inode, the HTCondor job's scratch directory (jobs sharing one
    directory on a shared filesystem still get one server each) and :func:`identity`."""
    if not sys.platform.startswith("linux"):
        return None
    st = os.stat(".")
    job = env.get("_CONDOR_SCRATCH_DIR") or env.get("_CONDOR_JOB_AD") or ""
    tag = zlib.crc32((identity(env) + "\0" + job).encode("utf-8", "surrogateescape"))
    return f"\0cog-pipeline/generate_cog/{os.getuid()}/{st.st_dev:x}.{st.st_ino:x}/{tag:08x}"


def identity(env: Mapping[str, str]) -> str:
    """What a server must share with its clients: interpreter, converter build, start-up environment.

    A venv client must not be served by a system-Python server (other GDAL), nor a new build by an
    old one, nor a client with other GDAL_* settings by a server whose GDAL loaded with different ones."""
    startup = sorted((k, v) for k, v in env.items() if k.startswith(_STARTUP_ENV_PREFIXES))
    return repr([sys.executable, sys.prefix, sys.version, str(sys.flags), _build_stamp(), startup])


def _build_stamp() -> List[Any]:
    """Path, size and mtime of the zipapp this runs from, or of every module when run from a folder."""
    path = os.path.dirname(os.path.abspath(__file__))
    while path != os.path.dirname(path) and not os.path.exists(path):
        path = os.path.dirname(path)  # inside a zipapp: walk up to the archive itself
    if os.path.isfile(path):
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    with os.scandir(path) as entries:
        return [path] + sorted([e.name, e.stat().st_size, e.stat().st_mtime_ns] for e in entries if e.name.endswith(".py"))


def request(address: str, args: List[str]) -> Tuple[Optional[Dict[str, Any]], str]:
    """(outcome, "") when the server ran the conversion; (None, why) when this process must convert."""
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except OSError:
        return None, "no socket"
    try:
        return _exchange(sock, address, args)
    finally:
        sock.close()


def _exchange(sock: Any, address: str, args: List[str]) -> Tuple[Optional[Dict[str, Any]], str]:
    """Connect, check the server is this user's, send the request, wait for the reply."""
    try:
        sock.settimeout(_CONNECT_TIMEOUT_S)
        sock.connect(address)
    except OSError:
        return None, "no server"
    if peer_uid(sock) != os.getuid():  # the environment goes there: never to another user's process
        return None, "server of another user"
    try:
        send_message(sock, _request_body(args))
        trace({"role": "client", "event": "request sent"})
        sock.settimeout(None)  # a conversion takes as long as it takes
        reply = recv_message(sock)
    except (OSError, ValueError, EOFError, TypeError):
        return None, "server died mid-request"
    if "refused" in reply:
        return None, f"refused: {reply['refused']}"
    if not _well_formed(reply):
        return None, "malformed reply"
    return reply, ""


def _well_formed(reply: Dict[str, Any]) -> bool:
    """True when :func:`deliver` can act on ``reply`` without a traceback."""
    return (isinstance(reply.get("exit"), int) and isinstance(reply.get("signal"), int)
            and isinstance(reply.get("stdout"), bytes) and isinstance(reply.get("stderr"), bytes))


def _request_body(args: List[str]) -> Dict[str, Any]:
    """Everything the served child takes from this process (marshal keeps lone surrogates of odd bytes)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return {"identity": identity(os.environ), "argv": args, "cwd": os.getcwd(), "umask": umask,
            "env": dict(os.environ), "argv0": sys.argv[0] if sys.argv else "generate_cog"}


def peer_uid(sock: Any) -> int:
    """The user id of the process at the other end (SO_PEERCRED: pid, uid, gid)."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def start_server(address: str) -> bool:
    """Start a detached server for ``address``; True once it listens (or another one already does).

    Forked from this light process (no exec, no second interpreter start); the intermediate child
    exits at once, so the server is nobody's child here and pegasus-kickstart never waits for it."""
    from .warm_server import serve  # noqa: PLC0415 - standard library only, like this module

    try:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:  # pragma: no cover - runs in the detached processes
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:
                serve(address, ready_w, idle_seconds(os.environ))
        finally:
            os._exit(0)
    os.close(ready_w)
    os.waitpid(pid, 0)
    return _wait_ready(ready_r)


def _wait_ready(fd: int) -> bool:
    """True when the server wrote its ready byte (it binds before loading GDAL, so this is quick)."""
    import select  # noqa: PLC0415

    try:
        readable, _, _ = select.select([fd], [], [], _START_TIMEOUT_S)
        return bool(readable) and os.read(fd, 1) == b"1"
    except OSError:
        return False
    finally:
        os.close(fd)


def idle_seconds(env: Mapping[str, str]) -> float:
    """``COG_PIPELINE_WARM_IDLE`` as seconds (default 20): how long a server waits for the next image."""
    try:
        value = float(env.get(IDLE_ENV, "") or DEFAULT_IDLE_S)
    except ValueError:
        return DEFAULT_IDLE_S
    return value if value > 0 else DEFAULT_IDLE_S


def deliver(outcome: Dict[str, Any]) -> int:
    """Write the child's stdout/stderr as our own and return its exit code, or die of its signal."""
    write_all(1, outcome["stdout"])
    write_all(2, outcome["stderr"])
    if outcome.get("signal"):
        return die_by_signal(int(outcome["signal"]))
    return int(outcome["exit"])


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer); a closed stream loses only the text, not the code."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass


def die_by_signal(signum: int) -> int:
    """Terminate this process by ``signum``, as the converter process itself was; 128+N if it survives.

    Re-raising (not exiting 128+N) keeps pegasus-kickstart's record and pegasus-exitcode's verdict the
    same as for a converter that crashed in this process: ``<signalled signal="N">``, not exit 128+N."""
    import signal  # noqa: PLC0415

    try:
        signal.signal(signum, signal.SIG_DFL)  # SIGKILL and SIGSTOP refuse: they are always default
    except (OSError, ValueError):
        pass
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    return 128 + signum


def send_message(sock: Any, message: Dict[str, Any]) -> None:
    """One length-prefixed marshal of plain data (str, bytes, int, list, dict).

    marshal is built in (json costs ~9 ms of imports per client) and both ends are the same
    interpreter (the address carries its version) and the same user (checked with SO_PEERCRED)."""
    payload = marshal.dumps(message)
    sock.sendall(_FRAME.pack(len(payload)) + payload)


def recv_message(sock: Any) -> Dict[str, Any]:
    """One message of :func:`send_message`; EOFError when the peer went away first."""
    (size,) = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    if size > _MAX_FRAME:
        raise ValueError("message too large")
    message = marshal.loads(_recv_exact(sock, size))
    if not isinstance(message, dict):
        raise ValueError("not a message")
    return message


def _recv_exact(sock: Any, size: int) -> bytes:
    """Exactly ``size`` bytes (recv may return fewer); EOFError when the peer closes first."""
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            raise EOFError("peer closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def trace(event: Dict[str, Any]) -> None:
    """Append one JSON line to ``COG_PIPELINE_WARM_TRACE`` when set (tests and measurements; no secrets)."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    import json  # noqa: PLC0415 - only when tracing

    line = json.dumps({"pid": os.getpid(), **event}) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)
    except OSError:
        pass
