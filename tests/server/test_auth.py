"""Access control of the OpenAI server (issue 12, item 3 and scoped keys).

Safe by default: without keys the server only listens on loopback, and on any other host it
refuses to start unless told `--insecure-no-auth`; `--protect-metrics` puts /metrics and the API
docs behind a key; keys are compared in constant time. Scoped keys reach only the adapters their
patterns allow, checked on the name a reference resolves to. The keys file is re-read when it
changes. Over real HTTP (uvicorn on loopback) with a real registry and a fake engine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import loramux.registry as reg
from loramux.server import auth
from loramux.server.auth import ANONYMOUS, KeyStore
from loramux.server.errors import SettingsError, Unauthorized
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import FakeEngine, LiveServers, build_runtime

BASE = "fake-base"
SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
HELLO = [{"role": "user", "content": "hi"}]


def settings(**kw) -> ServerSettings:
    return ServerSettings.from_sources({"base": BASE} | kw, environ={})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- safe by default -------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "my-host.example"])
def test_no_keys_refuses_a_public_host(host: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=f"refusing to listen on {host} without API keys"):
        settings(host=host)
    assert settings(host=host, insecure_no_auth=True).host == host
    keys = tmp_path / "keys"
    keys.write_text("sk-one-00000000\n")
    assert settings(host=host, api_keys=keys).api_keys == keys
    environ = {"LORAMUX_HOST": host, "LORAMUX_API_KEYS": str(keys)}
    assert ServerSettings.from_sources({"base": BASE}, environ).api_keys == keys
    environ = {"LORAMUX_HOST": host, "LORAMUX_INSECURE_NO_AUTH": "1"}
    assert ServerSettings.from_sources({"base": BASE}, environ).insecure_no_auth


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "localhost", "::1", "[::1]"])
def test_no_keys_is_fine_on_loopback(host: str) -> None:
    assert settings(host=host).api_keys is None


def test_serve_refuses_a_public_host_in_one_line() -> None:
    from loramux.cli import app

    result = CliRunner().invoke(app, ["serve", "--base", "/nowhere", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == ["error: refusing to listen on 0.0.0.0 without API keys: give --api-keys "
                     "FILE (or LORAMUX_API_KEYS), or --insecure-no-auth to serve it open to "
                     "anyone"], result.output


def test_keys_are_compared_in_constant_time(tmp_path: Path, monkeypatch) -> None:
    """Every key is compared on every request, found first, last or not at all, and always as
    equal-length digests: neither the position nor the length of a key shows in the time."""
    path = tmp_path / "keys"
    path.write_text("sk-first-00000000\nsk-middle-00000000 admin\nsk-last-00000000\n")
    store = KeyStore(path)
    calls: list[tuple[int, int]] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert store.authenticate("Bearer sk-first-00000000").name == "line-1"
    assert store.authenticate("Bearer sk-middle-00000000").admin
    assert store.authenticate("Bearer sk-last-00000000").name == "line-3"
    for wrong in ("sk-first-0000000", "sk-first-00000000-and-more", "x"):
        with pytest.raises(Unauthorized):
            store.authenticate(f"Bearer {wrong}")
    assert len(calls) == 6 * 3 and set(calls) == {(32, 32)}, calls
    assert "sk-first-00000000" not in repr(store.__dict__), "no secret is kept, only its hash"


def test_keys_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# operators\nsk-admin-00000000 admin name=ops\nsk-old-00000000:admin\n"
                    "sk-a-00000000 user adapters=team-a-*,shared-? rpm=60 tpm=20000 "
                    "concurrency=4\n")
    store = KeyStore(path)
    ops, old, scoped = (store.authenticate(f"Bearer {k}")
                        for k in ("sk-admin-00000000", "sk-old-00000000", "sk-a-00000000"))
    assert (ops.name, ops.admin, ops.adapters) == ("ops", True, None)
    assert old.admin, "the older `KEY:admin` spelling still works"
    assert (scoped.admin, scoped.adapters) == (False, ("team-a-*", "shared-?"))
    assert scoped.may_use("team-a-x") and scoped.may_use("shared-1")
    assert not scoped.may_use("team-b-x") and not scoped.may_use("shared-12")
    assert scoped.budget is not None and scoped.budget.limits.tpm == 20000
    assert KeyStore(None).authenticate(None) is ANONYMOUS


@pytest.mark.parametrize(("text", "error"), [
    ("sk-a-00000000 adapters=team-a/*\n", r"keys:1: adapter pattern 'team-a/\*' can never match"),
    ("\nsk-a-00000000 rpm=0\n", "keys:2: rpm= takes a whole number >= 1, not '0'"),
    ("sk-a-00000000 superuser\n", "keys:1: unknown word 'superuser'"),
    ("sk-a-00000000\nsk-a-00000000 admin\n", "keys:2: this key is already listed"),
    ("# nothing\n", "holds no API keys"),
])
def test_a_bad_keys_file_is_refused_naming_the_line(tmp_path: Path, text: str,
                                                    error: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(SettingsError, match=error):
        KeyStore(path)


# -- over HTTP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory) -> Path:
    """team-a-x (v1, v2 with alias prod), team-b-y (alias prod), shared-z."""
    root = tmp_path_factory.mktemp("auth")
    registry = reg.open(root / "registry")
    for seed, (name, alias) in enumerate([("team-a-x", None), ("team-a-x", "prod"),
                                          ("team-b-y", "prod"), ("shared-z", None)]):
        registry.push(write_adapter(root / f"a{seed}", SHAPES, rank=2, seed=seed), name,
                      alias=alias)
    registry.close()
    return root / "registry"


@pytest.fixture
def serve(registry_dir: Path, tmp_path: Path):
    """`serve(keys_text, **settings)` → (url, engine, runtime) of a live server."""
    servers = LiveServers()

    def start(keys: str | None, **kw):
        if keys is not None:
            (tmp_path / "keys").write_text(keys)
            kw["api_keys"] = tmp_path / "keys"
        engine = FakeEngine()
        runtime = build_runtime(settings(**kw), registry_dir, tmp_path / "cache", engine)
        return servers.start(runtime), engine, runtime

    yield start
    servers.close()


def chat(url: str, model: str, key: str | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={
        "model": model, "messages": HELLO, "max_tokens": 2},
        headers=bearer(key) if key else {}, timeout=30)


def test_without_keys_every_loopback_caller_is_admin(serve) -> None:
    url, _, _ = serve(None)
    assert chat(url, BASE).status_code == 200
    assert httpx.post(f"{url}/v1/adapters/load", json={"model": "shared-z"},
                      timeout=30).status_code == 200
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200


@pytest.mark.parametrize("protect", [False, True])
def test_protect_metrics_puts_metrics_and_docs_behind_a_key(serve, protect: bool) -> None:
    url, _, _ = serve("sk-user-00000000\nsk-ops-00000000 admin\n", protect_metrics=protect)
    # /metrics names every tenant's adapters: an operator's always, once there are keys
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
    assert httpx.get(f"{url}/metrics", headers=bearer("sk-user-00000000"),
                     timeout=30).status_code == 403
    assert httpx.get(f"{url}/metrics", headers=bearer("sk-ops-00000000"),
                     timeout=30).status_code == 200
    for path in ("/docs", "/openapi.json"):
        anonymous = httpx.get(f"{url}{path}", timeout=30)
        if protect:
            assert anonymous.status_code == 401, (path, anonymous.text)
            assert anonymous.json()["error"]["type"] == "authentication_error"
            assert httpx.get(f"{url}{path}", headers=bearer("sk-wrong-00000000"),
                             timeout=30).status_code == 401
        else:
            assert anonymous.status_code == 200, path
        assert httpx.get(f"{url}{path}", headers=bearer("sk-user-00000000"),
                         timeout=30).status_code == 200, path
    for path in ("/health", "/ready"):  # probes stay open
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 200
    assert chat(url, BASE).status_code == 401
    assert chat(url, BASE, "sk-user-00000000").status_code == 200


SCOPED = ("sk-a-00000000 user adapters=team-a-*,shared-*\n"
          "sk-ops-00000000 admin adapters=team-a-*\nsk-all-00000000 admin\n"
          "sk-z-00000000 adapters=shared-z\n")


def test_scoped_key_reaches_only_its_adapters(serve, registry_dir: Path) -> None:
    from openai import OpenAI, PermissionDeniedError

    url, engine, _ = serve(SCOPED)
    registry = reg.open(registry_dir)
    a_digest = registry.resolve("team-a-x@1").digest
    b_digest = registry.resolve("team-b-y").digest
    registry.close()
    allowed = [BASE, "team-a-x", "team-a-x@1", "team-a-x:prod", f"team-a-x@{a_digest[:19]}",
               "shared-z"]
    for model in allowed:
        assert chat(url, model, "sk-a-00000000").status_code == 200, model
    for model in ("team-b-y", "team-b-y:prod", f"team-b-y@{b_digest}", "team-b-nothing"):
        refused = chat(url, model, "sk-a-00000000")
        assert refused.status_code == 403, (model, refused.text)
        error = refused.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "permission_error", "model_not_allowed", "model")
        assert f"`{model}`" in error["message"] and "team-a-*, shared-*" in error["message"]
    for model in ("shared-z@1", "shared-z:latest"):  # the pattern is matched on the name only
        assert chat(url, model, "sk-z-00000000").status_code == 200, model
    assert chat(url, "team-a-x", "sk-z-00000000").status_code == 403
    assert b_digest not in engine.served, "a refused adapter never reached the engine"
    client = OpenAI(base_url=f"{url}/v1", api_key="sk-a-00000000", max_retries=0)
    with pytest.raises(PermissionDeniedError):
        client.chat.completions.create(model="team-b-y", messages=HELLO, max_tokens=2)

    def listed(key: str, refused: bool = False) -> set[str]:
        page = httpx.get(f"{url}/v1/models", params={"include_refused": refused},
                         headers=bearer(key), timeout=30)
        return {card["id"] for card in page.json()["data"]}

    assert listed("sk-a-00000000") == {BASE, "team-a-x@1", "team-a-x@2", "shared-z@1"}
    assert listed("sk-a-00000000", refused=True) == listed("sk-a-00000000")
    assert listed("sk-all-00000000") == listed("sk-a-00000000") | {"team-b-y@1"}
    # A scoped admin key loads and unloads only within its scope, like its completions.
    for action in ("load", "unload"):
        for model, status in (("team-a-x", 200), ("team-b-y", 403), ("shared-z", 403)):
            r = httpx.post(f"{url}/v1/adapters/{action}", json={"model": model},
                           headers=bearer("sk-ops-00000000"), timeout=30)
            assert r.status_code == status, (action, model, r.text)


class Redirecting:
    """A registry whose digest references are not scoped by name (a future backend, a bug):
    `team-a-x@sha256:<b>` comes back as team-b-y's manifest."""

    def __init__(self, inner, target: str) -> None:
        self.inner, self.target = inner, target

    def resolve(self, ref):
        if "@sha256:" in str(ref):
            return self.inner.resolve(self.target)
        return self.inner.resolve(ref)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_the_scope_is_checked_on_the_resolved_name(serve) -> None:
    """The name a reference spells is only a hint: a reference that resolves to another
    tenant's adapter is refused, whatever it looks like."""
    from loramux.server.resolver import Resolver

    url, engine, runtime = serve(SCOPED)
    runtime.models.resolver = Resolver(Redirecting(runtime.registry, "team-b-y"), BASE)
    b_digest = runtime.registry.resolve("team-b-y").digest
    sneaky = chat(url, f"team-a-x@{b_digest}", "sk-a-00000000")
    assert sneaky.status_code == 403, sneaky.text
    assert "adapter `team-b-y`" in sneaky.json()["error"]["message"]
    assert chat(url, f"team-a-x@{b_digest}", "sk-all-00000000").status_code == 200
    assert engine.served.count(b_digest) == 1, "only the unscoped key's request ran"


