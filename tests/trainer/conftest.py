"""Trainer fixtures: small data files (the demo data and adapters are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_chat(demo_data) -> Path:
    """32 codeword chat records: enough for a few training steps."""
    lines = (demo_data["codeword"] / "train.jsonl").read_text().splitlines()[:32]
    path = demo_data["codeword"].parent / "small.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
