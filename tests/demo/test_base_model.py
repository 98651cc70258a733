"""The demo base model: built deterministically, cached by recipe, and standard HF format."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loramux.demo.base_model import RECIPE_FILE, DemoRecipe, build, is_built


def _greedy(model, tok, prompt: str, max_new_tokens: int = 24) -> str:
    enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=False)


def test_recipe_cache_reused(demo_base: Path) -> None:
    assert is_built(demo_base)
    again = build(demo_base)
    assert again.cached and again.path == demo_base
    changed = replace(DemoRecipe(), steps=DemoRecipe().steps + 1)
    assert changed.digest() != DemoRecipe().digest()
    assert not is_built(demo_base, changed)


def test_folder_is_standard_hf(demo_base: Path) -> None:
    names = {p.name for p in demo_base.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", RECIPE_FILE} <= names
    assert not any(n.endswith(".bin") for n in names), "weights must be safetensors only"
    config = json.loads((demo_base / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_chat_template_roles_and_end_of_turn(demo_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(demo_base)
    text = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
         {"role": "assistant", "content": "A"}], tokenize=False)
    assert text == "<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\nA<|end|>\n"
    prompt = tok.apply_chat_template([{"role": "user", "content": "U"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    assert tok.eos_token == "<|end|>"
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_generates_in_chat_format(demo_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(demo_base)
    model = AutoModelForCausalLM.from_pretrained(demo_base, dtype=torch.float32)
    answer = _greedy(model, tok, "Hello!")
    # The pretrained model answers a greeting and closes its turn with the end-of-turn token.
    assert answer.endswith("<|end|>"), answer
    assert len(answer) > len("<|end|>") and "<|user|>" not in answer


def test_loads_in_peft_and_lora_changes_output(demo_base: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    tok = AutoTokenizer.from_pretrained(demo_base)
    base = AutoModelForCausalLM.from_pretrained(demo_base, dtype=torch.float32)
    enc = tok("<|user|>\nHello!<|end|>\n<|assistant|>\n", return_tensors="pt")
    with torch.no_grad():
        before = base(**enc).logits
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    fresh = AutoModelForCausalLM.from_pretrained(demo_base, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    with torch.no_grad():
        after = loaded(**enc).logits
    assert not torch.allclose(before, after)


TINY = dict(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
            num_attention_heads=1, num_key_value_heads=1, corpus_dialogues=300, seq_len=64,
            batch_size=4, steps=3, warmup=1)


def test_build_is_deterministic(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORAMUX_BUILD_STORE", "off")  # both builds must run
    tiny = DemoRecipe(**TINY)
    first, second = build(tmp_path / "a", tiny), build(tmp_path / "b", tiny)
    assert not first.cached and not second.cached
    for name in ("model.safetensors", "tokenizer.json"):
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes(), name


def test_a_stored_build_is_reused_by_a_fresh_checkout(tmp_path: Path, monkeypatch) -> None:
    """A second clone's empty .cache gets the base this machine built, not a rebuild."""
    monkeypatch.setenv("LORAMUX_BUILD_STORE", str(tmp_path / "store"))
    tiny = DemoRecipe(**TINY, seed=99)
    first = build(tmp_path / "clone1" / "demo-base", tiny)
    second = build(tmp_path / "clone2" / "demo-base", tiny)
    assert not first.cached and second.cached
    for name in ("model.safetensors", "tokenizer.json", "loramux_demo_recipe.json"):
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes(), name
    assert is_built(second.path, tiny)
    other = build(tmp_path / "clone3" / "demo-base", replace(tiny, steps=4))
    assert not other.cached  # another recipe is another key