def test_keys_rotate_when_the_file_changes(serve, tmp_path: Path, caplog) -> None:
    url, _, _ = serve("sk-old-00000000\n")
    keys = tmp_path / "keys"
    assert chat(url, BASE, "sk-old-00000000").status_code == 200
    rotated = tmp_path / "keys.new"
    rotated.write_text("sk-new-00000000 admin\n")
    os.replace(rotated, keys)  # how a secret mount or a careful operator swaps the file
    assert chat(url, BASE, "sk-old-00000000").status_code == 401
    assert chat(url, BASE, "sk-new-00000000").status_code == 200
    keys.write_text("sk-newer-00000000 rpm=oops\n")  # a broken edit: the keys in force stay
    assert chat(url, BASE, "sk-new-00000000").status_code == 200
    assert chat(url, BASE, "sk-newer-00000000").status_code == 401
    assert "not reloaded, the previous ones stay in force" in caplog.text
    assert "keys:1: rpm= takes a whole number" in caplog.text


def test_models_card_names_for_the_filter_are_adapter_names(serve) -> None:
    """The /v1/models filter reads an adapter card's `root` as its adapter name and a card
    without `parent` as the base: pinned here so a change of the card shape cannot open it."""
    url, _, _ = serve(None)
    cards = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    base = [c for c in cards if c["parent"] is None]
    assert [c["id"] for c in base] == [BASE]
    assert {c["root"] for c in cards if c["parent"]} == {"team-a-x", "team-b-y", "shared-z"}


def test_the_readme_keys_example_is_a_valid_keys_file(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("**The keys file**", 1)[1].split("```text\n", 1)[1].split("```")[0]
    path = tmp_path / "keys"
    path.write_text(example)
    team = KeyStore(path).authenticate("Bearer sk-7b21aa90…")
    assert (team.name, team.adapters) == ("team-a", ("team-a-*", "shared-*"))
    assert team.budget is not None and team.budget.limits.concurrency == 4
