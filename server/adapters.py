"""Adapters by digest: local cache folder, stable engine LoRA id, single-flight load, eviction.

The digest is the identity: two names for the same bytes share one LoRA id, and a new version
always gets a new id, so the engine can never serve a previous version's weights under a reused
id (vLLM has done exactly that when an adapter was reloaded under the same name).

Two tiers, each bounded. The engine holds at most ``max_resident`` adapters; the disk cache at
most ``max_cache_bytes``, counted from what is really on disk (earlier runs and other processes
sharing the folder included). An adapter's folder is *held* in the cache (see
`adapter_cache.py`) from before its fetch until it leaves the engine, so no thread or
process deletes it while it is fetched, loaded or used: vLLM may re-read it from disk whenever
its own CPU cache drops it. When the disk is over budget, idle adapters leave the engine so
that their folders can go; if everything left is in use, the cache overshoots for a while and
trims again as soon as a request lets go of its adapter. Requests never fail for lack of room,
only an adapter larger than the whole budget is refused (`AdapterTooLarge`).

Failures are told apart by whose they are. The adapter's own (corrupt or missing blobs, bytes
the engine cannot load, a tensor the load-time checks cannot read: any exception of the load
but the server's 503s) are remembered for `failure_ttl_s`, so a bad adapter costs one attempt
per TTL; whatever the failed load left in the engine is unloaded again, and the engine's own
words (which name local paths) go to the log under an error id, not to the client. The
server's conditions (registry unreachable, cache disk full, engine dead) are 503s that are never
remembered: the first request after the outage ends fetches again. A folder already in the cache
is checked against the manifest's digests before it is loaded, since it may have been damaged on
disk since it was written; a damaged one is moved aside and fetched anew.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from loramux.registry.errors import REGISTRY_FAILURES, IntegrityError, Invalid, NotFound
from loramux.registry.manifest import Manifest
from loramux.server.adapter_cache import DISK_FULL, AdapterCache, TrimResult
from loramux.server.adapter_files import UnloadableTensor, nonfinite_tensors
from loramux.server.engines.base import AdapterHandle, Engine
from loramux.server.errors import (
    AdapterTooLarge,
    AdapterUnavailable,
    CacheFull,
    ServerError,
    ServiceUnavailable,
    logged,
    registry_failure,
)
from loramux.server.metrics import Metrics
from loramux.server.registry_io import registry_io

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
    failure_ttl_s: float = 60.0  # how long a failed fetch/load is answered from memory
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
        self._trim_lock = asyncio.Lock()
        self._over_budget = False
        self._tasks: set[asyncio.Task] = set()
        metrics.leases.set_function(lambda: sum(s.in_use for s in self._resident.values()))
        swept = self._cache.sweep()
        before = self._cache.size_bytes()
        self._note_trim(self._cache.trim(options.max_cache_bytes, options.pinned))
        log.info("adapter cache %s: %d bytes on disk at start (%d partial folders swept), "
                 "budget %d bytes", self._cache.root, before, swept, options.max_cache_bytes)

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
        try:
            yield slot.handle
        finally:
            self._let_go(slot)

    async def load(self, manifest: Manifest) -> AdapterHandle:
        slot = await self._acquire(manifest)
        self._let_go(slot)
        return slot.handle

    def _let_go(self, slot: _Slot) -> None:
        slot.in_use -= 1
        if slot.in_use == 0 and self._over_budget:  # this adapter may be what kept disk full
            task = asyncio.get_running_loop().create_task(self._trim_quietly())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _acquire(self, manifest: Manifest) -> _Slot:
        """The adapter's slot with one use taken (the caller gives it back with `_let_go`)."""
        digest = manifest.digest
        slot = self._resident.get(digest)
        if slot is not None:
            self._resident.move_to_end(digest)
            self._metrics.cache_hits.inc()
            slot.in_use += 1
            return slot
        if manifest.size > self.options.max_cache_bytes:  # no amount of eviction helps
            raise AdapterTooLarge(
                f"adapter {manifest.ref} is {manifest.size} bytes, more than this server's "
                f"whole adapter cache ({self.options.max_cache_bytes} bytes, "
                f"--max-cache-bytes)", param="model")
        failure = self._failures.get(digest)
        if failure is not None and failure.until > time.monotonic():
            raise failure.error
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:  # one fetch and one load per digest, however many requests wait
            slot = self._resident.get(digest)
            if slot is not None:
                self._metrics.cache_hits.inc()
                slot.in_use += 1
                return slot
            failure = self._failures.get(digest)
            if failure is not None and failure.until > time.monotonic():
                raise failure.error
            self._metrics.cache_misses.inc()
            try:
                slot = await self._fetch_and_load(manifest)
            except ServiceUnavailable:
                raise  # the server's condition, not the adapter's: nothing to remember (503)
            except ServerError as exc:
                self._remember_failure(manifest, exc)
                raise self._failures[digest].error from exc
            self._failures.pop(digest, None)
        try:
            await self._trim_quietly()  # a new folder on disk: keep the budget
        except BaseException:  # cancelled meanwhile: give the use back, then go
            self._let_go(slot)
            raise
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
        """Fetch and load under a cache hold, which the slot keeps until it is unloaded."""
        try:
            await asyncio.to_thread(self._cache.hold, manifest.digest)
        except OSError as exc:
            raise fetch_failure(manifest, exc) from exc
        try:
            return await self._fetch_and_load_held(manifest)
        except BaseException:
            self._cache.release(manifest.digest)
            raise

    async def _fetch_and_load_held(self, manifest: Manifest) -> _Slot:
        label = self._metrics.label(manifest.name)
        started = time.perf_counter()
        try:
            path = await registry_io(self._fetch_verified, manifest)
        except (*REGISTRY_FAILURES, OSError) as exc:
            raise fetch_failure(manifest, exc) from exc
        self._metrics.fetches.labels(label).inc()
        self._metrics.fetch_seconds.labels(label).observe(time.perf_counter() - started)

        handle = AdapterHandle(lora_id=self.lora_id(manifest.digest),
                               name=f"{manifest.name}@{manifest.digest[7:19]}", path=Path(path),
                               digest=manifest.digest)
        # The finite-weights check reads the files while the engine loads them (a cold
        # adapter's first token waits for both): no request can use the adapter before this
        # returns, so one with NaN weights is unloaded again before it reaches any batch.
        check = asyncio.ensure_future(asyncio.to_thread(nonfinite_tensors, Path(path)))
        try:
            await self._make_room()
        except BaseException:
            _abandon(check)
            raise
        started = time.perf_counter()
        try:
            await self._engine.load_adapter(handle)
        except BaseException as exc:
            await self._undo_load(handle, manifest)  # a slot or a partial load the engine took
            failure = await _load_failure(exc, check, manifest)
            if failure is exc:
                raise
            raise failure from exc
        try:
            refused = await _refusal(check, manifest)
        except BaseException:  # cancelled while checking: the engine must not keep it
            await self._undo_load(handle, manifest)
            raise
        if refused is not None:
            await self._undo_load(handle, manifest)
            raise refused
        self._metrics.loads.labels(label).inc()
        self._metrics.load_seconds.labels(label).observe(time.perf_counter() - started)
        slot = _Slot(handle, label, manifest.size, in_use=1,
                     pinned=manifest.digest in self.options.pinned)
        self._resident[manifest.digest] = slot
        self._metrics.resident.set(len(self._resident))
        log.info("loaded adapter %s as LoRA id %d in %.3fs", manifest.ref, handle.lora_id,
                 time.perf_counter() - started)
        return slot

    async def _undo_load(self, handle: AdapterHandle, manifest: Manifest) -> None:
        """Drop whatever a failed or refused load left in the engine; the request still gets
        the load's own error when this fails too (the LoRA id is never given to another)."""
        try:
            await self._engine.unload_adapter(handle)
        except Exception:
            log.exception("could not unload refused adapter %s", manifest.ref)

    def _fetch_verified(self, manifest: Manifest) -> Path:
        """The adapter's cache folder; one that was there before this fetch is checked against
        the manifest first (a fresh download was verified as it was written)."""
        path, damage = self._cache.fetch_verified(self._registry, manifest)
        if damage is not None:
            self._metrics.cache_damaged.inc()
        return path

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
        try:
            await self._engine.unload_adapter(slot.handle)
        finally:
            self._cache.release(digest)  # its folder may go now
        self._metrics.evictions.labels("engine").inc()
        self._metrics.resident.set(len(self._resident))
        return True

    async def _trim_quietly(self) -> None:
        """`_trim_disk`, logging a disk error instead of failing the request that ran it."""
        try:
            await self._trim_disk()
        except OSError as exc:
            log.warning("could not trim the adapter cache %s: %s", self._cache.root, exc)

    async def _trim_disk(self) -> None:
        """Bring the disk cache within budget: LRU folders first, then idle engine adapters."""
        budget = self.options.max_cache_bytes
        async with self._trim_lock:
            result = await asyncio.to_thread(self._cache.trim, budget, self.options.pinned)
            excess = result.total_bytes - budget
            if excess > 0:
                held = set(result.held)
                for digest in [d for d, s in self._resident.items()
                               if d in held and s.in_use == 0 and not s.pinned]:
                    if excess <= 0:
                        break
                    slot = self._resident.get(digest)  # each unload below awaits: another
                    if slot is None:  # request may have evicted this one meanwhile
                        continue
                    if await self.unload(digest):
                        excess -= slot.size
                first = result
                result = await asyncio.to_thread(self._cache.trim, budget, self.options.pinned)
                result = TrimResult(result.total_bytes, first.removed + result.removed,
                                    result.held)
            self._note_trim(result)

    def _note_trim(self, result: TrimResult) -> None:
        budget = self.options.max_cache_bytes
        if result.removed:
            self._metrics.evictions.labels("disk").inc(len(result.removed))
            log.debug("disk cache evicted %d adapters: %s", len(result.removed),
                      ", ".join(d[:19] for d in result.removed))
        self._metrics.cache_bytes.set(result.total_bytes)
        over = result.total_bytes > budget
        if over and not self._over_budget:
            log.warning("adapter cache over budget: %d bytes on disk, budget %d; %d adapters "
                        "on disk are in use or pinned (here or by another process) and stay "
                        "until their requests end", result.total_bytes, budget, len(result.held))
        elif self._over_budget and not over:
            log.info("adapter cache back within budget: %d of %d bytes", result.total_bytes,
                     budget)
        self._over_budget = over


