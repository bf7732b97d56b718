"""moto's S3 on 127.0.0.1 with an access log: every request's method, key, status, bytes and user agent.

The production suite reads this log the way an operator reads a store's access log: to count the image bytes
each kind of process read (`image_bytes_read`). Workers read inputs through pegasus-transfer; the access point's
own processes are the pipeline (its requests carry the ``cog-pipeline`` user agent, store.USER_AGENT) and
Pegasus' stage-out jobs, whose s3 -> s3 copies are CopyObject requests served inside the store.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from werkzeug.serving import make_server


@dataclass(frozen=True)
class Request:
    method: str
    bucket: str
    key: str
    query: str
    status: int
    bytes_out: int  # response body bytes sent to the client
    user_agent: str
    copy_source: str | None  # CopyObject: the source, copied inside the store


class _Recorder:
    def __init__(self, app) -> None:
        self.app = app
        self.requests: list[Request] = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        status_holder: list[int] = []

        def recording_start(status, headers, exc_info=None):
            status_holder.append(int(status.split()[0]))
            return start_response(status, headers, exc_info)

        body = self.app(environ, recording_start)
        sent = 0
        try:
            for chunk in body:
                sent += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()
            # WSGI hands the decoded path as latin-1 text: its bytes are the key's UTF-8.
            path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace").lstrip("/")
            bucket, _, key = path.partition("/")
            with self.lock:
                self.requests.append(Request(
                    environ["REQUEST_METHOD"], bucket, key, environ.get("QUERY_STRING", ""),
                    status_holder[0] if status_holder else 0, sent, environ.get("HTTP_USER_AGENT", ""),
                    environ.get("HTTP_X_AMZ_COPY_SOURCE"),
                ))


class RecordedS3:
    """A threaded moto S3 server whose requests are recorded; `url` is its endpoint."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        import logging

        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the access log is `requests`, not a log line each

        self.recorder = _Recorder(DomainDispatcherApplication(create_backend_app))
        self.server = make_server(host, port, self.recorder, threaded=True, request_handler=MotoRequestHandler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[Request]:
        with self.recorder.lock:
            return list(self.recorder.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join()


def image_bytes_read(requests: list[Request], images: set[tuple[str, str]], by_pipeline: bool) -> int:
    """Body bytes of successful GETs of the (bucket, key) objects in `images`, by the pipeline's own processes
    (user agent cog-pipeline) or by everything else (pegasus-transfer / pegasus-s3)."""
    return sum(
        r.bytes_out for r in requests
        if r.method == "GET" and r.status in (200, 206) and (r.bucket, r.key) in images
        and ("cog-pipeline/" in r.user_agent or r.user_agent.endswith("cog-pipeline")) == by_pipeline
    )
