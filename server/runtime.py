"""The server's shared state, built once: engine, tokenizer, registry, resolver, adapters.

The app receives one Runtime and reaches everything through it, so tests can build one around
an engine they share across the session.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from loramux.registry.errors import RegistryError
from loramux.registry.manifest import Manifest
from loramux.server import compat
from loramux.server.adapters import AdapterManager, AdapterManagerOptions
from loramux.server.engines.base import Engine
from loramux.server.errors import AdapterUnavailable, EngineUnavailable, IncompatibleAdapter
from loramux.server.handlers import Admission, Handlers
from loramux.server.metrics import Metrics
from loramux.server.protocol import ModelCard, now
from loramux.server.resolver import Resolver
from loramux.server.settings import ServerSettings, read_api_keys

log = logging.getLogger(__name__)


def local_model_dir(base: str) -> Path:
    """A local folder for the base: the path itself, or the Hub snapshot already cached."""
    path = Path(base)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(base))


def build_engine(settings: ServerSettings, model_dir: Path) -> Engine:
    if settings.engine == "transformers":
        from loramux.server.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model_dir, quantization=settings.quantization,
                                  max_model_len=settings.max_model_len)
    from loramux.server.engines.vllm_engine import VllmEngine, VllmOptions

    return VllmEngine(VllmOptions(
        model=str(model_dir), quantization=settings.quantization, max_loras=settings.max_loras,
        max_cpu_loras=settings.max_cpu_loras, max_lora_rank=settings.max_lora_rank,
        max_model_len=settings.max_model_len, max_num_seqs=settings.max_num_seqs,
        kv_cache_gib=settings.kv_cache_gib))


class Runtime:
    def __init__(self, settings: ServerSettings, engine: Engine | None = None) -> None:
        from transformers import AutoTokenizer

        import loramux.registry as registry_lib
        from loramux.registry.fingerprint import base_fingerprint

        self.settings = settings
        self.api_keys = read_api_keys(settings.api_keys)
        model_dir = local_model_dir(settings.base)
        self.metrics = Metrics(settings.max_adapter_labels)
        self.engine = engine or build_engine(settings, model_dir)
        self.metrics.base_loads.inc(self.engine.info.base_model_loads)
        self.metrics.base_loads_plain.set(self.engine.info.base_model_loads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.registry = registry_lib.open(settings.registry)
        self.base = compat.ServedBase(
            fingerprint=base_fingerprint(model_dir),
            quantization=compat.served_quantization(self.engine.info.quantization),
            max_lora_rank=settings.max_lora_rank)
        self.resolver = Resolver(self.registry, settings.name, ttl_s=settings.resolve_ttl_s)
        self.adapters = AdapterManager(self.engine, self.registry, self.metrics,
                                       AdapterManagerOptions(
                                           cache_dir=settings.cache_dir,
                                           max_resident=settings.max_cpu_loras,
                                           max_cache_bytes=settings.max_cache_bytes))
        self.handlers = Handlers(self.engine, self.tokenizer, self.resolver, self.adapters,
                                 self.metrics, self.base,
                                 Admission(settings.max_pending, self.metrics))
        self._manifests: dict[str, Manifest] = {}
        self._closed = False
        log.info("serving %s as `%s` (engine %s, quantization %s, fingerprint %s)",
                 model_dir, settings.name, self.engine.info.name, self.base.quantization,
                 self.base.fingerprint[:19])

    async def pin_all(self) -> None:
        for ref in self.settings.pin:
            manifest = await self.resolver.resolve(ref)
            compat.check(manifest, self.base)
            self.adapters.pin(manifest.digest)
            await self.adapters.load(manifest)

    async def load(self, model: str) -> dict[str, Any]:
        manifest = await self.resolver.resolve(model)
        warning = compat.check(manifest, self.base)
        handle = await self.adapters.load(manifest)
        return {"model": model, "ref": manifest.ref, "digest": manifest.digest,
                "lora_id": handle.lora_id, "resident": True, "warning": warning}

    async def unload(self, model: str) -> dict[str, Any]:
        manifest = await self.resolver.resolve(model)
        unloaded = await self.adapters.unload(manifest.digest)
        return {"model": model, "ref": manifest.ref, "digest": manifest.digest,
                "unloaded": unloaded, "resident": self.adapters.is_resident(manifest.digest)}

    async def engine_health(self) -> None:
        try:
            await self.engine.check_health()
        except EngineUnavailable:
            raise
        except Exception as exc:  # whatever the engine raises, the answer is "not healthy"
            raise EngineUnavailable(f"engine unhealthy: {exc}") from exc

    def registry_health(self) -> None:
        try:
            self.registry.list(name="loramux-ready-probe")
        except RegistryError as exc:
            raise AdapterUnavailable(f"registry unreachable: {exc}") from exc

    def _cards(self) -> list[ModelCard]:
        created = now()
        cards = [ModelCard(id=self.settings.name, created=created, resident=True,
                           root=self.settings.base)]
        for info in self.registry.list(base_fingerprint=self.base.fingerprint):
            manifest = self._manifests.get(info.digest)
            if manifest is None:
                manifest = self.registry.show(f"{info.name}@{info.version}")
                self._manifests[info.digest] = manifest
            try:
                warning = compat.check(manifest, self.base)
            except IncompatibleAdapter:  # not offered: requests for it get the reason
                continue
            cards.append(ModelCard(
                id=f"{info.name}@{info.version}", created=int(info.created_at.timestamp()),
                parent=self.settings.name, root=info.name, digest=info.digest,
                resident=self.adapters.is_resident(info.digest), aliases=info.aliases,
                quantization_mismatch=warning))
        return cards

    async def model_cards(self) -> list[ModelCard]:
        return await asyncio.to_thread(self._cards)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.engine.shutdown()
        self.registry.close()
