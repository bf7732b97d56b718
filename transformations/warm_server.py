"""The warm converter of one job and directory: GDAL loaded once, one forked child per conversion.

Started by the first ``generate_cog`` client that finds none (``warm.py``). Each accepted request
gets a *handler* process (so parallel clients stay parallel); the handler forks the *child* that
runs exactly ``cli.main(argv)`` the way the executable does, in the client's directory, umask and
environment, with its stdout/stderr captured; then it sends back how the child ended and those bytes.
A child that crashes takes only its own request with it. The server exits after an idle timeout,
when its directory disappears, and with the HTCondor job (which kills every process of the job).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from typing import Any, Dict, Optional, Set, Tuple

from .linux import set_pdeathsig
from .warm import identity, peer_uid, recv_message, send_message, trace

#: How often the idle server looks at the clock and its directory.
_POLL_S = 1.0
#: How long a handler waits for a connected client to send its request.
_REQUEST_TIMEOUT_S = 30.0
#: Grace between SIGTERM and SIGKILL for a child whose client went away.
_STOP_GRACE_S = 10.0
#: What importing the binding put into the environment (rasterio: GDAL_/PROJ_CURL_CA_BUNDLE): a cold
#: process would have set it at its own import, so each child gets it unless its client had a value.
_IMPORT_ENV: Dict[str, str] = {}


def serve(address: str, ready_fd: int, idle_s: float) -> None:
    """Run the server in this (already forked, new-session) process; never returns."""
    status = "error"
    try:
        home = os.getcwd()
        home_id = _dir_id(home)
        ident = identity(os.environ)  # the starting client's: loading rasterio adds GDAL_*/PROJ_* variables
        _detach(ready_fd)
        sock = _bind(address, ready_fd)
        if sock is None:
            status = "another server is live"
            return
        _preload()
        trace({"role": "server", "event": "ready", "address": address[1:]})
        status = _loop(sock, ident, idle_s, home, home_id)
    finally:
        trace({"role": "server", "event": "exit", "reason": status, **_cpu_seconds()})
        os._exit(0)


def _detach(keep_fd: int) -> None:
    """Let go of the starting client's world: its stdio (pegasus-kickstart's capture), other fds, cwd, signals.

    Kickstart reads the task's stdout/stderr to EOF, so a server holding them would hang the task."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 1 << 20)
    os.chdir("/")
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _bind(address: str, ready_fd: int) -> Optional[socket.socket]:
    """The listening socket, bound before anything slow so clients queue instead of starting more servers.

    Writes the ready byte either way: when the name is taken, another server is live and serves."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(64)
    except OSError:
        sock.close()
        sock = None
    try:
        os.write(ready_fd, b"1")
    finally:
        os.close(ready_fd)
    return sock


def _preload() -> None:
    """Import what every conversion needs, once: the converter, numpy, the GDAL binding (and GDAL's COG
    validator with osgeo), Pillow, ctypes.

    Not PROJ: GDAL makes a new PROJ context in a process whose pid changed (its own fork safety), so the
    ~0.02 CPU-s of a process's first CRS is paid in each child whatever the server did.

    Never rio-cogeo: validate.py picks it when it is already loaded, which would change the validator.
    Nothing here starts a thread (fork would lose it) or configures GDAL: each child sets up its own
    conversion exactly as a fresh process does. A failure here is the child's to report, as it would be."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # the server's own numpy: no BLAS thread pool before fork
    before = dict(os.environ)
    try:
        import ctypes  # noqa: F401, PLC0415

        from . import cli  # noqa: F401, PLC0415
        from .backend import loaded_backend  # noqa: PLC0415
        from .jpeg_pillow import pillow_turbo_available  # noqa: PLC0415

        if getattr(loaded_backend(), "name", None) == "osgeo":
            from osgeo_utils.samples import validate_cloud_optimized_geotiff  # noqa: F401, PLC0415
        pillow_turbo_available()
        import numpy  # noqa: F401, PLC0415
    except Exception:  # noqa: BLE001, S110 - the child meets the same problem and reports it
        pass
    _IMPORT_ENV.update({k: v for k, v in os.environ.items() if k not in before})
    import gc  # noqa: PLC0415

    gc.freeze()  # children's collections then skip (and so never copy) the pages of everything loaded here


