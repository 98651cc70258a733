"""Adapters by digest: local cache folder, stable engine LoRA id, single-flight load, eviction.

The digest is the identity: two names for the same bytes share one LoRA id, and a new version
always gets a new id, so the engine can never serve a previous version's weights under a reused
id (vLLM has done exactly that when an adapter was reloaded under the same name).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from loramux.registry.cache import AdapterCache
from loramux.registry.errors import RegistryError
from loramux.registry.manifest import Manifest
from loramux.server.engines.base import AdapterHandle, Engine
from loramux.server.errors import AdapterUnavailable, ServerError
from loramux.server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    handle: AdapterHandle
    label: str
    size: int
    in_use: int = 0
    pinned: bool = False


@dataclass
class _Failure:
    error: AdapterUnavailable
    until: float


@dataclass
class AdapterManagerOptions:
    cache_dir: Path
    max_resident: int = 64  # the engine's CPU-side LoRA slots (vLLM max_cpu_loras)
    max_cache_bytes: int = 8 * 2**30
    failure_ttl_s: float = 60.0
    pinned: set[str] = field(default_factory=set)  # digests never evicted


class AdapterManager:
    def __init__(self, engine: Engine, registry, metrics: Metrics,
                 options: AdapterManagerOptions) -> None:
        self._engine = engine
        self._registry = registry
        self._metrics = metrics
        self.options = options
        self._cache = AdapterCache(options.cache_dir)
        self._ids: dict[str, int] = {}
        self._resident: OrderedDict[str, _Slot] = OrderedDict()  # LRU order, oldest first
        self._locks: dict[str, asyncio.Lock] = {}
        self._failures: dict[str, _Failure] = {}
        self._disk: OrderedDict[str, int] = OrderedDict()  # digest -> bytes, LRU order

    def lora_id(self, digest: str) -> int:
        """A stable small int per digest for this process (never hash(): it is salted)."""
        if digest not in self._ids:
            self._ids[digest] = len(self._ids) + 1
        return self._ids[digest]

    def is_resident(self, digest: str) -> bool:
        return digest in self._resident

    def resident_digests(self) -> list[str]:
        return list(self._resident)

    def pin(self, digest: str) -> None:
        self.options.pinned.add(digest)
        if digest in self._resident:
            self._resident[digest].pinned = True

    @asynccontextmanager
    async def lease(self, manifest: Manifest) -> AsyncIterator[AdapterHandle]:
        """The adapter loaded and held for one request; never evicted while a request uses it."""
        slot = await self._acquire(manifest)
        slot.in_use += 1
        try:
            yield slot.handle
        finally:
            slot.in_use -= 1

    async def load(self, manifest: Manifest) -> AdapterHandle:
        return (await self._acquire(manifest)).handle

    async def _acquire(self, manifest: Manifest) -> _Slot:
        digest = manifest.digest
        slot = self._resident.get(digest)
        if slot is not None:
            self._resident.move_to_end(digest)
            self._metrics.cache_hits.inc()
            return slot
        failure = self._failures.get(digest)
        if failure is not None and failure.until > time.monotonic():
            raise failure.error
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:  # one fetch and one load per digest, however many requests wait
            slot = self._resident.get(digest)
            if slot is not None:
                self._metrics.cache_hits.inc()
                return slot
            failure = self._failures.get(digest)
            if failure is not None and failure.until > time.monotonic():
                raise failure.error
            self._metrics.cache_misses.inc()
            try:
                slot = await self._fetch_and_load(manifest)
            except ServerError as exc:
                self._remember_failure(manifest, exc)
                raise self._failures[digest].error from exc
            self._failures.pop(digest, None)
            return slot

    def _remember_failure(self, manifest: Manifest, exc: ServerError) -> None:
        label = self._metrics.label(manifest.name)
        self._metrics.load_failures.labels(label).inc()
        error = exc if isinstance(exc, AdapterUnavailable) else AdapterUnavailable(exc.message)
        self._failures[manifest.digest] = _Failure(
            error, time.monotonic() + self.options.failure_ttl_s)
        log.error("adapter %s (%s) is unavailable for %.0fs: %s", manifest.ref,
                  manifest.digest[:19], self.options.failure_ttl_s, error.message)

    async def _fetch_and_load(self, manifest: Manifest) -> _Slot:
        label = self._metrics.label(manifest.name)
        started = time.perf_counter()
        try:
            path = await asyncio.to_thread(self._cache.fetch, self._registry, manifest)
        except (RegistryError, OSError) as exc:
            raise AdapterUnavailable(
                f"adapter {manifest.ref} could not be fetched: {exc}", param="model") from exc
        self._metrics.fetches.labels(label).inc()
        self._metrics.fetch_seconds.labels(label).observe(time.perf_counter() - started)
        self._note_disk(manifest.digest, manifest.size)

        handle = AdapterHandle(lora_id=self.lora_id(manifest.digest),
                               name=f"{manifest.name}@{manifest.digest[7:19]}", path=Path(path),
                               digest=manifest.digest)
        await self._make_room()
        started = time.perf_counter()
        try:
            await self._engine.load_adapter(handle)
        except ServerError:
            raise
        except Exception as exc:  # the engine's own load errors: bad tensors, shapes, modules
            raise AdapterUnavailable(
                f"adapter {manifest.ref} could not be loaded by the engine: "
                f"{type(exc).__name__}: {exc}", param="model") from exc
        self._metrics.loads.labels(label).inc()
        self._metrics.load_seconds.labels(label).observe(time.perf_counter() - started)
        slot = _Slot(handle, label, manifest.size, pinned=manifest.digest in self.options.pinned)
        self._resident[manifest.digest] = slot
        self._metrics.resident.set(len(self._resident))
        log.info("loaded adapter %s as LoRA id %d in %.3fs", manifest.ref, handle.lora_id,
                 time.perf_counter() - started)
        return slot

    async def _make_room(self) -> None:
        """Unload least-recently-used idle adapters until one more fits in the engine."""
        while len(self._resident) >= self.options.max_resident:
            victim = next((d for d, s in self._resident.items()
                           if s.in_use == 0 and not s.pinned), None)
            if victim is None:
                return  # everything is busy or pinned: let the engine page as it can
            await self.unload(victim)

    async def unload(self, digest: str) -> bool:
        slot = self._resident.get(digest)
        if slot is None or slot.in_use:
            return False
        del self._resident[digest]
        await self._engine.unload_adapter(slot.handle)
        self._metrics.evictions.labels("engine").inc()
        self._metrics.resident.set(len(self._resident))
        return True

    def _note_disk(self, digest: str, size: int) -> None:
        self._disk[digest] = size
        self._disk.move_to_end(digest)
        total = sum(self._disk.values())
        for victim in list(self._disk):
            if total <= self.options.max_cache_bytes:
                break
            if victim in self._resident or victim in self.options.pinned:
                continue
            total -= self._disk.pop(victim)
            self._cache.remove(victim)
            self._metrics.evictions.labels("disk").inc()
        self._metrics.cache_bytes.set(total)

    def clear_disk_cache(self) -> None:
        shutil.rmtree(self.options.cache_dir, ignore_errors=True)
