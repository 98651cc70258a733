"""The output folder is a clean adapter: ``loramux train --out OUT`` then ``loramux registry push
OUT`` works, because checkpoints live beside it (``OUT.checkpoints/``) and are deleted when the
run finishes unless ``--keep-checkpoints``. Both through the real CLI, a few steps on the demo
base. The old layout (``OUT/checkpoints/``) is noticed before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramux.cli import app
from loramux.registry.manifest import QuantizationInfo
from loramux.registry.push_args import PUSH_FACTS
from loramux.trainer.checkpoints import checkpoint_dir, remove_checkpoints, resume_from
from loramux.trainer.config import build_config
from loramux.trainer.errors import ConfigError
from loramux.trainer.publish import quantization_info

runner = CliRunner()
TINY = ["--max-steps", "2", "--no-eval", "--no-progress", "--threads", "2", "--batch-size", "8",
        "--max-seq-length", "128"]


def _train(demo_base: Path, data: Path, out: Path, *extra: str):
    result = runner.invoke(app, ["train", "--base", str(demo_base), "--data", str(data),
                                 "--out", str(out), *TINY, *extra])
    assert result.exit_code == 0, result.output
    return result


def _push(registry: Path, folder: Path, name: str, *extra: str):
    return runner.invoke(app, ["registry", "--registry", str(registry), "push", str(folder),
                               "--name", name, *extra], env={"LORAMUX_TOKEN": ""})


@pytest.mark.slow
def test_a_finished_run_pushes_as_it_is(demo_base: Path, small_chat: Path,
                                        tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    _train(demo_base, small_chat, out)
    assert not checkpoint_dir(out).exists(), "a finished run leaves no checkpoints"
    assert {p.name for p in out.iterdir()} == {  # README.md: peft's model card
        "adapter_config.json", "adapter_model.safetensors", "README.md", "train_config.yaml",
        "training_report.json", "loss_curve.png", PUSH_FACTS}
    pushed = _push(tmp_path / "registry", out, "tiny", "--json")
    assert pushed.exit_code == 0, pushed.output
    # The push records what `train --publish` would: lineage and quantization, from the run.
    manifest = json.loads(pushed.stdout)
    report = json.loads((out / "training_report.json").read_text())
    config = build_config(out / "train_config.yaml", {})
    assert manifest["lineage"]["dataset_digest"] == report["data"]["train_digest"]
    assert manifest["lineage"]["hyperparameters"] == json.loads(
        json.dumps(config.hyperparameters(), default=str))
    recorded = QuantizationInfo.model_validate(quantization_info(config, report))
    assert manifest["quantization"] == recorded.model_dump(mode="json")
    assert manifest["quantization"]["method"] == "nf4"  # QLoRA: what a default server checks
    assert PUSH_FACTS not in {f["path"] for f in manifest["files"]}


@pytest.mark.slow
def test_keep_checkpoints_keeps_them_beside_the_adapter(demo_base: Path, small_chat: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    result = _train(demo_base, small_chat, out, "--keep-checkpoints")
    kept = tmp_path / "adapter.checkpoints"
    assert sorted(p.name for p in kept.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert f"checkpoints:{kept}" in "".join(result.output.split())  # rich folds long lines
    assert not list(out.rglob("*.pt")) and not (out / "checkpoints").exists()
    assert _push(tmp_path / "registry", out, "tiny").exit_code == 0

    # a checkpoint is not an adapter to push: the refusal names its trainer state
    refused = _push(tmp_path / "registry", kept / "checkpoint-2", "tiny")
    assert refused.exit_code != 0
    message = " ".join(refused.output.split())
    assert "optimizer.pt" in message and "not adapter weights" in message
    assert "safe_serialization" not in message

    # the next run in the same folder needs --resume or --overwrite; --overwrite clears them
    config = build_config(None, {"base": str(demo_base), "data": small_chat, "out": out})
    with pytest.raises(ConfigError, match=r"adapter\.checkpoints holds checkpoints"):
        resume_from(config)
    assert resume_from(config.model_copy(update={"resume": True})).endswith("checkpoint-2")


def test_the_old_layout_is_noticed(tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    (out / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    config = build_config(None, {"base": "b", "data": tmp_path / "d.jsonl", "out": out})
    for options in ({}, {"resume": True}):
        with pytest.raises(ConfigError) as refused:
            resume_from(config.model_copy(update=options))
        assert f"mv {out / 'checkpoints'} {tmp_path / 'adapter.checkpoints'}" in \
            str(refused.value)
    assert resume_from(config.model_copy(update={"overwrite": True})) is None
    remove_checkpoints(out)
    assert not (out / "checkpoints").exists()
    assert resume_from(config) is None
