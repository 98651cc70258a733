"""The packaged real base, SmolLM2-135M-Instruct, converted once and checked against the GGUF:
same logits, embeddings still tied, its own chat template and default system prompt, both of its
end ids, and a coherent answer in bf16."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loramux.bases.packaged import packaged_gguf, real_base
from loramux.bases.provenance import read_provenance
from loramux.cli import app

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_provenance_names_the_packaged_file(real_base_dir: Path) -> None:
    packaged = packaged_gguf()
    record = read_provenance(real_base_dir)
    assert record is not None
    digest = hashlib.sha256(packaged.path.read_bytes()).hexdigest()
    assert record.source.sha256 == digest == packaged.sha256
    assert record.source.file_name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert record.source.size == packaged.path.stat().st_size
    assert (record.source.architecture, record.source.file_type) == ("llama", "MOSTLY_Q4_1")
    assert record.parameters == 134_515_008 and record.dtype == "bfloat16"


def test_the_cached_conversion_is_reused(real_base_dir: Path) -> None:
    started = time.perf_counter()
    assert real_base(real_base_dir) == real_base_dir
    assert time.perf_counter() - started < 5


def test_cli_reimport_is_a_noop_and_real_prints_the_folder(real_base_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["base", "import", str(packaged_gguf().path),
                                 "--out", str(real_base_dir)])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output
    result = runner.invoke(app, ["base", "real", "--out", str(real_base_dir)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(real_base_dir)


def test_the_folder_is_plain_transformers(real_base_dir: Path, real_model: tuple[Any, Any]) -> None:
    config = json.loads((real_base_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        30, 576, 49152)
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
    model, _ = real_model
    assert not getattr(model, "is_quantized", False)


def test_embeddings_stay_tied(real_base_dir: Path, real_model: tuple[Any, Any]) -> None:
    from safetensors import safe_open

    model, _ = real_model
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with safe_open(real_base_dir / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_chat_template_adds_the_default_system_prompt(real_model: tuple[Any, Any]) -> None:
    _, tokenizer = real_model
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
                    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    own = [{"role": "system", "content": "Be brief."}, *QUESTION]
    text = tokenizer.apply_chat_template(own, tokenize=False)
    assert DEFAULT_SYSTEM not in text and text.startswith("<|im_start|>system\nBe brief.")
    assert tokenizer("hi")["input_ids"][0] != tokenizer.bos_token_id  # the GGUF adds no bos


def test_generation_config_has_both_end_ids(real_base_dir: Path,
                                            real_model: tuple[Any, Any]) -> None:
    model, tokenizer = real_model
    generation = json.loads((real_base_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 0]
    assert (generation["bos_token_id"], generation["pad_token_id"]) == (1, 2)
    assert tokenizer.convert_ids_to_tokens([2, 0]) == ["<|im_end|>", "<|endoftext|>"]
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == [2, 0]


def test_greedy_answer_mentions_paris(real_model: tuple[Any, Any]) -> None:
    model, tokenizer = real_model
    batch = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    new = out[0, batch["input_ids"].shape[1]:]
    answer = tokenizer.decode(new, skip_special_tokens=True)
    assert "Paris" in answer, answer
    assert new[-1].item() == 2, "the answer should end on <|im_end|> within 12 tokens"


def test_logits_match_the_gguf_model(real_model: tuple[Any, Any]) -> None:
    """transformers' own GGUF loader, dequantized to the same dtype, gives the same logits."""
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    model, tokenizer = real_model
    gguf = packaged_gguf().path
    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True)).eval()
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text + "The capital", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(ids).logits.float()
        got = model(ids).logits.float()
    assert torch.allclose(got, expected, atol=1e-3, rtol=0), (got - expected).abs().max()
