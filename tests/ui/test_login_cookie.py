"""The pages' login cookie, without a browser: what it grants and where (the pages only),
how it is set (HttpOnly, SameSite=Strict, path /ui), and that no login is asked when the
registry or the server has no tokens. Real apps over real HTTP on loopback (uvicorn); the
server's engine is the fast fake one."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

import loramux.registry as reg
from loramux.registry.http.auth import UI_COOKIE as REGISTRY_COOKIE
from loramux.registry.http.auth import TokenAuth, parse_tokens
from loramux.server.auth import UI_COOKIE as SERVER_COOKIE
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from fake_engine import FakeEngine, LiveServer, LiveServers, build_runtime

BASE = "fake-base"
SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    registry = reg.open(tmp_path / "registry")
    registry.push(write_adapter(tmp_path / "a", SHAPES, rank=2), "alpha", alias="prod")
    registry.close()
    return tmp_path / "registry"


def registry_site(store: Path, tokens: str, anonymous_read: bool = False) -> LiveServer:
    from loramux.registry.http.app import create_app
    from loramux.registry.store import LocalRegistry

    auth = TokenAuth(parse_tokens(tokens) if tokens else [], anonymous_read=anonymous_read)
    return LiveServer(create_app(LocalRegistry(store), auth))


def login(client: httpx.Client, token: str, next_url: str = "/ui") -> httpx.Response:
    return client.post("/ui/login", data={"token": token, "next": next_url})


def test_registry_cookie_is_httponly_strict_and_only_for_the_pages(store: Path) -> None:
    with registry_site(store, "s3cret-read-token:read:alice") as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        first = client.get("/ui/adapters/alpha")
        assert first.status_code == 303
        assert first.headers["location"] == "/ui/login?next=/ui/adapters/alpha"
        refused = login(client, "wrong")
        assert refused.status_code == 401 and "invalid bearer token" in refused.text
        assert REGISTRY_COOKIE not in refused.headers.get("set-cookie", "")
        done = login(client, "s3cret-read-token", "/ui/adapters/alpha")
        assert done.status_code == 303 and done.headers["location"] == "/ui/adapters/alpha"
        cookie = done.headers["set-cookie"]
        assert cookie.startswith(f"{REGISTRY_COOKIE}=") and "s3cret-read-token" not in cookie, \
            "the cookie holds a session id, never the token"
        assert {"HttpOnly", "Path=/ui", "SameSite=strict"} <= {p.strip() for p in
                                                               cookie.split(";")}
        page = client.get("/ui/adapters/alpha")
        assert page.status_code == 200 and "Signed in as <strong>alice</strong>" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        # the API never reads the cookie, even when a client sends it there
        api = httpx.get(f"{url}/v2/adapters", cookies={REGISTRY_COOKIE: "s3cret-read-token"},
                        timeout=30)
        assert api.status_code == 401
        # a write needs a bearer token as before: the gate only lets the login form through
        gc = httpx.post(f"{url}/v2/gc", cookies={REGISTRY_COOKIE: "s3cret-read-token"}, timeout=30)
        assert gc.status_code == 401
        # a stale cookie sends the browser back to the form, and is cleared
        stale = httpx.get(f"{url}/ui", cookies={REGISTRY_COOKIE: "revoked"}, timeout=30)
        assert stale.status_code == 401 and 'name="token"' in stale.text
        assert f'{REGISTRY_COOKIE}=""' in stale.headers["set-cookie"]
        # after login, only paths under /ui: never another site
        for evil in ("//evil.example/ui", "https://evil.example/", "/v2/adapters"):
            assert login(client, "s3cret-read-token", evil).headers["location"] == "/ui"
        out = client.post("/ui/logout")
        assert out.status_code == 303 and f'{REGISTRY_COOKIE}=""' in out.headers["set-cookie"]


def test_registry_without_tokens_asks_no_login(store: Path) -> None:
    with registry_site(store, "", anonymous_read=True) as url:
        page = httpx.get(f"{url}/ui/adapters/alpha", timeout=30)
        assert page.status_code == 200 and "prod" in page.text
        assert "Sign in" not in page.text


def test_registry_page_errors_are_pages(store: Path) -> None:
    with registry_site(store, "", anonymous_read=True) as url:
        missing = httpx.get(f"{url}/ui/adapters/nothing-here", timeout=30)
        assert missing.status_code == 404 and "no adapter named" in missing.text
        assert missing.headers["content-type"].startswith("text/html")
        bad = httpx.get(f"{url}/ui/adapters/Bad..Name", timeout=30)
        assert bad.status_code == 400 and bad.headers["content-type"].startswith("text/html")
        file = httpx.get(f"{url}/ui/adapters/alpha/versions/1/files/nope.png", timeout=30)
        assert file.status_code == 404


@pytest.fixture
def server(store: Path, tmp_path: Path):
    servers = LiveServers()

    def start(keys: str | None) -> str:
        options: dict[str, object] = {"base": BASE}
        if keys is not None:
            (tmp_path / "keys").write_text(keys)
            options["api_keys"] = tmp_path / "keys"
        settings = ServerSettings.from_sources(options, environ={})
        return servers.start(build_runtime(settings, store, tmp_path / "cache", FakeEngine()))

    yield start
    servers.close()


def test_server_playground_cookie(server) -> None:
    url = server("sk-user-00000000 name=ui-user\n")
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/ui").status_code == 303
        assert client.post("/ui/api/chat", json={"model": BASE, "message": "hi"}
                           ).status_code == 401
        done = login(client, "sk-user-00000000")
        assert done.status_code == 303
        assert {"HttpOnly", "Path=/ui", "SameSite=strict"} <= {
            p.strip() for p in done.headers["set-cookie"].split(";")}
        page = client.get("/ui")
        assert page.status_code == 200
        assert all(f">{m}" in page.text for m in (BASE, "alpha@1", "alpha:prod"))
        answer = client.post("/ui/api/chat", json={"model": "alpha:prod", "message": "hi",
                                                   "max_tokens": 3})
        assert answer.status_code == 200, answer.text
        assert answer.json()["served"] == "alpha@1"
        assert answer.json()["usage"]["completion_tokens"] == 3
        rows = client.get("/ui/api/metrics").json()["adapters"]
        assert [(r["adapter"], r["requests"], r["errors"], r["completion_tokens"])
                for r in rows] == [("alpha", 1, 0, 3)]
        # another site's page cannot drive the playground with the user's cookie
        cross = client.post("/ui/api/chat", json={"model": BASE, "message": "hi"},
                            headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403
        form = client.post("/ui/api/chat", content="model=x",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert form.status_code == 400
        bad = client.post("/ui/api/chat", json={"model": BASE, "message": ""})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        # the API itself takes bearer keys only
        assert httpx.get(f"{url}/v1/models", cookies={SERVER_COOKIE: "sk-user-00000000"},
                         timeout=30).status_code == 401


def test_server_without_keys_asks_no_login(server) -> None:
    url = server(None)
    page = httpx.get(f"{url}/ui", timeout=30)
    assert page.status_code == 200 and "Chat playground" in page.text
    assert "Sign in" not in page.text
