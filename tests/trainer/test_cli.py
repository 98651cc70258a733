"""The CLI: one readable error line (exit 2, no traceback) before training; dry run; demo data."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from loramux.trainer.cli import _standalone

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(_standalone(), list(args))


def test_bad_data_exits_2_with_file_and_line(tmp_path: Path, demo_base: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    result = _run("train", "--base", str(demo_base), "--data", str(data),
                  "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    assert f"{data}:1: no assistant turn" in result.output
    assert f"{data}:2: bad JSON" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_bad_options_exit_2(tmp_path: Path) -> None:
    result = _run("train", "--base", "x", "--data", "d.jsonl", "--out", "o", "--r", "0")
    assert result.exit_code == 2 and "r: Input should be greater than or equal to 1" in \
        result.output
    result = _run("train", "--base", "x", "--data", "d.jsonl", "--out", "o", "--publish")
    assert result.exit_code == 2 and "publish needs a name" in result.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text("base: x\ndata: d.jsonl\nout: o\nlora_rnk: 4\n")
    result = _run("train", "--config", str(cfg))
    assert result.exit_code == 2 and "lora_rnk: unknown option" in result.output
    result = _run("train", "--base", "x", "--data", "d.jsonl", "--out", "o", "--publish",
                  "--name", "Bad Name")
    assert result.exit_code == 2 and "invalid adapter name" in result.output
    assert "Traceback" not in result.output


def test_missing_base_is_readable(tmp_path: Path, small_chat: Path) -> None:
    result = _run("train", "--base", str(tmp_path / "no-such-model"), "--data", str(small_chat),
                  "--out", str(tmp_path / "out"), "--no-progress")
    assert result.exit_code == 2, result.output
    assert "cannot load the base model" in result.output and "Traceback" not in result.output


def test_dry_run_prints_resolved_config(tmp_path: Path, small_chat: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"base: some-model\ndata: {small_chat}\nout: run\nlora_r: 4\n")
    result = _run("train", "--config", str(cfg), "--lr", "0.001", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "r: 4" in result.output and "learning_rate: 0.001" in result.output
    assert "data ok: 32 train / 0 eval chat examples" in result.output


def test_demo_data_command(tmp_path: Path) -> None:
    result = _run("demo", "data", "--out", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    for task in ("codeword", "caps"):
        for split in ("train", "eval"):
            lines = (tmp_path / "demo" / task / f"{split}.jsonl").read_text().splitlines()
            assert lines and all(json.loads(x)["messages"][-1]["role"] == "assistant"
                                 for x in lines)
