"""Slots reused: more adapters than LoRA slots, every answer its own adapter's (fp32 oracle).

Five adapters (ranks 8, 16 and 64: vLLM pads every slot to 64, and the ops cut each product to
the rank of the adapter in the slot) share two slots, with base-model requests in between, over two
rounds in opposite orders, so each slot holds several adapters one after another and an adapter
comes back to a slot another has used. Each request must give the greedy tokens the reference
engine (transformers + peft, fp32) gives that adapter alone: weights, ranks or prepared copies
left over from a slot's previous adapter change the answer. Run under the native op and under
the Python ops (reached the way a server without the built op reaches them: `auto`, one log
line), so the two give the same tokens."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest
from loramux_ops import keep_vllm_ops

from loramux.server.engines.base import AdapterHandle, GenerationRequest, Sampling

pytestmark = pytest.mark.slow
PROMPTS = ["What is the code word for the fox?", "Write lamp in capital letters."]
# The pairs that follow each other into the two slots have the same largest rank (16), so weights
# the torch ops laid out for the first pair would fit the second and be used if not invalidated
# (a mutation that skips the invalidation fails this test); rank 64 later follows rank 8.
RANKS = [16, 8, 16, 8, 64]
SLOTS = 2
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def oracle(demo_base: Path, tmp_path_factory, make_adapter):
    """The adapters, the rounds of jobs, and every job's reference tokens."""
    from transformers import AutoTokenizer

    from loramux.server.engines.transformers_engine import TransformersEngine

    root = tmp_path_factory.mktemp("slot-reuse")
    tok = AutoTokenizer.from_pretrained(demo_base)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                       add_generation_prompt=True, return_dict=False)
               for p in PROMPTS]
    adapters = [AdapterHandle(i + 1, f"reuse-r{rank}-{i}",
                              make_adapter(demo_base, root / f"a{i}", seed=900 + i, r=rank),
                              f"sha256:reuse{i}")
                for i, rank in enumerate(RANKS)]
    cycle: list[AdapterHandle | None] = [*adapters[:2], None, *adapters[2:]]
    rounds = [[(a, p) for a in order for p in range(len(prompts))]
              for order in (cycle, cycle[::-1])]
    reference = TransformersEngine(demo_base, quantization="none", dtype="float32")

    async def answer_all() -> dict:
        for a in adapters:
            await reference.load_adapter(a)
        out = {}
        for a in [None, *adapters]:
            for p, ids in enumerate(prompts):
                req = GenerationRequest(f"ref-{p}-{a.lora_id if a else 0}", list(ids),
                                        Sampling(max_tokens=MAX_TOKENS, temperature=0.0), a)
                out[a, p] = [t for d in [d async for d in reference.generate(req)]
                             for t in d.token_ids]
        return out

    expected = asyncio.run(answer_all())
    reference.shutdown()
    assert len({tuple(v) for v in expected.values()}) >= len(expected) - 1, \
        "each adapter must change the greedy output"
    return prompts, rounds, expected


@pytest.mark.parametrize("lora_ops", ["native", "python"])
def test_every_answer_is_its_own_adapters_after_slots_are_reused(
        lora_ops: str, oracle, demo_base: Path, tmp_path: Path, caplog,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from loramux.demo.smoke import make_llm
    from loramux.server.engines import lora_groups, lora_linear, vllm_patches
    from loramux.server.engines.native import build, loader

    prompts, rounds, expected = oracle
    keep_vllm_ops(monkeypatch)
    loader.load.cache_clear()
    if lora_ops == "python":  # a machine where the op was not built
        monkeypatch.setattr(build, "library_path", lambda: tmp_path / "loramux_lora_none.so")
    elif isinstance(loader.load(), str):
        pytest.skip(f"native LoRA op: {loader.load()}")
    with caplog.at_level(logging.WARNING, logger=loader.__name__):
        chosen = vllm_patches.choose_lora_ops("auto")  # as the server decides at start
    fallback = [r.getMessage() for r in caplog.records if r.name == loader.__name__]
    assert chosen == lora_ops
    assert len(fallback) == (1 if lora_ops == "python" else 0), fallback
    vllm_patches.apply(chosen)
    loader.load.cache_clear()

    activations, torch_calls = [], []
    slots_changed, add_linear = lora_groups.slots_changed, lora_linear.add_linear

    def count_activation() -> None:  # called each time vLLM writes an adapter into a slot
        activations.append(1)
        slots_changed()

    def count_torch_ops(*args, **kwargs) -> None:
        torch_calls.append(1)
        add_linear(*args, **kwargs)

    monkeypatch.setattr(lora_groups, "slots_changed", count_activation)
    monkeypatch.setattr(lora_linear, "add_linear", count_torch_ops)

    llm = make_llm(demo_base, "none", dtype="float32", max_loras=SLOTS, max_cpu_loras=SLOTS + 1,
                   max_num_seqs=8)
    got = {}
    try:
        for number, jobs in enumerate(rounds):
            outs = llm.generate(
                [TokensPrompt(prompt_token_ids=list(prompts[p])) for _, p in jobs],
                SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
                lora_request=[LoRARequest(a.name, a.lora_id, str(a.path)) if a else None
                              for a, _ in jobs], use_tqdm=False)
            for (a, p), out in zip(jobs, outs, strict=True):
                got[number, a, p] = list(out.outputs[0].token_ids)
    finally:
        del llm
        gc.collect()

    adapters = len(RANKS)
    assert len(activations) >= adapters + SLOTS, \
        f"{len(activations)} activations into {SLOTS} slots: slots were not reused enough"
    assert (len(torch_calls) > 0) == (lora_ops == "python")  # the op served every layer
    wrong = [(n, a.name if a else "base", p) for (n, a, p), tokens in got.items()
             if tokens != expected[a, p]]
    assert not wrong, wrong


def test_the_served_engine_runs_the_op_the_server_chose(server, base_loads) -> None:
    """`loramux serve` (the session's server, `lora_ops` left at auto) decides once and its
    engine-core process follows: the op's library is mapped there when it is built, and when it
    is not, the server's log says so in exactly one line and the server still answers."""
    import os

    from loramux.server.engines.native import build, loader

    answer = server.openai().chat.completions.create(
        model="rand-0", messages=[{"role": "user", "content": "Hello!"}], max_tokens=4)
    assert answer.choices[0].message.content is not None
    maps = Path(f"/proc/{base_loads().engine_pid}/maps").read_text()
    log = Path(os.readlink(f"/proc/{server.proc.pid}/fd/1")).read_text(errors="replace")
    fallback = log.count("native LoRA op unavailable")
    if isinstance(loader.load(), loader.NativeOp):
        assert build.library_path().name in maps
        assert fallback == 0
    else:
        assert "loramux_lora_" not in maps
        assert fallback == 1
