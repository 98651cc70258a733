"""The load mixes: which adapter each request of a trial names, identical for every server.

- `base`: every request for the base model;
- uniform K: K distinct rank-16 adapters drawn at random, each used equally often (±1);
- `zipf`: every rank-16 adapter may be asked for, the i-th most popular with probability
  ∝ 1/i^alpha (which adapter is i-th is shuffled once per run, so it holds across trials);
- `mixed`: adapters of rank 8, 16 and 64 in one batch, and `rank16`: the same batch (same
  prompts, same request-to-slot pattern) with every adapter replaced by a rank-16 one.

The "least popular 10 %" of a trial: the adapters it asks for, fewest requests first (ties: the
less popular by design first), the first tenth of them (at least one); their requests' TTFT is
reported beside the overall figures.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from dataclasses import dataclass

from loramux.bench import workload
from loramux.bench.config import BenchConfig
from loramux.bench.workload import Request


@dataclass(frozen=True)
class Mix:
    key: str  # "base", "1", "8", ..., "zipf", "mixed", "rank16"
    kind: str  # base | uniform | zipf | mixed | rank16
    k: int  # distinct adapters asked for (zipf: the population it draws from)
    requests: int

    @property
    def label(self) -> str:
        return {"base": "base", "uniform": f"K={self.k}", "zipf": f"Zipf over {self.k}",
                "mixed": "mixed ranks", "rank16": "same batch, all rank 16"}[self.kind]


def sweep(cfg: BenchConfig) -> list[Mix]:
    return [Mix("base", "base", 0, cfg.requests) if k == 0
            else Mix(str(k), "uniform", k, cfg.requests) for k in cfg.ks]


def zipf(cfg: BenchConfig) -> Mix:
    return Mix("zipf", "zipf", cfg.adapters, cfg.requests)


def ranks(cfg: BenchConfig) -> list[Mix]:
    n = cfg.mixed_adapters
    return [Mix("mixed", "mixed", n, cfg.mixed_requests),
            Mix("rank16", "rank16", n, cfg.mixed_requests)]


def key_of(k: int) -> str:
    return "base" if k == 0 else str(k)


def _salt(cfg: BenchConfig, mix: Mix, trial: int) -> int:
    key = "mixed" if mix.kind == "rank16" else mix.key  # the twin gets the same batch
    return cfg.seed * 1_000_003 + 1000 * (trial + 1) + zlib.crc32(key.encode()) % 1000


def popularity(wl: workload.Workload, cfg: BenchConfig) -> list[str]:
    """The rank-16 adapters, most popular first (fixed for the run)."""
    names = list(wl.names)
    random.Random(cfg.seed * 31 + 5).shuffle(names)
    return names


def models_for(wl: workload.Workload, cfg: BenchConfig, mix: Mix, trial: int) -> list[str]:
    rng = random.Random(_salt(cfg, mix, trial) * 7919)
    if mix.kind == "base":
        return [wl.served_name] * mix.requests
    if mix.kind == "uniform":
        chosen = rng.sample(wl.names, mix.k)
    elif mix.kind == "zipf":
        ranked = popularity(wl, cfg)
        weights = [1 / (i + 1) ** cfg.zipf_alpha for i in range(len(ranked))]
        return rng.choices(ranked, weights=weights, k=mix.requests)
    else:  # mixed, or its rank-16 twin: slot j is the same request pattern in both
        chosen = list(wl.mixed_adapters) if mix.kind == "mixed" else wl.names[:mix.k]
    models = [chosen[i % len(chosen)] for i in range(mix.requests)]
    rng.shuffle(models)
    return models


def trial_requests(wl: workload.Workload, cfg: BenchConfig, mix: Mix,
                   trial: int) -> list[Request]:
    """The request list of one (mix, trial): identical for every server it is sent to."""
    prompts = workload.make_prompts(wl.model_dir, mix.requests, cfg.prompt_tokens,
                                    seed=_salt(cfg, mix, trial))
    return workload.requests_for(prompts, models_for(wl, cfg, mix, trial), cfg.max_tokens)


def least_popular(models: list[str], order: list[str] | None = None,
                  share: float = 0.1) -> set[str]:
    """The least popular `share` of the adapters asked for (see the module docstring)."""
    counts = Counter(models)
    if not counts:
        return set()
    place = {name: i for i, name in enumerate(order or [])}
    ranked = sorted(counts, key=lambda n: (counts[n], -place.get(n, 0), n))
    return set(ranked[:max(1, math.ceil(share * len(ranked)))])


def warmup_requests(wl: workload.Workload, cfg: BenchConfig,
                    names: list[str]) -> list[Request]:
    """One short request for the base and for each of `names`."""
    models = [wl.served_name, *names]
    prompts = workload.make_prompts(wl.model_dir, len(models), cfg.prompt_tokens, seed=17)
    return workload.requests_for(prompts, models, min(4, cfg.max_tokens))
