"""A small HTTP fault proxy on 127.0.0.1 in front of an S3 endpoint (moto's threaded server in the tests).

Every request is forwarded as it came (method, path, headers, body) and every answer returned as it came,
except for what the test asks for:

- `strip_date`: answers carry no `Date` header (an endpoint, or a proxy, that sends none);
- `hold`: a predicate on (method, path, headers). The first request it accepts is read in full and then held,
  its client left waiting, until the test calls `release()`; only then is it sent upstream, exactly as it came.
  A client whose read timeout expired meanwhile has retried it (botocore does); the held copy still arrives
  late, after whatever the retry led to, as a slow network path or a stalled middlebox delivers it.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HoldRule = Callable[[str, str, dict[str, str]], bool]
HOLD_LIMIT = 120.0  # a held request goes through by itself after this long, so a failing test never hangs


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        proxy = self.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = dict(self.headers)
        held = proxy._take_hold(self.command, self.path, headers)
        if held:
            proxy.held.set()
            proxy._release.wait(HOLD_LIMIT)
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
        finally:
            upstream.close()
        if held:
            proxy.delivered_status = resp.status
            proxy.delivered.set()
        try:
            self.send_response_only(resp.status, resp.reason)  # no Date or Server header of our own
            # A HEAD answer's Content-Length is the object's size, not the (empty) body's: passed on as it came.
            own = ("transfer-encoding", "connection") + (("content-length",) if self.command != "HEAD" else ())
            skip = own + (("date",) if proxy.strip_date else ())
            for name, value in resp.getheaders():
                if name.lower() not in skip:
                    self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up on a held request long ago

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *args) -> None:
        pass


class FaultProxy:
    def __init__(self, upstream: str, *, strip_date: bool = False, hold: HoldRule | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.strip_date = strip_date
        self._hold = hold
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.held = threading.Event()  # the chosen request arrived and is being held
        self.delivered = threading.Event()  # ... and was sent upstream after release()
        self.delivered_status: int | None = None
        self.held_request: tuple[str, str] | None = None  # (method, path) of the held request
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _take_hold(self, method: str, path: str, headers: dict[str, str]) -> bool:
        with self._lock:
            if self._hold is None or self.held_request is not None or not self._hold(method, path, headers):
                return False
            self.held_request = (method, path)
            return True

    def release(self) -> None:
        """Let the held request (if any) go upstream now."""
        self._release.set()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
