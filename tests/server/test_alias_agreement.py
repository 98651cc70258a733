"""Replicas agree on aliases (issue 14, item 4): two servers on one registry serve an alias's new
version within the alias TTL, and neither ever serves a version older than one it already
served, even when its view of the registry lags (an index replica behind the primary); a real
rollback (the alias moved back, in the registry's log) and a deleted latest version are still
followed.

Two live servers (real app, real HTTP, fake engine) on one local registry folder; the version a
response came from is its `x-loramux-adapter-ref` header. The lag is a wrapper around the real
registry that answers from the state it had when frozen: resolution and audit log both.
The resolver's clock is the test's (`Clock`): a TTL runs out when the test moves the clock, so
"within the TTL" is checked exactly, and no bound on wall-clock time can break on a busy machine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

import loramux.registry as reg
from loramux.registry.canary import Split
from loramux.registry.refs import AdapterRef
from loramux.server import resolver
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import LiveServers, build_runtime

BASE = "fake-base"
SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
TTL = 0.4


class LaggingRegistry:
    """The real registry, or, while frozen, the answers it gave when `freeze()` was called:
    what a server reading an index replica that stopped catching up sees (its references,
    versions and audit log all stop there)."""

    def __init__(self, registry) -> None:
        self.registry = registry
        self.frozen = False
        self._answers: dict[str, object] = {}
        self._last_entry = 0
        self._versions: set[tuple[str, int]] = set()

    def freeze(self, refs: list[str]) -> None:
        self._answers = {ref: self.registry.resolve(ref) for ref in refs}
        self._last_entry = self.registry.log(limit=1)[0].id
        self._versions = {(v.name, v.version) for v in self.registry.list(include_deleted=True)}
        self.frozen = True

    def resolve(self, ref):
        if self.frozen and str(ref) in self._answers:
            return self._answers[str(ref)]
        return self.registry.resolve(ref)

    def resolve_split(self, ref):  # the server's lookup of an alias (no canary here)
        return Split(stable=self.resolve(ref))

    def log(self, **filters):
        entries = self.registry.log(**filters)
        return [e for e in entries if not self.frozen or e.id <= self._last_entry]

    def list(self, **filters):
        versions = self.registry.list(**filters)
        return [v for v in versions if not self.frozen or (v.name, v.version) in self._versions]

    def __getattr__(self, name: str):
        return getattr(self.registry, name)


class Clock:
    """What the resolvers read as `time.monotonic()`; it moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def past_ttl(self) -> None:
        """Just past one TTL: every answer looked up before now has expired."""
        self.now += TTL + 0.001


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(resolver, "time", SimpleNamespace(monotonic=lambda: clock.now))
    return clock


@pytest.fixture
def fleet(tmp_path: Path, clock: Clock):
    """(registry, [url_a, url_b], replica b's view of it, a folder) with `sql` v1 and v2 and
    prod → 1."""
    registry = reg.open(tmp_path / "registry")
    for v in (1, 2):
        registry.push(write_adapter(tmp_path / f"sql{v}", SHAPES, rank=2, seed=v), "sql")
    registry.alias_set("sql", "prod", 1)
    servers, urls, lagging = LiveServers(), [], None
    for i in range(2):
        settings = ServerSettings.from_sources({"base": BASE, "resolve_ttl_s": TTL}, environ={})
        runtime = build_runtime(settings, tmp_path / "registry", tmp_path / f"cache{i}")
        if i == 1:
            resolver = runtime.models.resolver
            lagging = resolver._registry = LaggingRegistry(resolver._registry)
        urls.append(servers.start(runtime))
    yield registry, urls, lagging, tmp_path
    servers.close()
    registry.close()


def served(url: str, model: str) -> str:
    response = httpx.post(f"{url}/v1/completions", timeout=30,
                          json={"model": model, "prompt": "hi", "max_tokens": 1})
    assert response.status_code == 200, response.text
    return response.headers["x-loramux-adapter-ref"]


def both(urls: list[str], model: str) -> list[str]:
    return [served(url, model) for url in urls]


def test_replicas_serve_a_moved_alias_within_the_ttl(fleet, clock: Clock) -> None:
    registry, urls, _, _ = fleet
    assert both(urls, "sql:prod") == ["sql@1", "sql@1"]
    registry.alias_set("sql", "prod", 2)
    assert both(urls, "sql:prod") == ["sql@1", "sql@1"], "the TTL holds the answer"
    clock.past_ttl()
    assert both(urls, "sql:prod") == ["sql@2", "sql@2"]
    registry.alias_set("sql", "prod", 1)  # a rollback is a move like any other
    clock.past_ttl()
    assert both(urls, "sql:prod") == ["sql@1", "sql@1"]


def test_a_lagging_registry_never_takes_a_replica_back(fleet, clock: Clock) -> None:
    registry, urls, lagging, _ = fleet
    lagging.freeze(["sql:prod"])  # replica b's index stops here: prod → 1
    assert served(urls[1], "sql:prod") == "sql@1"
    registry.alias_set("sql", "prod", 2)
    lagging.frozen = False  # b catches up for a moment, and serves the move
    clock.past_ttl()
    assert both(urls, "sql:prod") == ["sql@2", "sql@2"]
    lagging.frozen = True  # then falls behind the move again
    assert lagging.resolve(AdapterRef.parse("sql:prod")).ref == "sql@1"
    for _ in range(3):  # several TTLs: b looks the alias up again each time
        clock.past_ttl()
        assert served(urls[1], "sql:prod") == "sql@2", "served an older version than before"
    assert served(urls[0], "sql:prod") == "sql@2"


def test_a_rollback_the_registry_logged_is_followed_even_when_lagging(fleet, clock) -> None:
    registry, urls, lagging, _ = fleet
    registry.alias_set("sql", "prod", 2)
    assert both(urls, "sql:prod") == ["sql@2", "sql@2"]
    registry.alias_set("sql", "prod", 1)  # rolled back, and logged
    lagging.freeze(["sql:prod"])  # b's view has the rollback and nothing after it
    clock.past_ttl()
    assert both(urls, "sql:prod") == ["sql@1", "sql@1"]


def test_the_latest_version_goes_back_only_when_deleted(fleet, clock: Clock) -> None:
    registry, urls, lagging, tmp = fleet
    lagging.freeze(["sql"])  # b's index stops before v3: latest is 2
    registry.push(write_adapter(tmp / "sql3", SHAPES, rank=2, seed=3), "sql")
    lagging.frozen = False
    assert both(urls, "sql") == ["sql@3", "sql@3"]
    lagging.frozen = True
    clock.past_ttl()
    assert served(urls[1], "sql") == "sql@3", "a lagging `latest` took the replica back"
    registry.delete("sql@3")
    lagging.frozen = False
    clock.past_ttl()
    assert both(urls, "sql") == ["sql@2", "sql@2"]
