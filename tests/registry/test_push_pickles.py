"""Push refuses pickle files with the remedy that fits them: a trainer's checkpoint state is left
out of the push (not converted); only pickled adapter weights get the safetensors hint."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramux.registry import PickleWeights
from loramux.registry.cli import app
from loramux.registry.store import LocalRegistry

STATE = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def _with(folder: Path, *paths: str) -> Path:
    for rel in paths:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"\x80\x04\x95pickle")
    return folder


def test_checkpoints_inside_the_folder_are_named_with_the_folder_to_move(
        make_adapter, tmp_path: Path) -> None:
    folder = _with(make_adapter(), *(f"checkpoints/checkpoint-2/{n}" for n in STATE))
    with LocalRegistry(tmp_path / "store") as store, pytest.raises(PickleWeights) as refused:
        store.push(folder, "x")
    message = str(refused.value)
    for name in STATE:
        assert f"checkpoints/checkpoint-2/{name}" in message
    assert "not adapter weights" in message and "push only the adapter" in message
    assert "remove or move checkpoints/ out of the folder" in message
    assert "OUT.checkpoints/" in message
    assert "safe_serialization" not in message and "torch.load" not in message


def test_a_checkpoint_folder_pushed_itself_is_told_to_push_the_adapter(
        make_adapter, tmp_path: Path) -> None:
    folder = _with(make_adapter(), *STATE)  # e.g. `push OUT.checkpoints/checkpoint-2`
    with LocalRegistry(tmp_path / "store") as store, pytest.raises(PickleWeights) as refused:
        store.push(folder, "x")
    message = str(refused.value)
    assert ", ".join(sorted(STATE)) in message
    assert "push the adapter saved at the end of training" in message
    assert "safe_serialization" not in message


def test_pickled_adapter_weights_get_the_convert_hint(make_adapter, tmp_path: Path) -> None:
    folder = _with(make_adapter(), "adapter_model.bin", "extra.pkl")
    with LocalRegistry(tmp_path / "store") as store, pytest.raises(PickleWeights) as refused:
        store.push(folder, "x")
    message = str(refused.value)
    assert "adapter_model.bin: pickle weights can run arbitrary code" in message
    assert "safe_serialization=True" in message and "torch.load('adapter_model.bin'" in message
    assert "extra.pkl: pickle files can run arbitrary code" in message
    assert "not adapter weights" not in message


def test_the_cli_says_it_in_one_error(make_adapter, tmp_path: Path) -> None:
    folder = _with(make_adapter(), "checkpoints/checkpoint-1/optimizer.pt")
    result = CliRunner().invoke(app, ["--registry", str(tmp_path / "store"), "push",
                                      str(folder), "--name", "x"], env={"LORAMUX_TOKEN": ""})
    assert result.exit_code != 0
    assert result.output.startswith("error:"), result.output
    assert "checkpoints/checkpoint-1/optimizer.pt: training checkpoint state" in result.output
    assert "Traceback" not in result.output
