"""Options: YAML + flag precedence, aliases, readable errors, resolved config round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from loramux.trainer.config import TrainConfig, build_config
from loramux.trainer.errors import ConfigError


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_defaults_are_qlora(tmp_path: Path) -> None:
    cfg = build_config(None, {"base": "b", "data": "d.jsonl", "out": "o"})
    assert cfg.quantize and cfg.quant_type == "nf4" and cfg.double_quant
    assert cfg.compute_dtype == "auto"  # bf16 where the hardware has it (test_hardware)
    assert cfg.target_modules == "all-linear"
    assert cfg.gradient_checkpointing
    assert cfg.optimizer == "auto"
    assert cfg.out.is_absolute() and cfg.data.is_absolute()


def test_yaml_then_flags_override(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "base: some/model\ndata: data/train.jsonl\nout: run\n"
                           "lora_r: 8\nn_epochs: 2\nlr: 0.001\ncutoff_len: 256\n")
    cfg = build_config(path, {"r": 4, "epochs": None, "max_steps": 7})
    assert cfg.r == 4  # the flag wins
    assert cfg.epochs == 2  # other tools' spellings are aliases
    assert cfg.learning_rate == 0.001 and cfg.max_seq_length == 256 and cfg.max_steps == 7
    # Relative paths in a YAML file are relative to that file.
    assert cfg.data == (tmp_path / "data" / "train.jsonl").resolve()
    assert cfg.out == (tmp_path / "run").resolve()


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = build_config(None, {"base": "b", "data": "d.jsonl", "out": "o", "r": 4,
                              "target_modules": "q_proj, v_proj", "labels": {"team": "x"}})
    assert cfg.target_modules == ["q_proj", "v_proj"]
    saved = cfg.save(tmp_path / "train_config.yaml")
    assert build_config(saved) == cfg


@pytest.mark.parametrize(("overrides", "message"), [
    ({"lora_rank": 0}, "r: Input should be greater than or equal to 1"),
    ({"learning_rate": -1}, "learning_rate"),
    ({"eval": "e.jsonl", "eval_split": 0.1}, "either eval"),
    ({"publish": True}, "publish needs a name"),
    ({"alias": "prod"}, "alias only applies"),
    ({"resume": True, "overwrite": True}, "pick one"),
    ({"early_stopping_patience": 2}, "needs eval data"),
    ({"lr_scheduler": "sometimes"}, "lr_scheduler"),
    ({"learnin_rate": 0.1}, "did you mean 'learning_rate'"),
])
def test_bad_options_are_readable(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(None, {"base": "b", "data": "d.jsonl", "out": "o", **overrides})
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_missing_required_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data: required"):
        build_config(None, {"base": "b", "out": "o"})
    with pytest.raises(ConfigError, match=r"train.yaml:\d+: invalid YAML"):
        build_config(_yaml(tmp_path, "base: b\ndata: [unclosed\nout: o\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_config(_yaml(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "nope.yaml")


def test_hyperparameters_exclude_paths_and_publishing() -> None:
    cfg = TrainConfig(base="b", data=Path("d"), out=Path("o"), name="x", publish=True)
    hp = cfg.hyperparameters()
    assert hp["r"] == 16 and hp["quantize"] is True
    assert not {"base", "data", "out", "name", "publish", "registry"} & set(hp)
