"""The CLI: one readable error line (exit 2, no traceback) before training; dry run."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from loramux.trainer.cli import _standalone

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(_standalone(), list(args))


def test_bad_data_exits_2_with_file_line_and_column(tmp_path: Path) -> None:
    """Data is checked before anything else: no base model is needed to see the problem, and
    the "training ... from ..." banner never shows above it."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    result = _run("train", "--base", str(tmp_path / "no-model"), "--data", str(data),
                  "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:"), result.output
    assert "training" not in result.output
    assert f"{data}:1: no assistant turn" in result.output
    assert f"{data}:2:2: bad JSON: Expecting property name" in result.output
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
    assert "data ok: 29 train / 3 eval chat examples" in result.output  # 10 % held out


# Every flag spelling the trainer ever had; generated flags must keep them all.
OLD_FLAGS = [
    "--base", "--data", "--eval", "--eval-split", "--out", "--config", "-c", "--name", "--publish",
    "--no-publish", "--registry", "--alias", "--description", "--label", "--resume", "--overwrite",
    "--quantize", "--no-quantize", "--format", "--prompt-template", "--skip-bad-records",
    "--max-seq-length", "--packing", "--no-packing", "--r", "--lora-r", "--lora-alpha",
    "--lora-dropout", "--bias", "--target-modules", "--rslora", "--no-rslora", "--epochs",
    "--max-steps", "--batch-size", "--grad-accum", "--gradient-accumulation-steps", "--lr",
    "--learning-rate", "--lr-scheduler", "--warmup-ratio", "--warmup-steps", "--weight-decay",
    "--optimizer", "--gradient-checkpointing", "--no-gradient-checkpointing", "--seed",
    "--eval-steps", "--early-stopping-patience", "--patience", "--save-steps", "--logging-steps",
    "--device", "--threads", "--progress", "--no-progress", "--dry-run"
]


def _train_command():
    import typer

    return typer.main.get_command(_standalone()).commands["train"]


def test_one_flag_per_config_field_with_its_help_and_default() -> None:
    from loramux.trainer.config import TrainConfig

    params = {p.name: p for p in _train_command().params}
    names = {n for p in params.values() for n in (*p.opts, *p.secondary_opts)}
    assert set(OLD_FLAGS) <= names, set(OLD_FLAGS) - names
    for name, field in TrainConfig.model_fields.items():
        assert name in params, f"no flag for {name}"
        assert field.description and params[name].help.startswith(field.description)
        assert params[name].default is None  # not given: the YAML file or the field decides
    assert "[0.0002]" in params["learning_rate"].help and "[cosine]" in params["lr_scheduler"].help


def test_generated_flags_reach_the_config(tmp_path: Path, small_chat: Path) -> None:
    result = _run("train", "--base", "m", "--data", str(small_chat), "--out", "o", "--dry-run",
                  "--no-double-quant", "--quant-type", "fp4", "--max-grad-norm", "0.5",
                  "--save-total-limit", "5", "--label", "task=x", "--lora-r", "4",
                  "--grad-accum", "3", "--patience", "2", "--eval-split", "0.25", "--rslora",
                  "--skip-bad-records", "--target-modules", "q_proj,v_proj")
    assert result.exit_code == 0, result.output
    for line in ("double_quant: false", "quant_type: fp4", "max_grad_norm: 0.5",
                 "save_total_limit: 5", "task: x", "r: 4", "gradient_accumulation_steps: 3",
                 "early_stopping_patience: 2", "use_rslora: true", "skip_bad_records: true",
                 "- q_proj"):
        assert line in result.output, line
    bad = _run("train", "--base", "m", "--data", "d", "--out", "o", "--device", "tpu")
    assert bad.exit_code == 2 and "device: Input should be 'auto', 'cpu' or 'cuda'" in bad.output
    bad = _run("train", "--base", "m", "--data", "d", "--out", "o", "--label", "novalue")
    assert bad.exit_code == 2 and "expected key=value" in bad.output


def test_help_fits_80_columns() -> None:
    import os
    import subprocess
    import sys

    from loramux.trainer.config import TrainConfig

    loramux = Path(sys.executable).with_name("loramux")
    result = subprocess.run([str(loramux), "train", "--help"], capture_output=True, text=True,
                            timeout=120, env=os.environ | {"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "…" not in result.stdout
    flat = " ".join(result.stdout.split())
    for field in TrainConfig.model_fields.values():
        assert field.description in flat, field.description
    # One line per option, or two when its names are long: never a help text in shreds.
    options = [line for line in lines if line.lstrip().startswith("-")]
    assert len(lines) - len(options) < 20 + len(options) // 3, result.stdout
