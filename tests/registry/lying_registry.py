"""A real HTTP proxy in front of a real `loramux registry serve`, which can be told to lie.

What issue 26 asks the tests to face: a registry, or a proxy or cache in front of it, that
answers another version than the one a reference pins. Every request is forwarded to the real
registry over loopback; `ask_instead` changes the reference a resolve asks for (the registry
then honestly answers the wrong thing) and `edit_answer` changes a resolve's JSON answer on its
way back (a manifest that claims a digest its files do not give). Everything else passes
through untouched, blobs included, so a client sees a working registry that lies only where
the test says.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

RESOLVES = ("/v2/resolve", "/v2/resolve/split")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
              "content-encoding"}


class LyingRegistry:
    """``with LyingRegistry(upstream_url) as url:``; set ``ask_instead`` / ``edit_answer``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.ask_instead: Callable[[str], str] = lambda ref: ref
        self.edit_answer: Callable[[str, dict[str, Any]], dict[str, Any]] = lambda ref, a: a
        self.asked: list[str] = []  # the references clients sent to resolve, in order
        self._client = httpx.Client(base_url=self.upstream, timeout=60)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def honest(self) -> None:
        self.ask_instead = lambda ref: ref
        self.edit_answer = lambda ref, answer: answer

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def _forward(self, method: str, target: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urlsplit(target)
        query = parse_qsl(parts.query, keep_blank_values=True)
        asked = dict(query).get("ref") if parts.path in RESOLVES else None
        if asked is not None:
            self.asked.append(asked)
            query = [(k, self.ask_instead(v) if k == "ref" else v) for k, v in query]
        path = parts.path + (f"?{urlencode(query)}" if query else "")
        response = self._client.request(method, path, headers=headers, content=body)
        content = response.content
        if asked is not None and response.status_code == 200:
            content = json.dumps(self.edit_answer(asked, response.json())).encode()
        out = [(k, v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP]
        return response.status_code, out, content

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                status, out, content = proxy._forward(self.command, self.path, headers, body)
                self.send_response(status)
                for key, value in out:
                    self.send_header(key, value)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _any

            def log_message(self, *_: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def lying_in_front_of(store: Path, log: Path) -> Iterator[LyingRegistry]:
    """`loramux registry serve` on the folder ``store`` (anonymous reads), behind a proxy that
    starts honest; both stop on exit."""
    from loramux.support.launch import RegistryProcess

    with RegistryProcess(store, log, ["--anonymous-read"]) as upstream:
        proxy = LyingRegistry(upstream)
        with proxy:
            yield proxy
