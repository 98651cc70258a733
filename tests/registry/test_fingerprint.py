"""Base fingerprints: stable where the model is the same, different where it is not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from registry_support import TEMPLATE, make_base

from loramux.registry import InvalidBaseModel, LocalRegistry
from loramux.registry.fingerprint import base_components, base_fingerprint, compare


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_base(tmp_path / "base")


def test_stable_and_location_independent(base: Path, tmp_path: Path) -> None:
    fp = base_fingerprint(base)
    assert fp.startswith("sha256:") and len(fp) == 71
    assert base_fingerprint(base) == fp
    moved = shutil.copytree(base, tmp_path / "elsewhere")
    config = json.loads((moved / "config.json").read_text())
    config.update(_name_or_path="/other/place", transformers_version="5.0.0", dtype="bfloat16")
    del config["torch_dtype"]  # transformers 5 renamed the key
    (moved / "config.json").write_text(json.dumps(config, indent=4))
    (moved / "generation_config.json").write_text('{"temperature": 0.3}')
    assert base_fingerprint(moved) == fp


def test_template_location_does_not_matter(base: Path, tmp_path: Path) -> None:
    moved = shutil.copytree(base, tmp_path / "jinja")
    tok = json.loads((moved / "tokenizer_config.json").read_text())
    (moved / "chat_template.jinja").write_text(tok.pop("chat_template"))
    (moved / "tokenizer_config.json").write_text(json.dumps(tok))
    assert base_fingerprint(moved) == base_fingerprint(base)


@pytest.mark.parametrize("change,component", [
    ("template", "chat_template"),
    ("no-template", "chat_template"),
    ("weights", "weights"),
    ("config", "config"),
    ("tokenizer", "tokenizer"),
])
def test_each_component_is_detected(base: Path, tmp_path: Path, change: str,
                                    component: str) -> None:
    other = shutil.copytree(base, tmp_path / "other")
    if change == "template":
        tok = json.loads((other / "tokenizer_config.json").read_text())
        tok["chat_template"] = TEMPLATE.replace("<|", "[")
        (other / "tokenizer_config.json").write_text(json.dumps(tok))
    elif change == "no-template":
        tok = json.loads((other / "tokenizer_config.json").read_text())
        del tok["chat_template"]
        (other / "tokenizer_config.json").write_text(json.dumps(tok))
    elif change == "weights":  # same shapes, one different value: a fine-tune of the same base
        (other / "model.safetensors").unlink()
        make_base(tmp_path / "seed1", seed=1)
        shutil.copy(tmp_path / "seed1" / "model.safetensors", other / "model.safetensors")
    elif change == "config":
        config = json.loads((other / "config.json").read_text())
        config["num_hidden_layers"] = 3
        (other / "config.json").write_text(json.dumps(config))
    else:
        (other / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 1, "b": 0}}}))
    assert base_fingerprint(other) != base_fingerprint(base)
    assert compare(base_components(base), base_components(other)) == [component]


def test_not_a_model(tmp_path: Path, base: Path) -> None:
    with pytest.raises(InvalidBaseModel, match=r"config\.json"):
        base_fingerprint(tmp_path)
    (base / "model.safetensors").unlink()
    with pytest.raises(InvalidBaseModel, match="weight files"):
        base_fingerprint(base)


def test_push_records_the_base_and_list_filters_by_it(base: Path, tmp_path: Path,
                                                      adapters) -> None:
    other = make_base(tmp_path / "other", seed=5)
    with LocalRegistry(tmp_path / "store") as registry:
        m = registry.push(adapters["a"], "on-base", base_model=base, quantization="nf4+dq+bf16")
        registry.push(adapters["b"], "on-other", base_model=other)
        registry.push(adapters["c8"], "unknown-base")
        assert m.base_fingerprint == base_fingerprint(base)
        assert m.base_components == base_components(base)
        assert str(m.quantization) == "nf4+dq+bfloat16"
        assert [v.name for v in registry.list(base_fingerprint=m.base_fingerprint)] == ["on-base"]
        with pytest.raises(InvalidBaseModel, match="not the"):
            registry.push(adapters["a"], "x", base_model=base,
                          base_fingerprint=base_fingerprint(other))
