"""The console script answers --help at every level, quickly and without a traceback."""

from __future__ import annotations

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
