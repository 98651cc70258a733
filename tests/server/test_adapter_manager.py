"""Adapter manager logic (single flight, LRU eviction, pins, failure memo, disk budget) against a
real local registry and a recording fake engine: the behaviours that need vLLM are in
test_api.py, the cache under concurrent pressure in test_cache_pressure.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import loramux.registry as reg
from loramux.server.adapter_cache import AdapterCache
from loramux.server.adapters import AdapterManager, AdapterManagerOptions
from loramux.server.engines.base import AdapterHandle, EngineInfo
from loramux.server.errors import AdapterTooLarge, AdapterUnavailable
from loramux.server.metrics import Metrics


class RecordingEngine:
    def __init__(self) -> None:
        self.info = EngineInfo("fake", "m", "none", 128, 2, 64, 1)
        self.loaded: dict[int, AdapterHandle] = {}
        self.load_calls: list[str] = []

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        self.load_calls.append(adapter.digest)
        await asyncio.sleep(0.05)  # a slow load, so concurrent requests overlap
        assert (adapter.path / "adapter_config.json").is_file()
        self.loaded[adapter.lora_id] = adapter

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        self.loaded.pop(adapter.lora_id)


def write_adapter(folder: Path, seed: int) -> Path:
    """A minimal valid LoRA adapter: config plus matching safetensors (no torch needed)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
        "base_model_name_or_path": "tiny", "task_type": "CAUSAL_LM"}))
    rng = np.random.default_rng(seed)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": rng.standard_normal((2, 8)).astype(np.float32),
               f"{prefix}.lora_B.weight": rng.standard_normal((8, 2)).astype(np.float32)},
              str(folder / "adapter_model.safetensors"))
    return folder


@pytest.fixture
def setup(tmp_path: Path):
    registry = reg.open(tmp_path / "registry")
    manifests = [registry.push(write_adapter(tmp_path / f"a{i}", i), f"a{i}") for i in range(4)]
    engine, metrics = RecordingEngine(), Metrics()

    def manager(registry=registry, **kw) -> AdapterManager:
        options = AdapterManagerOptions(cache_dir=tmp_path / "cache", **kw)
        return AdapterManager(engine, registry, metrics, options)

    yield manager, manifests, engine, registry
    registry.close()


def test_single_flight_and_stable_ids(setup) -> None:
    manager, manifests, engine, _ = setup
    m = manager()

    async def many():
        return await asyncio.gather(*(m.load(manifests[i % 2]) for i in range(20)))

    handles = asyncio.run(many())
    assert sorted(engine.load_calls) == sorted(x.digest for x in manifests[:2])
    assert {h.lora_id for h in handles} == {1, 2}
    assert all(h.digest[7:19] in h.name for h in handles)


def test_lru_eviction_respects_pins_and_leases(setup) -> None:
    manager, manifests, engine, _ = setup
    m = manager(max_resident=2)
    m.pin(manifests[0].digest)

    async def scenario():
        await m.load(manifests[0])  # pinned
        async with m.lease(manifests[1]):
            await m.load(manifests[2])  # 1 is busy and 0 pinned: nothing can go yet
            assert len(m.resident_digests()) == 3
        await m.load(manifests[3])  # now the idle LRU (1, then 2) go, the pin stays
        return m.resident_digests()

    resident = asyncio.run(scenario())
    assert manifests[0].digest in resident and manifests[3].digest in resident
    assert len(resident) == 2
    assert set(engine.loaded) == {m.lora_id(d) for d in resident}


