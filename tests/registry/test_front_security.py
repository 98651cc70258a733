"""The registry server's HTTP front (security round 2, items 2, 14, 16): JSON-only bodies, a
tokenless registry answering its own origin and loopback names only, a header deadline for
every connection under `loramux registry serve`, and /ui login sessions.

Real app over real HTTP on loopback; `loramux registry serve` itself as a child process for the
connection limits.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.append(str(Path(__file__).parent))
from registry_support import ADMIN_TOKEN, READ_TOKEN, TOKENS, WRITE_TOKEN

from loramux.registry.http.app import create_app
from loramux.registry.http.auth import UI_COOKIE, TokenAuth, parse_tokens
from loramux.registry.store import LocalRegistry
from loramux.support.launch import RegistryProcess
from loramux.support.ports import InProcessServer
from loramux.web.serving import ConnectionLimits, uvicorn_config

pytestmark = pytest.mark.timeout(180)


class Site(InProcessServer):
    """The registry app under the uvicorn configuration `loramux registry serve` uses."""

    def __init__(self, root: Path, auth: TokenAuth) -> None:
        self.store = LocalRegistry(root)
        super().__init__(uvicorn_config(create_app(self.store, auth), host="127.0.0.1", port=0,
                                        log_level="warning", limits=ConnectionLimits()))

    def stop(self) -> None:
        super().stop()
        self.store.close()


@pytest.fixture
def site(tmp_path: Path):
    started: list[Site] = []

    def start(tokens: str = TOKENS, anonymous_read: bool = False) -> Site:
        auth = TokenAuth(parse_tokens(tokens) if tokens else [], anonymous_read=anonymous_read)
        started.append(Site(tmp_path / f"store{len(started)}", auth))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_json_routes_refuse_other_content_types_even_with_a_token(site) -> None:
    url = site().url
    r = httpx.put(f"{url}/v2/adapters/demo/aliases/prod", content='{"version": 1}',
                  headers={"Content-Type": "text/plain", **bearer(WRITE_TOKEN)}, timeout=30)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["type"] == "InvalidRequest" and r.json()["error"]["message"]
    data = b"raw blob bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    put = httpx.put(f"{url}/v2/blobs/{digest}", content=data, timeout=30,
                    headers={"Content-Type": "application/octet-stream", **bearer(WRITE_TOKEN)})
    assert put.status_code == 201, put.text  # blobs are raw bytes, as before
    assert httpx.post(f"{url}/v2/gc", headers=bearer(ADMIN_TOKEN), timeout=30
                      ).status_code == 200  # no body: no content type needed


def test_a_tokenless_registry_answers_only_loopback_names_and_its_own_origin(site) -> None:
    s = site("", anonymous_read=True)
    assert httpx.get(f"{s.url}/v2/adapters", timeout=30).status_code == 200
    rebound = httpx.get(f"{s.url}/v2/adapters", headers={"Host": f"evil.example:{s.port}"},
                        timeout=30)
    assert rebound.status_code == 421 and rebound.json()["error"]["type"] == "InvalidRequest"
    foreign = httpx.get(f"{s.url}/v2/adapters", headers={"Origin": "https://evil.example"},
                        timeout=30)
    assert foreign.status_code == 403 and foreign.json()["error"]["type"] == "Forbidden"
    assert httpx.get(f"{s.url}/ui", headers={"Origin": s.url}, timeout=30).status_code == 200
    # with tokens the token is the guard: another name or origin is no reason to refuse
    t = site()
    assert httpx.get(f"{t.url}/v2/adapters", timeout=30, headers={
        "Host": "registry.example", "Origin": "https://app.example", **bearer(READ_TOKEN)}
    ).status_code == 200


def test_ui_login_is_a_server_side_session(site) -> None:
    url = site().url
    forged = httpx.post(f"{url}/ui/login", data={"token": READ_TOKEN}, timeout=30,
                        headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403 and UI_COOKIE not in forged.headers.get("set-cookie", "")
    done = httpx.post(f"{url}/ui/login", data={"token": READ_TOKEN}, timeout=30,
                      headers={"Origin": url})
    assert done.status_code == 303
    session = done.cookies[UI_COOKIE]
    assert READ_TOKEN not in done.headers["set-cookie"]
    assert httpx.get(f"{url}/ui", cookies={UI_COOKIE: session}, timeout=30).status_code == 200
    assert httpx.get(f"{url}/ui", cookies={UI_COOKIE: READ_TOKEN}, timeout=30
                     ).status_code == 401, "the token itself is no cookie"
    assert httpx.post(f"{url}/ui/logout", cookies={UI_COOKIE: session}, timeout=30
                      ).status_code == 303
    assert httpx.get(f"{url}/ui", cookies={UI_COOKIE: session}, timeout=30).status_code == 401


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_registry_serve_closes_half_sent_requests(tmp_path: Path) -> None:
    server = RegistryProcess(tmp_path / "store", tmp_path / "registry.log",
                             ["--anonymous-read", "--header-timeout-s", "1"])
    with server as url:
        port = int(url.rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        try:
            for sock in socks[::2]:
                sock.sendall(b"GET /v2/adapters HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = time.monotonic()
            assert all(_closed_within(s, max(0.1, 8 - (time.monotonic() - started)))
                       for s in socks)
            assert httpx.get(f"{url}/v2/adapters", timeout=30).status_code == 200
        finally:
            for sock in socks:
                sock.close()