async def _refusal(check: asyncio.Future[list[str]],
                   manifest: Manifest) -> AdapterUnavailable | None:
    """The finite-weights check's verdict: None when every weight is a finite number. A check
    that cannot read the files (an unloadable dtype, a tensor torch cannot hold) refuses the
    adapter too: its files are the cause, so it is remembered like any other refusal."""
    try:
        bad = await check
    except UnloadableTensor as exc:
        return AdapterUnavailable(f"adapter {manifest.ref} is refused: {exc}", param="model")
    except Exception as exc:
        return logged(AdapterUnavailable, f"adapter {manifest.ref} could not be checked",
                      exc, param="model")
    if bad:
        return AdapterUnavailable(
            f"adapter {manifest.ref} has weights that are not finite numbers (NaN or "
            f"infinity) in {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}: refused "
            "before it reaches a batch it shares with other requests", param="model")
    return None


def _abandon(check: asyncio.Future[list[str]]) -> None:
    """Leave the check to finish on its own, its outcome unwanted (and never left unread)."""
    check.add_done_callback(lambda f: f.cancelled() or f.exception())


async def _load_failure(exc: BaseException, check: asyncio.Future[list[str]],
                        manifest: Manifest) -> BaseException:
    """What a failed engine load raises: the server's condition (503) and a cancellation as
    they are; else the adapter's failure (remembered by the caller), the check's clearer
    reason when it has one, the engine's own text only in the log (it names local paths)."""
    if isinstance(exc, ServiceUnavailable) or not isinstance(exc, Exception):
        _abandon(check)
        return exc
    refused = await _refusal(check, manifest)
    if refused is not None:
        return refused
    if isinstance(exc, ServerError):
        return exc
    return logged(AdapterUnavailable, f"adapter {manifest.ref} could not be loaded by the engine",
                  exc, param="model")


def fetch_failure(manifest: Manifest, exc: Exception) -> ServerError:
    """Whose fault a failed fetch is: the adapter's own bytes (remembered), or the server's
    condition: a full cache disk or a registry that cannot answer (503, never remembered)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        log.error("adapter cache is full, cannot fetch %s: %s", manifest.ref, exc)
        return CacheFull(f"no space left in this server's adapter cache to fetch "
                         f"{manifest.ref}; retry later")
    if isinstance(exc, (IntegrityError, NotFound, Invalid)):
        return AdapterUnavailable(f"adapter {manifest.ref} could not be fetched: {exc}",
                                  param="model")
    return registry_failure(exc, None, "")

