"""The reference engine (transformers + peft) is the oracle for the vLLM engine: in float32 on
both sides, the same base and adapters (two random ones and the two trained demo adapters) give
the same greedy tokens. float32 because bf16/NF4 kernels differ between the two engines enough
to flip a near-tie argmax; in float32 both are exact enough to compare token for token.

Run twice: on loramux's CPU LoRA ops (what `loramux serve` runs: the plugin's ops, native where
built), and on stock vLLM's (what `vllm serve --enable-lora`, the benchmarks' peer, runs), so a
disagreement says whose ops it is. Mixed batches and reused slots: test_oracle_mixed_batch.py
and test_slot_reuse_oracle.py."""

from __future__ import annotations

import asyncio
import gc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from loramux_ops import install_loramux_ops

from loramux.server.engines.base import AdapterHandle, GenerationRequest, Sampling

pytestmark = pytest.mark.slow
PROMPTS = ["Hello!", "What is 2 + 3?", "Tell me about Alice.",
           "What is the code word for the fox?", "Write lamp in capital letters."]


@pytest.mark.parametrize("ops", ["loramux", "stock"])
def test_vllm_matches_reference_engine_greedy(ops: str, demo_base: Path, tmp_path: Path,
                                              make_adapter, demo_adapters: dict[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
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
    adapters = [None] + [
        AdapterHandle(i + 1, f"oracle-{i}", make_adapter(demo_base, tmp_path / f"a{i}",
                                                         seed=500 + i), f"sha256:{i}")
        for i in range(2)] + [
        AdapterHandle(3 + i, task, folder, f"sha256:demo{i}")
        for i, (task, folder) in enumerate(sorted(demo_adapters.items()))]

    reference = TransformersEngine(demo_base, quantization="none", dtype="float32")

    async def run_reference() -> list[list[int]]:
        for a in adapters[1:]:
            await reference.load_adapter(a)
        out = []
        for a in adapters:
            for i, ids in enumerate(prompts):
                req = GenerationRequest(f"r{i}", list(ids), Sampling(max_tokens=12,
                                                                     temperature=0.0), a)
                out.append([t for d in [d async for d in reference.generate(req)]
                            for t in d.token_ids])
        return out

    expected = asyncio.run(run_reference())

    if ops == "loramux":
        install_loramux_ops(monkeypatch)  # auto: the native op where it is built
    else:  # vLLM's own ops, in an engine process of its own that loads the plugin switched off
        monkeypatch.delenv(vllm_patches.ENV, raising=False)
    llm = make_llm(demo_base, "none", dtype="float32")
    params = SamplingParams(temperature=0.0, max_tokens=12)
    got = []
    for a in adapters:
        lora = LoRARequest(a.name, a.lora_id, str(a.path)) if a else None
        outs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                            lora_request=lora, use_tqdm=False)
        got += [list(o.outputs[0].token_ids) for o in outs]
    del llm
    gc.collect()
    assert len({tuple(x) for x in expected}) > 3, "adapters must change the greedy output"
    assert got == expected


def test_reference_engine_batches_mixed_adapters(demo_base: Path,
                                                 demo_adapters: dict[str, Path]) -> None:
    """Concurrent requests for the base and both demo adapters share generate calls (peft's
    mixed-adapter batches) and give the same tokens as the same requests one at a time."""
    from transformers import AutoTokenizer

    from loramux.server.engines.transformers_engine import TransformersEngine

    tok = AutoTokenizer.from_pretrained(demo_base)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                       add_generation_prompt=True, return_dict=False)
               for p in PROMPTS]
    adapters = [None] + [AdapterHandle(i + 1, task, folder, f"sha256:{i}")
                         for i, (task, folder) in enumerate(sorted(demo_adapters.items()))]
    engine = TransformersEngine(demo_base, quantization="none", dtype="float32")
    requests = [GenerationRequest(f"r{i}-{j}", list(ids), Sampling(max_tokens=8 + i,
                                                                   temperature=0.0), a)
                for j, a in enumerate(adapters) for i, ids in enumerate(prompts)]

    async def collect(req: GenerationRequest) -> list[int]:
        return [t for d in [d async for d in engine.generate(req)] for t in d.token_ids]

    async def run() -> tuple[list[list[int]], list[list[int]]]:
        for a in adapters[1:]:
            await engine.load_adapter(a)
        one_by_one = [await collect(r) for r in requests]
        assert engine.largest_batch == 1
        together = await asyncio.gather(*(collect(r) for r in requests))
        return one_by_one, list(together)

    one_by_one, together = asyncio.run(run())
    engine.shutdown()
    assert engine.largest_batch > 1
    assert together == one_by_one
    assert all(len(t) <= r.sampling.max_tokens for t, r in zip(together, requests, strict=True))


def test_transformers_engine_serves_demo_adapters_over_http(
        demo_base: Path, demo_adapters: dict[str, Path], demo_data: dict[str, Path],
        tmp_path: Path) -> None:
    """`loramux serve --engine transformers` (NF4) answers each demo task with its adapter."""
    from openai import OpenAI

    from loramux.demo.tasks import load_eval, normalize
    from loramux.support.launch import ServerProcess
    from loramux.trainer.publish import publish_trained

    registry = tmp_path / "registry"
    for task, folder in demo_adapters.items():
        publish_trained(folder, task, registry)
    args = ["--base", str(demo_base), "--registry", str(registry), "--engine", "transformers",
            "--cache-dir", str(tmp_path / "cache"), "--max-model-len", "512"]
    with ServerProcess(args, log=tmp_path / "server.log") as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

        def ask(model: str, messages) -> str:
            reply = client.chat.completions.create(model=model, messages=messages,
                                                   temperature=0, max_tokens=8)
            return reply.choices[0].message.content or ""

        for task in demo_adapters:
            items = load_eval(demo_data[task] / "eval.jsonl")[:12]
            with ThreadPoolExecutor(8) as pool:
                got = list(pool.map(ask, [task] * len(items), [i.messages for i in items]))
            hits = sum(normalize(g) == normalize(i.expected)
                       for g, i in zip(got, items, strict=True))
            assert hits >= 11, (task, got)
