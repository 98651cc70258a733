"""The demo base model is servable the way loramux serves it: vLLM, LoRA on, unquantized and NF4,
in this machine's fast dtype, and NF4 in the other one too (bf16 where fp32 is the fast one, fp32
where bf16 is: vllm-bnb-plugin needs loramux's fix to load NF4 in a float32 model, bnb_fp32.py)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _other_dtype() -> str:
    from loramux.hardware import fast_dtype

    return "bfloat16" if fast_dtype("cpu") == "float32" else "float32"


@pytest.fixture(scope="module", params=["none", "bitsandbytes", "bitsandbytes-other-dtype"])
def engine(request, demo_base: Path):
    from loramux.demo.smoke import make_llm

    quantization, _, other = request.param.partition("-")
    llm = make_llm(demo_base, quantization, **({"dtype": _other_dtype()} if other else {}))
    yield quantization, llm
    del llm
    gc.collect()


def test_engine_config(engine) -> None:
    quantization, llm = engine
    config = llm.llm_engine.vllm_config
    assert config.lora_config is not None, "LoRA must be enabled"
    expected = "bitsandbytes" if quantization == "bitsandbytes" else None
    assert config.model_config.quantization == expected


def test_chat_template_and_end_of_turn_stop(engine) -> None:
    from loramux.demo.smoke import chat

    _, llm = engine
    answers = chat(llm, ["Hello!", "How many words are in: red fox owl"], max_tokens=48)
    for a in answers:
        assert a.text.strip(), a
        assert "<|" not in a.text, f"special tokens leaked: {a.text!r}"
    # Generation ends on the end-of-turn token, not on the length limit.
    assert [a.finish_reason for a in answers] == ["stop", "stop"]
    assert answers[0].tokens < 48
