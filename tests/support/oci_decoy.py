"""A hostile OCI registry on loopback: real HTTP, a sliver of the distribution API, and lies.

The OCI client must treat a registry as a network peer, not a trusted one. This one answers
what a compromised or misconfigured registry could: an upload ``Location`` and a tags ``Link``
pointing at another host (``elsewhere``, e.g. a second decoy on 127.0.0.2 that records every
``Authorization`` it is sent), a manifest of any size (streamed, counting what got out before the
client hung up), and ``Link`` pages without end. With ``token`` (or ``expect_basic``) set, a
request without ``Authorization: Bearer <token>`` (or that basic header) is a 401 ``Basic``
challenge; every request is recorded.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHUNK = 64 << 10


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str | None


class DecoyRegistry:
    """``start()`` serves on a free port of ``host``; ``url`` is its ``http://host:port``."""

    def __init__(self, host: str = "127.0.0.1", token: str | None = None) -> None:
        self.host, self.token = host, token
        self.expect_basic: str | None = None  # also accepted: this ``Basic …`` header
        self.elsewhere: str | None = None  # where Location and Link point (None: here)
        self.manifest_bytes = 0  # the size of every manifest answer
        self.tag_pages = 1  # pages before the last, which has no Link
        self.sent_bytes = 0  # manifest bytes written before the client hung up
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() first"
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    @property
    def netloc(self) -> str:
        return self.url.removeprefix("http://")

    def accepts(self, authorization: str | None) -> bool:
        wanted = {h for h in (self.token and f"Bearer {self.token}", self.expect_basic) if h}
        return not wanted or authorization in wanted

    def authorizations(self) -> list[str]:
        with self._lock:
            return [s.authorization for s in self.requests if s.authorization is not None]

    def start(self) -> str:
        decoy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stalls

            def _answer(self) -> None:
                auth = self.headers.get("Authorization")
                with decoy._lock:
                    decoy.requests.append(Seen(self.command, self.path, auth))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if not decoy.accepts(auth):
                    return self._send(401, b"{}", {"WWW-Authenticate": 'Basic realm="decoy"'})
                decoy._route(self)

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None
                      ) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- the lies ------------------------------------------------------------------------------

    def _route(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        there = self.elsewhere or self.url
        send = handler._send  # type: ignore[attr-defined]
        if handler.command == "POST" and url.path.endswith("/blobs/uploads/"):
            return send(202, b"", {"Location": f"{there}/upload/1"})
        if url.path.startswith("/upload/"):
            return send(201, b"")
        if "/manifests/" in url.path and handler.command == "GET":
            return self._stream_manifest(handler)
        if url.path.endswith("/tags/list"):
            page = int(parse_qs(url.query).get("last", ["0"])[0])
            headers = {"Content-Type": "application/json"}
            if page + 1 < self.tag_pages:
                headers["Link"] = f'<{there}{url.path}?n=1&last={page + 1}>; rel="next"'
            return send(200, json.dumps({"tags": [f"t{page}"]}).encode(), headers)
        return send(200, b"{}", {"Content-Type": "application/json"})

    def _stream_manifest(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        handler.send_header("Content-Length", str(self.manifest_bytes))
        handler.end_headers()
        left = self.manifest_bytes
        try:
            while left > 0:
                n = min(CHUNK, left)
                handler.wfile.write(b" " * n)
                left -= n
                with self._lock:
                    self.sent_bytes += n
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
