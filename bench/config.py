"""What one benchmark run measures and at what size: the full run and the `--quick` smoke test.

`dtype` is the compute dtype of every server and loop in the run (`auto`: loramux.hardware's
`fast_dtype("cpu")`, resolved once by `resolved`), so a run never compares a bf16 server with
an fp32 one, and the dtype is part of what the results record.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from loramux.bench import servers

PARTS = ("serve", "swap", "naive", "real", "components")
DTYPES = ("auto", "bfloat16", "float32")


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    quantizations: tuple[str, ...] = ("bitsandbytes",)  # the first is the primary one
    ks: tuple[int, ...] = (0, 1, 8, 32, 64)  # uniform mixes; 0 = base only
    adapters: int = 256  # rank-16 adapters: uniform K draws from them, Zipf spans them all
    zipf_alpha: float = 1.0
    mixed_ranks: tuple[int, ...] = (8, 16, 64)
    mixed_per_rank: int = 4  # adapters of each rank in the mixed-rank batch
    mixed_requests: int = 36  # per mixed-rank trial (and its all-rank-16 twin)
    cold: int = 5  # hot-swap trials, one never-loaded adapter each
    requests: int = 64  # per trial of a uniform or Zipf mix
    prompt_tokens: int = 64
    max_tokens: int = 64
    concurrency: int = 32
    trials: int = 3
    naive_ks: tuple[int, ...] = (0, 1, 8, 64)
    naive_requests: int = 8  # the naive loop runs one request at a time: a prefix of the list
    naive_trials: int = 1
    swap_tokens: int = 8
    reload_restarts: int = 1  # extra loramux starts for the reload figure (plus the first one)
    max_cpu_loras: int = 64  # both servers; loramux's --max-loras is left to its default
    max_lora_rank: int = 16  # the mixed-rank run always uses 64 (a pair of its own if need be)
    max_model_len: int = 512
    kv_cache_gib: int = 1
    seed: int = 0
    dtype: str = "auto"  # compute dtype of every server and loop; see `resolved`
    # The real-base part (real.py): its own sizes, since a token there costs ~10x one here.
    real_ks: tuple[int, ...] = (0, 8, 64)
    real_requests: int = 64  # K = 64 needs 64 requests for every adapter to be asked for
    real_prompt_tokens: int = 32
    real_max_tokens: int = 16
    real_trials: int = 2
    real_servers: bool = True  # False: build the real workload, start no server for it

    @classmethod
    def preset(cls, quick: bool) -> BenchConfig:
        if not quick:
            return cls()
        return cls(quick=True, ks=(0, 1, 4), adapters=8, mixed_per_rank=1, mixed_requests=6,
                   cold=2, requests=8, prompt_tokens=16, max_tokens=8, trials=2,
                   naive_ks=(0, 1, 4), naive_requests=2, swap_tokens=4, reload_restarts=0,
                   max_cpu_loras=4, max_lora_rank=64, max_model_len=256,
                   real_ks=(0, 8), real_requests=8, real_prompt_tokens=16, real_max_tokens=4,
                   real_trials=1)

    def real(self) -> BenchConfig:
        """The config the real part's mixes, loads and servers read (the serve part's fields,
        filled from the `real_*` ones): one rank-16 adapter per slot, K up to all of them."""
        most = max(self.real_ks)
        return replace(self, ks=self.real_ks, adapters=most, requests=self.real_requests,
                       prompt_tokens=self.real_prompt_tokens, max_tokens=self.real_max_tokens,
                       trials=self.real_trials, cold=0, mixed_per_rank=0, max_cpu_loras=most,
                       max_lora_rank=16)

    @property
    def mixed_rank(self) -> int:
        return max(self.mixed_ranks)

    @property
    def mixed_adapters(self) -> int:
        return len(self.mixed_ranks) * self.mixed_per_rank

    def limits(self, quantization: str, max_loras: int,
               max_lora_rank: int | None = None) -> servers.EngineLimits:
        return servers.EngineLimits(
            quantization=quantization, max_loras=max_loras, max_cpu_loras=self.max_cpu_loras,
            max_lora_rank=max_lora_rank or self.max_lora_rank,
            max_model_len=self.max_model_len, kv_cache_gib=self.kv_cache_gib,
            dtype=self.dtype)

    def check(self) -> None:
        if any(k < 0 or k > self.adapters for k in self.ks):
            raise ValueError(f"every K must be between 0 and --adapters ({self.adapters})")
        if max(self.ks) > self.requests:
            raise ValueError("each uniform trial needs at least K requests")
        if not set(self.naive_ks) <= set(self.ks):
            raise ValueError("the naive loop's Ks must be among the Ks")
        if self.mixed_adapters > self.adapters:
            raise ValueError("the mixed-rank batch's rank-16 twin needs that many adapters")
        if self.prompt_tokens + self.max_tokens > self.max_model_len:
            raise ValueError("prompt_tokens + max_tokens exceeds max_model_len")
        if not self.quantizations:
            raise ValueError("at least one quantization")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        if not self.real_ks or min(self.real_ks) < 0 or max(self.real_ks) < 1:
            raise ValueError("the real part needs at least one K >= 1")
        if max(self.real_ks) > self.real_requests:
            raise ValueError("each real-base trial needs at least K requests")
        if self.real_prompt_tokens + self.real_max_tokens > self.max_model_len:
            raise ValueError("real prompt + max tokens exceeds max_model_len")


def resolved(cfg: BenchConfig) -> BenchConfig:
    """`cfg` with `dtype: auto` made concrete for this machine (loramux.hardware decides: the
    same answer `loramux serve --dtype auto` and the trainer's `compute_dtype: auto` get)."""
    if cfg.dtype != "auto":
        return cfg
    from loramux.hardware import fast_dtype

    return replace(cfg, dtype=fast_dtype("cpu"))


def with_overrides(cfg: BenchConfig, **overrides: Any) -> BenchConfig:
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
