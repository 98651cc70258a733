"""The server's HTTP front (security round 2): what a web page can make a browser send to a
keyless server (content type, Origin, Host), who may restart the shared engine, what the keys
file refuses, how long a connection may take to send its headers, and the /ui login session.

Real app over real HTTP on loopback (uvicorn, configured as `loramux serve` configures it), a
real registry, the fake engine.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

import loramux.registry as reg
from loramux.server.auth import UI_COOKIE, KeyStore
from loramux.server.errors import SettingsError
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter
from loramux.support.ports import InProcessServer
from loramux.web.serving import ConnectionLimits, uvicorn_config

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import FakeEngine, build_runtime

BASE = "fake-base"
SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
HELLO = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
USER, OPS, SCOPED_ADMIN = "sk-user-0123456789", "sk-ops-0123456789", "sk-scoped-0123456789"
KEYS = f"{USER} name=user\n{OPS} admin name=ops\n{SCOPED_ADMIN} admin adapters=team-a-*\n"


def served_live(app, limits: ConnectionLimits) -> InProcessServer:
    """A live server started with `loramux serve`'s own uvicorn configuration."""
    return InProcessServer(uvicorn_config(app, host="127.0.0.1", port=0, log_level="warning",
                                          limits=limits, lifespan="on"))


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("front")
    registry = reg.open(root / "registry")
    registry.push(write_adapter(root / "a", SHAPES, rank=2), "team-a-x")
    registry.close()
    return root / "registry"


@pytest.fixture
def serve(registry_dir: Path, tmp_path: Path):
    """`serve(keys_text or None, limits=..., **settings)` → (InProcessServer, runtime)."""
    running: list[InProcessServer] = []

    def start(keys: str | None, limits: ConnectionLimits | None = None, **kw):
        options: dict[str, object] = {"base": BASE} | kw
        if keys is not None:
            (tmp_path / "keys").write_text(keys)
            options["api_keys"] = tmp_path / "keys"
        settings = ServerSettings.from_sources(options, environ={})
        runtime = build_runtime(settings, registry_dir, tmp_path / "cache", FakeEngine())
        from loramux.server.app import create_app

        served = served_live(create_app(runtime), limits or settings.connection_limits())
        running.append(served)
        return served, runtime

    yield start
    for served in running:
        served.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["type"], error


# -- item 2: a keyless server and the web pages a developer visits ------------------------------


def test_keyless_api_takes_only_json_bodies(serve) -> None:
    """A CORS "simple request" (text/plain or a form) runs without a preflight: refused."""
    served, _ = serve(None)
    url = served.url
    body = '{"model": "fake-base", "messages": [{"role": "user", "content": "hi"}]}'
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = httpx.post(f"{url}/v1/chat/completions", content=body,
                       headers={"Content-Type": kind}, timeout=30)
        _error(r, 415, "unsupported_media_type")
        assert r.headers["connection"] == "close"
    r = httpx.post(f"{url}/v1/adapters/load", content='{"model": "team-a-x"}',
                   headers={"Content-Type": "text/plain"}, timeout=30)
    _error(r, 415, "unsupported_media_type")
    assert httpx.post(f"{url}/v1/chat/completions", json=HELLO, timeout=30).status_code == 200
    charset = {"Content-Type": "Application/JSON; charset=utf-8"}
    assert httpx.post(f"{url}/v1/chat/completions", content=b'{"model": "fake-base", '
                      b'"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}',
                      headers=charset, timeout=30).status_code == 200


def test_keyless_server_refuses_other_origins_and_hosts(serve) -> None:
    served, _ = serve(None)
    url = served.url
    foreign = httpx.post(f"{url}/v1/chat/completions", json=HELLO, timeout=30,
                         headers={"Origin": "https://evil.example"})
    _error(foreign, 403, "cross_origin")
    assert foreign.json()["error"]["type"] == "permission_error"
    _error(httpx.get(f"{url}/v1/models", headers={"Origin": "null"}, timeout=30), 403,
           "cross_origin")
    # DNS rebinding: evil.example resolves to 127.0.0.1, the browser sends its own Host
    _error(httpx.get(f"{url}/v1/models", headers={"Host": f"evil.example:{served.port}"},
                     timeout=30), 421, "misdirected")
    _error(httpx.get(f"{url}/ui", headers={"Host": "evil.example"}, timeout=30), 421,
           "misdirected")
    # loopback names on any port, the server's own origin, and no Origin at all are fine
    for host in (f"127.0.0.1:{served.port}", f"localhost:{served.port}", "localhost",
                 "[::1]:8000", "127.0.0.2"):
        assert httpx.get(f"{url}/v1/models", headers={"Host": host}, timeout=30
                         ).status_code == 200, host
    own = {"Origin": url}
    assert httpx.post(f"{url}/v1/chat/completions", json=HELLO, headers=own, timeout=30
                      ).status_code == 200
    page = httpx.get(f"{url}/ui", timeout=30)
    assert page.status_code == 200
    answer = httpx.post(f"{url}/ui/api/chat", json={"model": BASE, "message": "hi"},
                        headers=own, timeout=30)
    assert answer.status_code == 200, answer.text