class SpyRegistry:
    """The registry, counting blob opens: each fetch attempt opens the first file's blob once."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.opened: list[str] = []

    def open_blob(self, digest: str):
        self.opened.append(digest)
        return self.inner.open_blob(digest)

    def attempts(self, manifest) -> int:
        return self.opened.count(manifest.files[0].digest)


def test_failure_is_remembered_then_retried(setup, tmp_path: Path) -> None:
    """Inside the memo window a failed adapter is not fetched again; after it, it is."""
    manager, manifests, engine, registry = setup
    weights = manifests[1].file("adapter_model.safetensors")
    blob = tmp_path / "registry" / "blobs" / "sha256" / weights.sha256
    good = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(b"not what was pushed")
    spy = SpyRegistry(registry)
    ttl = 1.0
    m = manager(registry=spy, failure_ttl_s=ttl)

    async def scenario():
        errors = []
        for _ in range(3):
            with pytest.raises(AdapterUnavailable) as info:
                await m.load(manifests[1])
            errors.append(str(info.value))
        first_failure = time.monotonic()
        inside = spy.attempts(manifests[1])
        blob.write_bytes(good)  # repaired: only a new attempt can find out
        with pytest.raises(AdapterUnavailable):
            await m.load(manifests[1])
        assert time.monotonic() - first_failure < ttl, "machine too slow for the memo window"
        assert spy.attempts(manifests[1]) == inside
        await asyncio.sleep(ttl - (time.monotonic() - first_failure) + 0.1)
        handle = await m.load(manifests[1])
        return errors, inside, handle

    errors, inside, handle = asyncio.run(scenario())
    assert inside == 1, "a remembered failure was fetched again inside its window"
    assert errors[0] == errors[1] == errors[2] and "could not be fetched" in errors[0]
    assert spy.attempts(manifests[1]) == 2  # one retry once the window passed
    assert handle.digest == manifests[1].digest
    assert engine.load_calls == [manifests[1].digest]
    assert asyncio.run(m.load(manifests[2])).lora_id == 2  # others are unaffected


def test_adapter_larger_than_cache_is_refused_not_memoed(setup) -> None:
    manager, manifests, engine, registry = setup
    size = manifests[0].size
    spy = SpyRegistry(registry)
    m = manager(registry=spy, max_cache_bytes=size - 1)
    with pytest.raises(AdapterTooLarge) as info:
        asyncio.run(m.load(manifests[0]))
    error = info.value
    assert (error.status, error.code, error.param) == (400, "adapter_too_large", "model")
    assert f"{size} bytes" in error.message and f"{size - 1} bytes" in error.message
    assert spy.opened == [] and engine.load_calls == []
    m.options.max_cache_bytes = size  # nothing remembered: it loads as soon as it fits
    assert asyncio.run(m.load(manifests[0])).digest == manifests[0].digest


def test_budget_counts_folders_left_by_earlier_runs(setup, tmp_path: Path) -> None:
    _, manifests, _, registry = setup
    size = manifests[0].size
    earlier = AdapterCache(tmp_path / "cache")
    for age, manifest in zip((300, 200, 100), manifests[:3], strict=True):
        path = earlier.fetch(registry, manifest)
        os.utime(path, (time.time() - age,) * 2)  # last used `age` seconds ago
    metrics = Metrics()
    m = AdapterManager(RecordingEngine(), registry, metrics,
                       AdapterManagerOptions(cache_dir=tmp_path / "cache",
                                             max_cache_bytes=int(size * 2.5)))
    on_disk = {e.digest for e in earlier.entries()}
    assert on_disk == {manifests[1].digest, manifests[2].digest}  # the oldest went at start
    assert metrics.cache_bytes._value.get() == 2 * size
    asyncio.run(m.load(manifests[3]))  # a new one pushes out the next oldest
    assert {e.digest for e in earlier.entries()} == {manifests[2].digest, manifests[3].digest}


def test_budget_overshoots_while_in_use_then_trims(setup, tmp_path: Path) -> None:
    """Every adapter in use and the disk full: requests still succeed, the cache trims after."""
    manager, manifests, engine, _ = setup
    size = manifests[0].size
    m = manager(max_cache_bytes=int(size * 1.5))
    cache = AdapterCache(tmp_path / "cache")

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            handles = [await stack.enter_async_context(m.lease(x)) for x in manifests[:3]]
            assert all((h.path / "adapter_config.json").is_file() for h in handles)
            assert cache.size_bytes() == 3 * size  # over budget: all three are in use
        for _ in range(100):  # the trim runs as a task once the leases end
            if cache.size_bytes() <= size * 1.5:
                break
            await asyncio.sleep(0.02)

    asyncio.run(scenario())
    assert [e.digest for e in cache.entries()] == [manifests[2].digest]
    assert m.resident_digests() == [manifests[2].digest]  # idle ones left the engine for it
    assert set(engine.loaded) == {m.lora_id(manifests[2].digest)}


def test_disk_cache_bounded_by_bytes(setup, tmp_path: Path) -> None:
    manager, manifests, _, _ = setup
    size = manifests[0].size
    m = manager(max_resident=1, max_cache_bytes=int(size * 2.5))

    async def all_four():
        for manifest in manifests:
            await m.load(manifest)

    asyncio.run(all_four())
    cached = list((tmp_path / "cache").rglob("adapter_config.json"))
    assert 1 <= len(cached) <= 2, cached
    assert m.is_resident(manifests[3].digest)


def test_fetch_from_remote_registry_over_http(tmp_path: Path) -> None:
    """Adapters come from a registry server too: downloaded once, digest-verified, cached."""
    from loramux.support.launch import RegistryProcess

    tokens = tmp_path / "tokens"
    tokens.write_text("tok-w-secret-token:write\n")
    server = RegistryProcess(tmp_path / "remote", tmp_path / "registry.log",
                             args=["--tokens", str(tokens)], env={"LORAMUX_TOKEN": ""})
    try:
        url = server.start()
        remote = reg.open(url, token="tok-w-secret-token")
        manifest = remote.push(write_adapter(tmp_path / "r0", 42), "remote-a")
        engine = RecordingEngine()
        manager = AdapterManager(engine, remote, Metrics(),
                                 AdapterManagerOptions(cache_dir=tmp_path / "cache"))
        handle = asyncio.run(manager.load(remote.resolve("remote-a@1")))
        assert handle.digest == manifest.digest
        pulled = (handle.path / "adapter_model.safetensors").read_bytes()
        assert pulled == (tmp_path / "r0" / "adapter_model.safetensors").read_bytes()
        remote.close()
    finally:
        server.stop()


def test_disk_trim_survives_an_eviction_during_its_own_unload(setup) -> None:
    """The trim unloads idle adapters one by one, awaiting each; another request may evict the
    next candidate meanwhile (seen in CI as a KeyError answered 500)."""
    manager, manifests, engine, _ = setup
    m = manager(max_cache_bytes=10 * manifests[0].size)

    async def scenario() -> None:
        for manifest in manifests[:3]:
            await m.load(manifest)
        first, second = list(m.resident_digests())[:2]
        m.options.max_cache_bytes = 0  # now every idle adapter must go
        started, release = asyncio.Event(), asyncio.Event()
        unload = engine.unload_adapter

        async def slow_unload(adapter: AdapterHandle) -> None:
            if adapter.digest == first:
                started.set()
                await release.wait()
            await unload(adapter)

        engine.unload_adapter = slow_unload
        trim = asyncio.create_task(m._trim_disk())
        await started.wait()
        assert await m.unload(second)  # another request evicts the next candidate meanwhile
        release.set()
        await trim
        assert m.resident_digests() == []

    asyncio.run(scenario())


def test_nan_adapter_checked_during_its_load_is_unloaded_and_refused(setup, tmp_path: Path) -> None:
    """The finite-weights check reads the files while the engine loads them (a cold adapter's
    first token waits for both, not one after the other); a NaN adapter is unloaded again and
    refused, and never counts as resident."""
    manager, _, engine, registry = setup
    folder = write_adapter(tmp_path / "nan", 9)
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    next(iter(tensors.values()))[0, 0] = np.nan
    save_file(tensors, str(weights))
    poisoned = registry.push(folder, "nan")
    m = manager()
    with pytest.raises(AdapterUnavailable, match="not finite"):
        asyncio.run(m.load(poisoned))
    assert engine.load_calls == [poisoned.digest]  # loaded while checked ...
    assert engine.loaded == {}  # ... and unloaded again
    assert not m.is_resident(poisoned.digest)
