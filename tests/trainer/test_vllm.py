"""A trained adapter loads in vLLM (NF4 base, LoRA enabled) and changes its greedy output.

One engine for the module (it takes ~40 s to start on a CPU).
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from loramux.demo.tasks import exact_match, load_eval

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(demo_base: Path):
    from loramux.demo.smoke import make_llm

    engine = make_llm(demo_base, "bitsandbytes")
    yield engine
    del engine
    gc.collect()


def test_adapter_loads_in_vllm_and_changes_output(llm, demo_adapters: dict[str, Path],
                                                  demo_data: dict[str, Path]) -> None:
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    items = load_eval(demo_data["codeword"] / "eval.jsonl")
    conversations = [i.messages for i in items]
    params = SamplingParams(temperature=0.0, max_tokens=8)
    plain = [o.outputs[0].text for o in llm.chat(conversations, params, use_tqdm=False)]
    lora = LoRARequest("codeword", 1, str(demo_adapters["codeword"]))
    tuned = [o.outputs[0].text
             for o in llm.chat(conversations, params, lora_request=lora, use_tqdm=False)]
    expected = [i.expected for i in items]
    assert plain != tuned
    assert exact_match(plain, expected) <= 0.1
    # vLLM's NF4 path is numerically close to, not identical with, bitsandbytes' in transformers.
    score = exact_match(tuned, expected)
    print(f"\nvLLM exact match, codeword adapter on held-out prompts: {score:.0%}")
    assert score >= 0.8, list(zip(tuned, expected, strict=True))[:8]
