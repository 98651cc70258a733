"""The adapter cache under pressure: three times more adapters than it holds, requested in random
order and concurrently, and every request succeeds.

The fast test runs two managers on one cache folder (as two server processes would share it:
each has its own `AdapterCache`, so its own lock descriptors) with a fake engine that checks,
at every step of a load and of a request, that the adapter's folder is still there. The slow test
does the same through a real server with a small `--max-cache-bytes`, the vLLM engine and the
`openai` client.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

import loramux.registry as reg
from loramux.server.adapter_cache import AdapterCache
from loramux.server.adapters import AdapterManager, AdapterManagerOptions
from loramux.server.engines.base import AdapterHandle, EngineInfo
from loramux.server.metrics import Metrics
from loramux.support.adapters import llama_shapes, write_adapter

ADAPTERS, HOLDS = 12, 4  # the cache holds HOLDS adapters: a third of them


def assert_whole(handle: AdapterHandle) -> None:
    """The folder is there and complete (vLLM may re-read it at any time while it is in use)."""
    files = {p.name: p.stat().st_size for p in handle.path.iterdir()}
    assert files.keys() == {"adapter_config.json", "adapter_model.safetensors"}, files
    assert all(files.values())


class CheckingEngine:
    """Loads take a while and yield twice; the folder must stay whole throughout."""

    def __init__(self) -> None:
        self.info = EngineInfo("fake", "m", "none", 128, 2, 64, 1)
        self.loaded: dict[int, AdapterHandle] = {}
        self.loads = 0

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        assert_whole(adapter)
        await asyncio.sleep(random.uniform(0, 0.01))
        assert_whole(adapter)
        (adapter.path / "adapter_model.safetensors").read_bytes()
        self.loaded[adapter.lora_id] = adapter
        self.loads += 1

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        self.loaded.pop(adapter.lora_id)


SMALL = {f"model.layers.{i}.self_attn.{m}": (32, 32)
         for i in range(2) for m in ("q_proj", "v_proj")}


@pytest.mark.timeout(120)
def test_two_managers_one_folder_three_times_oversubscribed(tmp_path: Path) -> None:
    registry = reg.open(tmp_path / "registry")
    manifests = [registry.push(write_adapter(tmp_path / f"a{i}", SMALL, rank=4, seed=i), f"a{i}")
                 for i in range(ADAPTERS)]
    size = max(m.size for m in manifests)
    budget = HOLDS * size
    engines = [CheckingEngine(), CheckingEngine()]
    metrics = [Metrics(), Metrics()]
    managers = [AdapterManager(e, registry, m, AdapterManagerOptions(
        cache_dir=tmp_path / "cache", max_resident=3, max_cache_bytes=budget))
        for e, m in zip(engines, metrics, strict=True)]
    rng = random.Random(7)
    plan = [(rng.randrange(2), rng.choice(manifests)) for _ in range(8 * ADAPTERS)]
    served: list[str] = []

    async def request(start: asyncio.Event, gate: asyncio.Semaphore, which: int, manifest):
        await start.wait()
        async with gate, managers[which].lease(manifest) as handle:
            assert_whole(handle)
            await asyncio.sleep(rng.uniform(0, 0.02))  # "generating": others run meanwhile
            assert_whole(handle)
            served.append(handle.digest)

    async def run_all() -> None:
        start, gate = asyncio.Event(), asyncio.Semaphore(HOLDS + 2)  # sometimes over, mostly not
        tasks = [asyncio.create_task(request(start, gate, w, x)) for w, x in plan]
        await asyncio.sleep(0)  # every task is waiting on the start line
        start.set()
        await asyncio.gather(*tasks)
        cache = AdapterCache(tmp_path / "cache")
        for _ in range(200):  # trims that leases ending scheduled
            if cache.size_bytes() <= budget:
                break
            await asyncio.sleep(0.02)

    asyncio.run(run_all())
    registry.close()
    assert sorted(served) == sorted(x.digest for _, x in plan)  # every request succeeded
    assert AdapterCache(tmp_path / "cache").size_bytes() <= budget
    assert sum(e.loads for e in engines) > ADAPTERS  # adapters really went and came back
    disk_evictions = sum(m.evictions.labels("disk")._value.get() for m in metrics)
    assert disk_evictions >= ADAPTERS - HOLDS
    assert all(m.load_failures.labels(lbl)._value.get() == 0
               for m in metrics for lbl in {x.name for x in manifests})


@pytest.mark.slow
def test_real_server_small_cache_three_times_oversubscribed(
        demo_base: Path, tmp_path: Path) -> None:
    """Through `loramux serve` (vLLM engine): a cache holding 4 adapters, 12 in use."""
    from openai import AsyncOpenAI, BadRequestError

    from loramux.support.launch import ServerProcess

    registry = reg.open(tmp_path / "registry")
    shapes = llama_shapes(demo_base)
    folders = [write_adapter(tmp_path / "adapters" / f"p{i}", shapes, rank=4, seed=100 + i)
               for i in range(ADAPTERS)]
    manifests = [registry.push(f, f"p{i}", base_model=demo_base) for i, f in enumerate(folders)]
    big = registry.push(write_adapter(tmp_path / "adapters" / "big", shapes, rank=64, seed=99),
                        "big", base_model=demo_base)
    registry.close()
    budget = HOLDS * max(m.size for m in manifests)
    assert big.size > budget
    cache_dir = tmp_path / "cache"
    process = ServerProcess(
        ["--base", str(demo_base), "--registry", str(tmp_path / "registry"),
         "--cache-dir", str(cache_dir), "--max-cache-bytes", str(budget),
         "--max-model-len", "256", "--max-loras", "2", "--max-cpu-loras", "3"],
        log=tmp_path / "server.log")
    url = process.start()
    try:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
        rng = random.Random(11)
        order = [m for m in manifests for _ in range(3)]
        rng.shuffle(order)

        async def ask(gate: asyncio.Semaphore, manifest) -> str:
            async with gate:
                out = await client.completions.create(model=manifest.ref, prompt="hello",
                                                      max_tokens=3, temperature=0)
                return out.choices[0].text

        async def run_all() -> list[str]:
            gate = asyncio.Semaphore(6)
            texts = await asyncio.gather(*(ask(gate, m) for m in order))
            with pytest.raises(BadRequestError) as info:
                await client.completions.create(model="big", prompt="hi", max_tokens=1)
            await client.close()
            assert info.value.code == "adapter_too_large", info.value
            assert f"{big.size} bytes" in str(info.value) and f"{budget} bytes" in str(info.value)
            return texts

        texts = asyncio.run(run_all())
        assert len(texts) == len(order)  # every request succeeded (any error would raise)
        import httpx

        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        disk = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith('loramux_adapter_evictions_total{tier="disk"}'))
        assert disk >= ADAPTERS - HOLDS
        assert AdapterCache(cache_dir).size_bytes() <= budget
    finally:
        process.stop()