def test_with_keys_the_key_is_the_guard_but_bodies_stay_json(serve) -> None:
    served, _ = serve(KEYS)
    url = served.url
    elsewhere = {"Origin": "https://app.example", "Host": "loramux.example", **bearer(USER)}
    assert httpx.post(f"{url}/v1/chat/completions", json=HELLO, headers=elsewhere,
                      timeout=30).status_code == 200
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{}", timeout=30,
                   headers={"Content-Type": "text/plain", **bearer(USER)})
    _error(r, 415, "unsupported_media_type")
    # a body-less POST needs no content type
    assert httpx.post(f"{url}/v1/admin/engine/restart", headers=bearer(OPS),
                      timeout=30).status_code == 200


def test_an_open_server_on_every_address_does_not_check_the_host(serve) -> None:
    """`--insecure-no-auth` on 0.0.0.0 serves every name by choice; Origin is still checked."""
    served, _ = serve(None, host="0.0.0.0", insecure_no_auth=True)
    url = served.url
    assert httpx.get(f"{url}/v1/models", headers={"Host": "gpu-box.lan:8000"}, timeout=30
                     ).status_code == 200
    _error(httpx.post(f"{url}/v1/chat/completions", json=HELLO, timeout=30,
                      headers={"Origin": "https://evil.example"}), 403, "cross_origin")


# -- item 10: the shared engine ------------------------------------------------------------------


def test_restart_needs_an_unscoped_admin(serve) -> None:
    served, _ = serve(KEYS)
    url = served.url
    r = httpx.post(f"{url}/v1/admin/engine/restart", headers=bearer(SCOPED_ADMIN), timeout=30)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "permission_error"
    assert "without adapters=" in r.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/admin/engine/restart", headers=bearer(USER),
                      timeout=30).status_code == 403
    assert httpx.post(f"{url}/v1/admin/engine/restart", headers=bearer(OPS),
                      timeout=30).status_code == 200