def _loop(sock: socket.socket, ident: str, idle_s: float, home: str, home_id: Any) -> str:
    """Accept requests until idle for ``idle_s`` with no request in flight, or the directory is gone."""
    handlers: Set[int] = set()
    last = time.monotonic()
    while True:
        readable, _, _ = select.select([sock], [], [], _POLL_S)
        _reap(handlers)
        if readable:
            conn, _ = sock.accept()
            with conn:
                pid = _fork_handler(sock, conn, ident)
            if pid:
                handlers.add(pid)
        now = time.monotonic()
        if readable or handlers:
            last = now
        if now - last >= idle_s:
            return "idle"
        if _dir_id(home) != home_id:
            return "directory gone"


def _reap(handlers: Set[int]) -> None:
    """Collect finished handlers, so they leave no zombies and the idle clock can start."""
    for pid in list(handlers):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            handlers.discard(pid)


def _dir_id(path: str) -> Any:
    """(device, inode) of the server's directory; None once it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _fork_handler(sock: socket.socket, conn: socket.socket, ident: str) -> int:
    """Fork the process that serves ``conn``; returns its pid (0 when fork failed: the client falls back)."""
    try:
        pid = os.fork()
    except OSError:
        return 0
    if pid:
        return pid
    code = 1
    try:  # pragma: no cover - runs in the handler process
        sock.close()
        _handle(conn, ident)
        code = 0
    finally:
        os._exit(code)


def _handle(conn: socket.socket, ident: str) -> None:
    """Serve one request: check who asks and what, run the child, send its status and output."""
    if peer_uid(conn) != os.getuid():
        return
    conn.settimeout(_REQUEST_TIMEOUT_S)
    req = recv_message(conn)
    if req.get("identity") != ident:
        send_message(conn, {"refused": "different interpreter, build or GDAL start-up environment"})
        return
    out_fd, err_fd = _capture("stdout"), _capture("stderr")
    sys.stdout.flush()
    sys.stderr.flush()
    handler = os.getpid()
    exits = _ChildExit()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        exits.release()
        _run_child(req, out_fd, err_fd, handler, conn.fileno())
    trace({"role": "server", "event": "forked", "child": child})
    conn.settimeout(None)
    status, usage = _wait_child(child, conn, exits)
    header = _status_header(status, child)
    header.update(child_cpu=round(usage.ru_utime + usage.ru_stime, 4), child_maxrss_kib=usage.ru_maxrss)
    trace({"role": "server", "event": "served", **header})
    send_message(conn, {**header, "stdout": _read_all(out_fd), "stderr": _read_all(err_fd)})


def _capture(name: str) -> int:
    """An anonymous file for one of the child's streams (memfd: no disk, gone with the handler)."""
    try:
        return os.memfd_create(f"generate_cog-{name}", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        import tempfile  # noqa: PLC0415

        return os.dup(tempfile.TemporaryFile().fileno())


def _read_all(fd: int) -> bytes:
    """Everything the child wrote to a capture file, from its start."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _status_header(status: int, child: int) -> Dict[str, Any]:
    """How the child ended, in the client's terms: an exit code, or the signal that killed it."""
    header: Dict[str, Any] = {"server": os.getppid(), "handler": os.getpid(), "child": child}
    if os.WIFSIGNALED(status):
        header.update(signal=os.WTERMSIG(status), exit=128 + os.WTERMSIG(status))
    else:
        header.update(signal=0, exit=os.waitstatus_to_exitcode(status))
    return header


class _ChildExit:
    """Wakes a select() when a child exits, on any kernel: SIGCHLD through ``signal.set_wakeup_fd``
    (``os.pidfd_open`` needs Linux 5.3; EL8's 4.18 kernels are still common in HTCondor pools)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so the wakeup fd gets a byte
        signal.set_wakeup_fd(self.write_fd)

    def release(self) -> None:
        """In the forked child: not the handler's alarm any more."""
        signal.set_wakeup_fd(-1)
        os.close(self.read_fd)
        os.close(self.write_fd)

    def wait(self, child: int, conn: Optional[socket.socket], timeout: Optional[float] = None) -> Optional[Tuple[int, Any]]:
        """(wait status, rusage) once ``child`` exits; None when ``conn``'s client is gone or ``timeout`` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(child, os.WNOHANG)
            if pid:
                return status, usage
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            watched = [self.read_fd] + ([conn] if conn is not None else [])
            readable, _, _ = select.select(watched, [], [], remaining)
            if self.read_fd in readable:
                while _drain(self.read_fd):
                    pass
            if conn is not None and conn in readable and _client_gone(conn):
                return None


def _drain(fd: int) -> bool:
    """Empty the wakeup pipe (non-blocking); True while bytes came."""
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _wait_child(child: int, conn: socket.socket, exits: _ChildExit) -> Tuple[int, Any]:
    """The child's wait status and rusage. When the client goes away (killed by kickstart or HTCondor),
    the child gets SIGTERM as the converter would have, and SIGKILL after a grace."""
    done = exits.wait(child, conn)
    if done is None:
        os.kill(child, signal.SIGTERM)
        done = exits.wait(child, None, _STOP_GRACE_S)
    if done is None:
        os.kill(child, signal.SIGKILL)
        done = os.wait4(child, 0)[1:]
    return done


def _client_gone(conn: socket.socket) -> bool:
    """True when the client closed its end (it sends nothing after its request)."""
    try:
        return conn.recv(4096) == b""
    except OSError:
        return True


def _run_child(req: Dict[str, Any], out_fd: int, err_fd: int, handler: int, conn_fd: int) -> None:
    """Become the converter process the client would have been, run ``cli.main``, exit with its code."""
    code = 1
    try:
        _die_with(handler)
        os.close(conn_fd)
        _become_client(req, out_fd, err_fd)
        code = _run_main(req["argv"])
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _die_with(handler: int) -> None:
    """SIGKILL this child when its handler dies, so no orphan writes outputs the client is rewriting
    after falling back to converting itself."""
    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != handler:
        os._exit(1)


def _become_client(req: Dict[str, Any], out_fd: int, err_fd: int) -> None:
    """The client's stdio (captured), directory, umask, environment, argv and default signals."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    for fd in (devnull, out_fd, err_fd):
        os.close(fd)
    os.chdir(req["cwd"])
    os.umask(int(req["umask"]))
    os.environ.clear()
    os.environ.update(req["env"])
    for key, value in _IMPORT_ENV.items():
        os.environ.setdefault(key, value)
    time.tzset()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    sys.argv = [req.get("argv0") or "generate_cog", *req["argv"]]


def _run_main(argv: Any) -> int:
    """``cli.main(argv)`` with the interpreter's own handling of SystemExit and uncaught exceptions."""
    from .cli import main as cli_main  # noqa: PLC0415 - preloaded by the server

    try:
        return _exit_status(cli_main(argv))
    except SystemExit as exc:  # argparse's --help and usage errors
        return _exit_status(exc.code)
    except BaseException:  # noqa: BLE001 - what Python prints and returns for an uncaught exception
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        return 1


def _exit_status(code: Any) -> int:
    """What ``sys.exit(code)`` would make the process exit with."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _cpu_seconds() -> Dict[str, float]:
    """CPU the server and all its (waited-for) handlers and children used: measurements need it, as
    the server is nobody's child that /usr/bin/time could count."""
    import resource  # noqa: PLC0415

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_self": own.ru_utime + own.ru_stime, "cpu_children": kids.ru_utime + kids.ru_stime}
