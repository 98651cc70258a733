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
    from loramux.server.engines import vllm_patches
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

    # The engine in this process, so the test can see which ops it ran. vLLM loads plugins once
    # per process, and an earlier test's engine may have loaded ours switched off: install the
    # ops here as the plugin would (monkeypatch puts vLLM's back afterwards).
    import vllm.lora.ops.torch_ops as torch_ops
    import vllm.lora.ops.torch_ops.lora_ops as lora_ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu
    from vllm.lora.model_manager import LoRAModelManager

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv(vllm_patches.ENV, "1")
    for name in vllm_patches.GROUPED:
        monkeypatch.setattr(punica_cpu.PunicaWrapperCPU, name,
                            getattr(punica_cpu.PunicaWrapperCPU, name))
    monkeypatch.setattr(LoRAModelManager, "activate_adapter", LoRAModelManager.activate_adapter)
    for module in (lora_ops, torch_ops, punica_cpu):
        for name in vllm_patches.OPS:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))
    vllm_patches.apply()
    llm = make_llm(demo_base, "none", dtype="float32", max_loras=len(adapters),
                   max_num_seqs=len(jobs))
    assert punica_cpu.PunicaWrapperCPU.add_lora_linear is \
        vllm_patches.GroupedPunica.add_lora_linear
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
