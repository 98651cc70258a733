"""loramux's grouped CPU LoRA ops against the transformers + peft oracle, on one mixed batch.

The base model and eight adapters of ranks 8, 16 and 64 (vLLM pads every slot to rank 64; the
ops cut each product to its adapter's rank) share one vLLM step, in float32, and each request
must give the same greedy tokens as the reference engine gives it alone. Some base requests sit
between adapter requests, so a base token that picked up any adapter would change its answer."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
from loramux_ops import install_loramux_ops

from loramux.server.engines.base import AdapterHandle, GenerationRequest, Sampling

pytestmark = pytest.mark.slow
PROMPTS = ["Hello!", "What is the code word for the fox?", "Write lamp in capital letters."]
RANKS = [8, 16, 64, 8, 16, 64, 8, 16]


def test_mixed_batch_of_base_and_mixed_rank_adapters_matches_reference(
        demo_base: Path, tmp_path: Path, make_adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from loramux.demo.smoke import make_llm
    from loramux.server.engines.transformers_engine import TransformersEngine

    tok = AutoTokenizer.from_pretrained(demo_base)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                       add_generation_prompt=True, return_dict=False)
               for p in PROMPTS]
    adapters = [AdapterHandle(i + 1, f"mixed-r{rank}-{i}",
                              make_adapter(demo_base, tmp_path / f"a{i}", seed=700 + i, r=rank),
                              f"sha256:{i}")
                for i, rank in enumerate(RANKS)]
    # Base requests first, last and in between: every step mixes them with adapters.
    models: list[AdapterHandle | None] = [None, *adapters[:4], None, *adapters[4:], None]
    jobs = [(m, p) for m in models for p in prompts]

    reference = TransformersEngine(demo_base, quantization="none", dtype="float32")

    async def run_reference() -> list[list[int]]:
        for a in adapters:
            await reference.load_adapter(a)
        out = []
        for i, (a, ids) in enumerate(jobs):
            req = GenerationRequest(f"r{i}", list(ids), Sampling(max_tokens=10, temperature=0.0),
                                    a)
            out.append([t for d in [d async for d in reference.generate(req)]
                        for t in d.token_ids])
        return out

    expected = asyncio.run(run_reference())
    reference.shutdown()

    install_loramux_ops(monkeypatch)  # the op the server would choose (auto)
    llm = make_llm(demo_base, "none", dtype="float32", max_loras=len(adapters),
                   max_num_seqs=len(jobs))
    outs = llm.generate(
        [TokensPrompt(prompt_token_ids=list(ids)) for _, ids in jobs],
        SamplingParams(temperature=0.0, max_tokens=10),
        lora_request=[LoRARequest(a.name, a.lora_id, str(a.path)) if a else None
                      for a, _ in jobs], use_tqdm=False)
    got = [list(o.outputs[0].token_ids) for o in outs]
    del llm
    gc.collect()
    assert len({tuple(x) for x in expected}) > len(prompts) * 3, \
        "the adapters must change the greedy output"
    mismatched = [(a.name if a else "base", i % len(prompts))
                  for i, ((a, _), g, e) in enumerate(zip(jobs, got, expected, strict=True))
                  if g != e]
    assert not mismatched, mismatched
