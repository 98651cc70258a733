"""The server's parts, built once from the settings and wired together.

The app receives one Runtime and reaches everything through it. The logic lives in the parts:
`models.ServingModels` (what a `model` string names), `handlers.Handlers` (completions),
`admission.Admission` (overload), the engine and the adapter manager.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from loramux import wire
from loramux.server import compat
from loramux.server.adapters import AdapterManager, AdapterManagerOptions
from loramux.server.admission import Admission
from loramux.server.auth import KeyStore
from loramux.server.engines.base import Engine
from loramux.server.errors import EngineUnavailable
from loramux.server.handlers import Handlers
from loramux.server.hub_refs import HubReferences
from loramux.server.metrics import Metrics
from loramux.server.model_defaults import describe, read_model_defaults
from loramux.server.models import ServingModels
from loramux.server.resolver import Resolver
from loramux.server.settings import ServerSettings

log = logging.getLogger(__name__)


def local_model_dir(base: str) -> Path:
    """A local folder for the base: the path itself, or the Hub snapshot already cached."""
    path = Path(base)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(base))


def build_engine(settings: ServerSettings, model_dir: Path, metrics: Metrics) -> Engine:
    """The engine the settings name; every base-weight load it does counts in the metrics."""
    if settings.engine == "transformers":
        from loramux.server.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model_dir, quantization=settings.quantization,
                                  max_model_len=settings.max_model_len,
                                  dtype=settings.compute_dtype(),
                                  on_base_load=metrics.base_loads.inc)
    from loramux.server.engines.vllm_engine import VllmEngine

    return VllmEngine(settings.vllm_options(model_dir), on_base_load=metrics.base_loads.inc)


def engine_core_pid() -> int | None:
    """The pid of vLLM's engine-core process under this server (None for an in-process engine):
    an outside witness of base loads, since a new engine core means the weights were loaded."""
    import psutil

    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "EngineCore" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


class Runtime:
    def __init__(self, settings: ServerSettings) -> None:
        from transformers import AutoTokenizer

        import loramux.registry as registry_lib
        from loramux.registry.fingerprint import base_fingerprint

        self.settings = settings
        self.keys = KeyStore(settings.api_keys)  # first: a bad keys file fails fast
        model_dir = local_model_dir(settings.base)
        self.metrics = Metrics(settings.max_adapter_labels)
        self.engine = build_engine(settings, model_dir, self.metrics)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        defaults = read_model_defaults(model_dir, self.tokenizer.eos_token_id)
        log.info("%s", describe(defaults))
        self.registry = registry_lib.open(settings.registry)
        base = compat.ServedBase(
            fingerprint=base_fingerprint(model_dir),
            quantization=compat.served_quantization(self.engine.info.quantization),
            max_lora_rank=settings.max_lora_rank)
        self.adapters = AdapterManager(self.engine, self.registry, self.metrics,
                                       AdapterManagerOptions(
                                           cache_dir=settings.cache_dir,
                                           max_resident=settings.max_cpu_loras,
                                           max_cache_bytes=settings.max_cache_bytes,
                                           failure_ttl_s=settings.adapter_failure_ttl_s))
        resolver = Resolver(self.registry, settings.name, ttl_s=settings.resolve_ttl_s,
                            hub=HubReferences.from_patterns(settings.hub_allow, model_dir))
        self.models = ServingModels(self.registry, resolver, self.adapters, base, self.metrics,
                                    root=settings.base)
        self.handlers = Handlers(self.engine, self.tokenizer, self.models, self.metrics,
                                 Admission(settings.max_pending, self.metrics),
                                 max_prompt_chars=settings.max_prompt_chars, defaults=defaults)
        self._closed = False
        log.info("serving %s as `%s` (engine %s, quantization %s, dtype %s, fingerprint %s)",
                 model_dir, settings.name, self.engine.info.name, base.quantization,
                 settings.compute_dtype(), (base.fingerprint or "none")[:19])

    async def engine_health(self) -> None:
        try:
            await self.engine.check_health()
        except EngineUnavailable:
            raise
        except Exception as exc:  # whatever the engine raises, the answer is "not healthy"
            raise EngineUnavailable(f"engine unhealthy: {exc}") from exc

    def engine_state(self) -> dict[str, object]:
        """For operators and tests: which process holds the engine and how often it loaded."""
        return {"engine": self.engine.info.name, "server_pid": os.getpid(),
                "engine_pid": engine_core_pid(),
                "base_model_loads": int(self.metrics.registry.get_sample_value(
                    wire.BASE_MODEL_LOADS) or 0)}

    async def restart_engine(self) -> dict[str, object]:
        """Operator action: reload the base weights (a new vLLM engine core); adapters stay."""
        log.warning("restarting the engine on an operator's request")
        await self.engine.restart()
        return self.engine_state()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.engine.shutdown()
        self.registry.close()
