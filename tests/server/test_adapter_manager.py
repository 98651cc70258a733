"""Adapter manager logic (single flight, LRU eviction, pins, failure memo) against a real local
registry and a recording fake engine: the behaviours that need vLLM are in test_api.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import loramux.registry as reg
from loramux.server.adapters import AdapterManager, AdapterManagerOptions
from loramux.server.engines.base import AdapterHandle, EngineInfo
from loramux.server.errors import AdapterUnavailable
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

    def manager(**kw) -> AdapterManager:
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


def test_failure_is_remembered_not_retried(setup, tmp_path: Path) -> None:
    manager, manifests, engine, _ = setup
    weights = manifests[1].file("adapter_model.safetensors")
    blob = tmp_path / "registry" / "blobs" / "sha256" / weights.sha256
    blob.chmod(0o644)
    blob.write_bytes(b"not what was pushed")
    m = manager()

    async def twice():
        errors = []
        for _ in range(2):
            with pytest.raises(AdapterUnavailable) as info:
                await m.load(manifests[1])
            errors.append(str(info.value))
        return errors

    errors = asyncio.run(twice())
    assert errors[0] == errors[1] and "could not be fetched" in errors[0]
    assert engine.load_calls == []
    assert asyncio.run(m.load(manifests[2])).lora_id == 1  # others are unaffected


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
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-w:write\n")
    proc = subprocess.Popen([sys.executable, "-m", "loramux.cli", "registry", "serve", "--root",
                             str(tmp_path / "remote"), "--port", str(port), "--tokens",
                             str(tokens)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=os.environ | {"LORAMUX_TOKEN": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "registry did not start"
            time.sleep(0.2)
        remote = reg.open(url, token="tok-w")
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
        proc.terminate()
        proc.wait(10)
