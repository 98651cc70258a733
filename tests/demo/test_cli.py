"""The console script answers --help at every level, quickly and without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LORAMUX = Path(sys.executable).with_name("loramux")


@pytest.mark.parametrize("args", [[], ["registry"], ["demo"], ["demo", "base"], ["demo", "run"]])
def test_help(args: list[str]) -> None:
    result = subprocess.run([str(LORAMUX), *args, "--help"], capture_output=True, text=True,
                            timeout=60, env=os.environ | {"COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "Traceback" not in result.stderr


def test_version() -> None:
    from loramux import __version__

    result = subprocess.run([str(LORAMUX), "--version"], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == f"loramux {__version__}"


def test_bad_option_is_one_line() -> None:
    result = subprocess.run([str(LORAMUX), "demo", "smoke", "--model", "/nonexistent"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "holds no model" in result.stderr


def test_demo_data_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from loramux.cli import app

    result = CliRunner().invoke(app, ["demo", "data", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    for task in ("codeword", "caps"):
        for split in ("train", "eval"):
            lines = (tmp_path / "demo" / task / f"{split}.jsonl").read_text().splitlines()
            assert lines and all(json.loads(x)["messages"][-1]["role"] == "assistant"
                                 for x in lines)


def test_default_model_path_does_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    from loramux.demo.paths import default_base

    assert default_base().is_absolute()
    assert default_base() == Path(__file__).resolve().parents[2] / ".cache" / "demo-base"
    # Run from elsewhere: the error names the project's model folder, not ./.cache/demo-base.
    missing = tmp_path / "none"
    result = subprocess.run([str(LORAMUX), "demo", "smoke", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=missing.parent,
                            env=os.environ | {"COLUMNS": "200"})
    assert result.returncode == 0 and "the project's .cache/demo-base" in result.stdout
