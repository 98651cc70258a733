"""The interface every engine implements: stream tokens for a request, with an optional adapter.

The vLLM engine and the transformers reference engine both sit behind it, so handlers and tests
can swap one for the other and compare their tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class AdapterHandle:
    """An adapter as the engine sees it: a stable int id and a name that both carry the digest."""

    lora_id: int
    name: str
    path: Path
    digest: str


@dataclass(frozen=True)
class Sampling:
    """What one request samples with; the handlers fill what a request leaves unset from the
    model's generation config (`loramux.server.model_defaults`), so engines apply it as given."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    ignore_eos: bool = False
    json_schema: dict | None = None
    json_object: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: Sampling
    adapter: AdapterHandle | None = None


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Delta:
    """New output of one choice since the last delta."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass
class EngineInfo:
    name: str
    model: str
    quantization: str
    max_model_len: int
    max_loras: int
    max_lora_rank: int
    resident_bytes: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EngineLoad:
    """The engine scheduler's own count of its requests and KV cache, as of its last step.

    Optional: an engine that has a scheduler view offers it as `scheduler_load()` (the vLLM
    engine does); the gateway metrics (`loramux.server.gateway_metrics`) fall back to the
    server's own counts for an engine that does not.
    """

    running: int
    waiting: int
    kv_cache_usage: float  # fraction of the KV cache in use, 0..1
    block_size: int | None = None  # tokens per KV block, when the cache is paged
    num_blocks: int | None = None  # KV blocks in the cache


class Engine(Protocol):
    info: EngineInfo

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]: ...

    async def abort(self, request_id: str) -> None: ...

    async def load_adapter(self, adapter: AdapterHandle) -> None: ...

    async def unload_adapter(self, adapter: AdapterHandle) -> None: ...

    async def check_health(self) -> None: ...

    async def restart(self) -> None:
        """Load the base weights anew (an operator action), keeping the loaded adapters; each
        engine reports every base load through the `on_base_load` callback it was built with."""
        ...

    def shutdown(self) -> None: ...
