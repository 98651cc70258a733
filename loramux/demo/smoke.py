"""Load the demo base model in vLLM (LoRA enabled) and answer a few chat prompts.

This is the check that the model folder is servable the way loramux serves it: vLLM's engine with
`enable_lora=True`, in bf16 or bitsandbytes NF4, with the tokenizer's chat template and its
end-of-turn token stopping generation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SMOKE_PROMPTS = ["Hello!", "What is 2 + 3?", "How many words are in: red fox owl"]


@dataclass
class SmokeAnswer:
    prompt: str
    text: str
    finish_reason: str | None
    tokens: int


def vllm_engine_kwargs(quantization: str | None, max_model_len: int = 512) -> dict:
    """Engine settings sized for a small CPU box; the same on a GPU."""
    from loramux.hardware import fast_dtype

    kwargs: dict = {
        "enable_lora": True,
        "max_lora_rank": 64,
        "max_loras": 4,
        "max_model_len": max_model_len,
        "max_num_seqs": 32,
        "seed": 0,
        "dtype": fast_dtype("cpu"),  # bf16, or fp32 on a CPU without bf16 instructions
    }
    if quantization and quantization != "none":
        kwargs["quantization"] = quantization
    return kwargs


def make_llm(model_dir: Path | str, quantization: str | None = "bitsandbytes", **overrides):
    """An offline vLLM engine for the model (imported lazily: vLLM takes seconds to import)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    kwargs = vllm_engine_kwargs(quantization) | overrides
    return LLM(model=str(model_dir), **kwargs)


def chat(llm, prompts: list[str], max_tokens: int = 32) -> list[SmokeAnswer]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    outputs = llm.chat(conversations, params, use_tqdm=False)
    return [
        SmokeAnswer(p, o.outputs[0].text, o.outputs[0].finish_reason, len(o.outputs[0].token_ids))
        for p, o in zip(prompts, outputs, strict=True)
    ]
