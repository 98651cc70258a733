"""The resolver's cache against a real local registry and a fake clock: an alias moved in the
registry shows up after the TTL and not before (so a hot alias does not hit the registry per
request), a not-found answer expires too (a name pushed later becomes servable), and pinned
references live longer."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import loramux.registry as reg
from loramux.registry.canary import Split
from loramux.server import resolver as resolver_module
from loramux.server.errors import ModelNotFound, RegistryUnavailable
from loramux.server.resolver import PINNED_TTL_S, Resolver
from loramux.support.adapters import write_adapter

TTL = 2.0


def tiny_adapter(folder: Path, seed: int) -> Path:
    return write_adapter(folder, {"model.layers.0.self_attn.q_proj": (8, 8)}, rank=2, seed=seed)


class SpyRegistry:
    """The real registry, with every lookup counted (the resolver's cache must save them)."""

    def __init__(self, registry) -> None:
        self.registry = registry
        self.lookups: list[str] = []
        self.threads: list[str] = []  # where each lookup ran
        self.fail: Exception | None = None
        self.gate = threading.Event()  # lookups wait here until the test opens it
        self.gate.set()

    def resolve(self, ref):
        self.lookups.append(str(ref))
        self.threads.append(threading.current_thread().name)
        self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.registry.resolve(ref)

    def resolve_split(self, ref):  # an alias's lookup (no canary here): counted as one
        return Split(stable=self.resolve(ref))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Replaces the resolver's clock; advance it with `clock.now += seconds`."""
    fake = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(resolver_module, "time", SimpleNamespace(monotonic=lambda: fake.now))
    return fake


@pytest.fixture
def registry(tmp_path: Path):
    store = reg.open(tmp_path / "registry")
    for seed in (1, 2):
        store.push(tiny_adapter(tmp_path / f"a{seed}", seed), "sql")
    store.alias_set("sql", "prod", 1)
    yield store
    store.close()


def resolve(resolver: Resolver, model: str):
    return asyncio.run(resolver.resolve(model))


def test_alias_is_re_resolved_after_its_ttl_and_not_before(registry, clock) -> None:
    spy = SpyRegistry(registry)
    resolver = Resolver(spy, "base", ttl_s=TTL)
    assert resolve(resolver, "sql:prod").version == 1
    registry.alias_set("sql", "prod", 2)

    clock.now += TTL - 0.1
    assert resolve(resolver, "sql:prod").version == 1, "re-resolved before its TTL"
    assert resolve(resolver, "sql").version == 2  # another reference has its own entry
    assert spy.lookups == ["sql:prod", "sql"]

    clock.now += 0.2
    assert resolve(resolver, "sql:prod").version == 2, "alias move not seen after the TTL"
    assert spy.lookups == ["sql:prod", "sql", "sql:prod"]


def test_pinned_reference_lives_longer(registry, clock) -> None:
    spy = SpyRegistry(registry)
    resolver = Resolver(spy, "base", ttl_s=TTL)
    assert resolve(resolver, "sql@1").version == 1
    clock.now += PINNED_TTL_S - 1
    resolve(resolver, "sql@1")
    assert len(spy.lookups) == 1
    clock.now += 2
    resolve(resolver, "sql@1")
    assert len(spy.lookups) == 2


def test_not_found_is_cached_then_expires(registry, clock, tmp_path: Path) -> None:
    spy = SpyRegistry(registry)
    resolver = Resolver(spy, "base", ttl_s=TTL)
    for _ in range(3):
        with pytest.raises(ModelNotFound, match="neither the served base `base`"):
            resolve(resolver, "late")
    assert spy.lookups == ["late"], "a miss must be remembered within the TTL"

    registry.push(tiny_adapter(tmp_path / "late", 3), "late")
    clock.now += TTL - 0.1
    with pytest.raises(ModelNotFound):
        resolve(resolver, "late")
    clock.now += 0.2
    assert resolve(resolver, "late").name == "late", "a not-found answer must expire"
    assert spy.lookups == ["late", "late"]


def test_registry_failure_expires(registry, clock) -> None:
    from loramux.registry.errors import RegistryError

    spy = SpyRegistry(registry)
    spy.fail = RegistryError("connection refused")
    resolver = Resolver(spy, "base", ttl_s=TTL)
    with pytest.raises(RegistryUnavailable, match="cannot answer") as info:  # no cause text
        resolve(resolver, "sql")
    assert info.value.status == 503
    spy.fail = None
    with pytest.raises(RegistryUnavailable):
        resolve(resolver, "sql")
    clock.now += TTL + 0.1
    assert resolve(resolver, "sql").version == 2
    assert len(spy.lookups) == 2


def test_invalid_reference_is_not_found_and_base_is_not_looked_up(registry, clock) -> None:
    spy = SpyRegistry(registry)
    resolver = Resolver(spy, "demo-base", ttl_s=TTL)
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve(resolver, "../../etc/passwd")
    assert resolver.is_base("demo-base") and not resolver.is_base("sql")
    assert spy.lookups == []  # refused at parse time, never sent to the registry


def test_expired_alias_is_looked_up_once_for_concurrent_requests(registry, clock) -> None:
    """Item 10: N requests that find the alias expired share one registry lookup, and a waiter
    that goes away does not take the lookup from the others."""
    spy = SpyRegistry(registry)
    resolver = Resolver(spy, "base", ttl_s=TTL)
    assert resolve(resolver, "sql:prod").version == 1
    registry.alias_set("sql", "prod", 2)
    clock.now += TTL + 0.1
    spy.gate.clear()

    async def burst():
        tasks = [asyncio.create_task(resolver.resolve("sql:prod")) for _ in range(20)]
        await asyncio.sleep(0)  # each task runs to its first await: all have asked by now
        tasks[0].cancel()  # the first asker (the one that started the lookup) leaves
        spy.gate.set()
        return await asyncio.gather(*tasks[1:])

    manifests = asyncio.run(burst())
    assert [m.version for m in manifests] == [2] * 19
    assert spy.lookups == ["sql:prod", "sql:prod"], "one registry lookup per expiry"
    assert resolve(resolver, "sql:prod").version == 2 and len(spy.lookups) == 2


def test_lookups_run_on_the_registry_pool_not_the_default_one(registry) -> None:
    """A registry that hangs must not take the default pool's threads, which tokenization and
    every other `to_thread` share (security round 2, item 3)."""
    spy = SpyRegistry(registry)
    resolver = Resolver(spy, "base", ttl_s=TTL)
    assert resolve(resolver, "sql@2").version == 2
    assert spy.threads and all(t.startswith("loramux-registry") for t in spy.threads), spy.threads