# -- item 13: the keys file ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "error"), [
    ("sk-ops-0123456789\nsk-abc#def0123456 admin\n", "keys:2: '#' inside a key"),
    ("sk-ops-0123456789 admin#ops\n", "keys:1: '#' inside a key or word"),
    ("# operators\nsk-short admin\n", "keys:2: the key is shorter than 10 characters"),
])
def test_keys_file_refuses_a_hash_inside_a_key_and_short_keys(tmp_path: Path, text: str,
                                                              error: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(SettingsError, match=error):
        KeyStore(path)


def test_keys_file_comments_still_work(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# the operators\nsk-ops-0123456789 admin # on call\n  # indented\n")
    assert KeyStore(path).authenticate("Bearer sk-ops-0123456789").admin


# -- item 14: connections ------------------------------------------------------------------------


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_half_sent_requests_are_closed_after_the_header_timeout(serve) -> None:
    served, _ = serve(None, limits=ConnectionLimits(header_timeout_s=1.0))
    socks = []
    for i in range(50):
        sock = socket.create_connection(("127.0.0.1", served.port))
        if i % 2:  # half of them send part of a request, the others nothing at all
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1")
        socks.append(sock)
    started = time.monotonic()
    try:
        assert all(_closed_within(s, max(0.1, 6 - (time.monotonic() - started)))
                   for s in socks), "a half-sent request still holds its connection"
        # a real client meanwhile is served, and a kept-alive connection too
        with httpx.Client(timeout=30) as client:
            for _ in range(2):
                assert client.get(f"{served.url}/v1/models").status_code == 200
                time.sleep(1.5)  # idle past the header timeout: keep-alive governs idleness
    finally:
        for sock in socks:
            sock.close()


def test_a_413_closes_the_connection_instead_of_reading_the_body(serve) -> None:
    served, _ = serve(None, max_body_bytes=4096)
    sock = socket.create_connection(("127.0.0.1", served.port))
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
                     + b" " * 1024)
        sock.settimeout(10)
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 413"), head[:200]
        assert b"connection: close" in head.lower()
        assert _closed_within(sock, 5), "the server kept reading a body it refused"
    finally:
        sock.close()


def test_connection_limits_reach_uvicorn() -> None:
    settings = ServerSettings.from_sources(
        {"base": BASE, "max_connections": 7, "header_timeout_s": 3.5,
         "forwarded_allow_ips": "10.0.0.1"}, environ={})
    config = uvicorn_config(object(), host="127.0.0.1", port=0, log_level="warning",
                            limits=settings.connection_limits())
    assert (config.limit_concurrency, config.timeout_keep_alive,
            config.h11_max_incomplete_event_size, config.forwarded_allow_ips) == (
        7, settings.keep_alive_s, 16 << 10, "10.0.0.1")


# -- item 16: the /ui login ----------------------------------------------------------------------


def _login(url: str, key: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/ui/login", data={"token": key, "next": "/ui"},
                      headers=headers or {}, timeout=30)


def test_login_cookie_is_a_session_that_ends_with_logout_and_key_rotation(serve,
                                                                           tmp_path: Path) -> None:
    served, _ = serve(KEYS)
    url = served.url
    done = _login(url, USER)
    assert done.status_code == 303, done.text
    session = done.cookies[UI_COOKIE]
    assert USER not in done.headers["set-cookie"] and len(session) >= 40
    cookies = {UI_COOKIE: session}
    assert httpx.get(f"{url}/ui", cookies=cookies, timeout=30).status_code == 200
    assert httpx.get(f"{url}/ui", cookies={UI_COOKIE: USER}, timeout=30).status_code == 401, \
        "the key itself is no cookie"
    # rotating the key out of the file ends its sessions at once
    time.sleep(0.01)
    (tmp_path / "keys").write_text(f"{OPS} admin name=ops\n")
    gone = httpx.get(f"{url}/ui", cookies=cookies, timeout=30)
    assert gone.status_code == 401 and "no longer valid" in gone.text
    # logout ends a session on the server, not only in the browser
    again = _login(url, OPS).cookies[UI_COOKIE]
    assert httpx.get(f"{url}/ui", cookies={UI_COOKIE: again}, timeout=30).status_code == 200
    out = httpx.post(f"{url}/ui/logout", cookies={UI_COOKIE: again}, timeout=30)
    assert out.status_code == 303
    assert httpx.get(f"{url}/ui", cookies={UI_COOKIE: again}, timeout=30).status_code == 401


def test_login_sessions_expire() -> None:
    from loramux.web.sessions import Sessions

    now = [0.0]
    sessions = Sessions(ttl_s=60, clock=lambda: now[0])
    sid = sessions.open("credential")
    assert sessions.credential(sid) == "credential"
    now[0] = 61
    assert sessions.credential(sid) is None


def test_login_from_another_site_is_refused(serve) -> None:
    served, _ = serve(KEYS)
    url = served.url
    forged = _login(url, USER, {"Origin": "https://evil.example"})
    assert forged.status_code == 403 and UI_COOKIE not in forged.headers.get("set-cookie", "")
    assert _login(url, USER, {"Origin": url}).status_code == 303


def test_secure_cookie_follows_x_forwarded_proto_only_from_allowed_proxies(serve) -> None:
    proxied = {"X-Forwarded-Proto": "https", "Origin": "https://127.0.0.1"}
    trusted, _ = serve(KEYS, forwarded_allow_ips="127.0.0.1")
    cookie = _login(trusted.url, USER, {**proxied, "Host": "127.0.0.1"}).headers["set-cookie"]
    assert "secure" in cookie.lower()
    untrusted, _ = serve(KEYS, forwarded_allow_ips="")
    refused = _login(untrusted.url, USER, {**proxied, "Host": "127.0.0.1"})
    assert refused.status_code == 403, "an https Origin does not match a plain-http server"
    plain = _login(untrusted.url, USER, {"X-Forwarded-Proto": "https"}).headers["set-cookie"]
    assert "secure" not in plain.lower()
