"""The demo base model is servable the way loramux serves it: vLLM, LoRA on, bf16 and NF4."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["none", "bitsandbytes"])
def engine(request, demo_base: Path):
    from loramux.demo.smoke import make_llm

    llm = make_llm(demo_base, request.param)
    yield request.param, llm
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
