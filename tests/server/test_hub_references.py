"""``"model": "hf://ORG/REPO@REV"`` on a live server (real app, real HTTP, real local registry and
adapter manager, fake engine), importing through the real ``huggingface_hub`` client from the
Hub-compatible endpoint on loopback (tests/support/hub_server.py).

- Without ``--hub-allow`` a Hub reference is a 404 that names the flag, and nothing is fetched.
- With it, an allowed repo is imported on first use (lineage: repo, commit, files' sha256) and
  served; a pinned commit keeps naming its own files after the branch moves.
- A Hub that cannot be reached is a 503 that is not remembered: the next request imports.
- A repo with a pickle is a 400 and publishes nothing; a key scoped to other names is refused
  before any request reaches the Hub.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import loramux.registry as reg
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "support"))
from fake_engine import FakeEngine, LiveServers, build_runtime
from hub_server import HubServer, running_hub

SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
SCOPED = "sk-scoped-key-for-team-a-0123456789"
ADMIN = "sk-admin-key-for-hub-tests-0123456789"


def adapter_files(tmp: Path, seed: int) -> dict[str, bytes]:
    folder = write_adapter(tmp / f"adapter-{seed}", SHAPES, rank=2, seed=seed)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    from huggingface_hub import constants

    with running_hub() as served:
        # What HF_ENDPOINT and HF_HOME set for a server process (read when huggingface_hub is
        # imported), for this in-process one.
        monkeypatch.setattr(constants, "ENDPOINT", served.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            served.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        yield served


def serve(tmp_path: Path, hub_allow: list[str]) -> tuple[LiveServers, str]:
    keys = tmp_path / "keys"
    keys.write_text(f"{ADMIN} admin\n{SCOPED} adapters=team-a-*\n")
    settings = ServerSettings.from_sources(
        {"base": "fake-base", "resolve_ttl_s": 0.2, "hub_allow": hub_allow,
         "api_keys": str(keys)}, environ={})
    runtime = build_runtime(settings, tmp_path / "registry", tmp_path / "cache", FakeEngine())
    servers = LiveServers()
    return servers, servers.start(runtime)


def ask(url: str, model: str, key: str = ADMIN) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=60,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "prompt": "hi", "max_tokens": 1})


def versions(tmp_path: Path) -> dict[str, str]:
    """ref -> the Hub commit its lineage records."""
    with reg.open(tmp_path / "registry") as store:
        rows = store.list()
        return {f"{r.name}@{r.version}": store.resolve(f"{r.name}@{r.version}")
                .lineage.model_extra["source"]["hub"]["commit"] for r in rows}


def test_without_hub_allow_a_hub_reference_is_a_404_naming_the_flag(hub, tmp_path: Path) -> None:
    hub.commit("acme/sql", adapter_files(tmp_path, 1))
    servers, url = serve(tmp_path, [])
    try:
        response = ask(url, "hf://acme/sql@main")
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and "--hub-allow" in error["message"]
        assert hub.requests == []
    finally:
        servers.close()


def test_an_allowed_repo_is_imported_on_first_use_and_pinned_by_commit(
        hub, tmp_path: Path) -> None:
    first = hub.commit("acme/sql", adapter_files(tmp_path, 1), tag="v1")
    servers, url = serve(tmp_path, ["acme/*"])
    try:
        assert ask(url, "hf://acme/sql@v1").status_code == 200
        assert versions(tmp_path) == {"acme--sql@1": first}
        moved = hub.commit("acme/sql", adapter_files(tmp_path, 2))
        assert ask(url, "hf://acme/sql@main").status_code == 200
        assert versions(tmp_path) == {"acme--sql@1": first, "acme--sql@2": moved}
        # The pinned commit is served as its own files, after the branch moved on.
        hub.requests.clear()
        assert ask(url, f"hf://acme/sql@{first}").status_code == 200
        assert versions(tmp_path) == {"acme--sql@1": first, "acme--sql@2": moved}
        other = ask(url, "hf://other-org/sql")
        assert other.status_code == 404 and "acme/*" in other.json()["error"]["message"]
    finally:
        servers.close()


def test_the_hub_unreachable_is_a_503_that_is_not_remembered(hub, tmp_path: Path) -> None:
    hub.commit("acme/flaky", adapter_files(tmp_path, 3))
    servers, url = serve(tmp_path, ["acme/flaky"])
    try:
        hub.fail_with = 503
        down = ask(url, "hf://acme/flaky")
        assert down.status_code == 503, down.text
        error = down.json()["error"]
        assert error["code"] == "hub_unavailable" and "error id" in error["message"]
        assert hub.url not in error["message"]
        hub.fail_with = None
        assert ask(url, "hf://acme/flaky").status_code == 200  # at once, not after a TTL
    finally:
        servers.close()


def test_a_pickle_repo_is_a_400_and_a_scoped_key_never_reaches_the_hub(
        hub, tmp_path: Path) -> None:
    hub.commit("acme/pickled", {**adapter_files(tmp_path, 4), "adapter_model.bin": b"\x80\x04"})
    hub.commit("acme/sql", adapter_files(tmp_path, 5))
    servers, url = serve(tmp_path, ["acme/*"])
    try:
        refused = ask(url, "hf://acme/pickled")
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_hub_adapter"
        assert "pickle" in refused.json()["error"]["message"]
        assert versions(tmp_path) == {}
        hub.requests.clear()
        scoped = ask(url, "hf://acme/sql", key=SCOPED)
        assert scoped.status_code == 403 and scoped.json()["error"]["code"] == "model_not_allowed"
        assert hub.requests == []
    finally:
        servers.close()
