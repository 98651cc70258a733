"""What the base model's own files say about generation: where an answer ends, and how to sample
when a request does not say.

A model's generation config (generation_config.json, else config.json) may name several end ids
(`eos_token_id`, an int or a list: chat models often end a turn with a token that is not the
tokenizer's eos) and sampling defaults its authors tuned. Both engines stop at every end id plus
the tokenizer's eos: vLLM adds the generation config's ids to each request by itself (its input
processor, with `generation_config="auto"`, its default), the reference engine is given
`end_token_ids`.

The sampling defaults apply only to what a request leaves unset, then OpenAI's defaults, as vLLM's
own OpenAI server does with `--generation-config auto`: a request's own value always wins. They
are read once at start, here, and applied in one place (`Handlers._sampling`). `top_k`, `min_p`
and `repetition_penalty` are model defaults and request fields (vLLM's extensions of the API);
both engines apply them. The OpenAI penalties (presence, frequency) are request fields only:
the vLLM engine applies them, the reference engine has no such processors, so there a request
may send only their neutral value (`unapplied`), and a model's values for them are not read.
`do_sample` is left out, as vLLM ignores it too: a model that wants greedy answers by default
says `temperature: 0`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# OpenAI's defaults (and vLLM's neutral values), for what neither the request nor the model sets.
OPENAI_DEFAULTS: Mapping[str, float] = {
    "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
    "presence_penalty": 0.0, "frequency_penalty": 0.0}
# OpenAI's penalties: request fields only, applied by the engines named here (`EngineInfo.name`);
# on any other engine a request may send only their neutral value, 0.
PENALTIES = ("presence_penalty", "frequency_penalty")
PENALTY_ENGINES: frozenset[str] = frozenset({"vllm"})
# Per field, what a model value must satisfy to be used (the engines refuse anything else).
_VALID = {
    "temperature": lambda v: v >= 0,
    "top_p": lambda v: 0 < v <= 1,
    "top_k": lambda v: v == int(v) and v >= -1,  # -1 and 0 both mean "off"
    "min_p": lambda v: 0 <= v <= 1,
    "repetition_penalty": lambda v: v > 0,
}


@dataclass(frozen=True)
class ModelDefaults:
    """The base model's end ids and the sampling values it sets (only those it sets)."""

    end_token_ids: frozenset[int] = frozenset()
    sampling: Mapping[str, float] = field(default_factory=dict)

    def resolve(self, **requested: float | None) -> dict[str, float]:
        """Every sampling field: the request's value, else the model's, else OpenAI's."""
        unknown = set(requested) - set(OPENAI_DEFAULTS)
        if unknown:
            raise TypeError(f"not a sampling field: {sorted(unknown)}")
        values = {name: value if (value := requested.get(name)) is not None
                  else self.sampling.get(name, default)
                  for name, default in OPENAI_DEFAULTS.items()}
        values["top_k"] = max(int(values["top_k"]), 0)
        return values


def unapplied(engine: str, request: Any) -> str | None:
    """The first penalty `request` asks for that `engine` does not apply, if any."""
    if engine in PENALTY_ENGINES:
        return None
    return next((name for name in PENALTIES if getattr(request, name) not in (None, 0)), None)


def read_model_defaults(model_dir: Path | str, eos_token_id: int | None) -> ModelDefaults:
    """The defaults of the model in `model_dir`; `eos_token_id` is its tokenizer's eos."""
    config = generation_config(model_dir)
    ids = config.get("eos_token_id")
    ends = {ids} if isinstance(ids, int) else {int(i) for i in ids or ()}
    if eos_token_id is not None:
        ends.add(eos_token_id)
    sampling: dict[str, float] = {}
    for name, valid in _VALID.items():
        value = config.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not valid(value):
            log.warning("ignoring the model's generation config %s=%r: out of range", name,
                        value)
            continue
        sampling[name] = value
    return ModelDefaults(frozenset(ends), sampling)


def generation_config(model_dir: Path | str) -> dict[str, Any]:
    """The values a model's generation config sets, read as vLLM reads them (transformers'
    GenerationConfig, non-default values only): generation_config.json, else config.json."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir).to_diff_dict()
    except OSError:
        pass
    try:
        return GenerationConfig.from_model_config(
            AutoConfig.from_pretrained(model_dir)).to_diff_dict()
    except OSError:
        return {}


def describe(defaults: ModelDefaults) -> str:
    """One log line, said once at start, like vLLM's."""
    ends = sorted(defaults.end_token_ids)
    if not defaults.sampling:
        return f"generation stops at token ids {ends}; sampling defaults are OpenAI's"
    return (f"generation stops at token ids {ends}; default sampling parameters have been "
            f"overridden by the model's Hugging Face generation config: "
            f"{dict(defaults.sampling)} (a request's own values still win)")
