"""Session-wide fixtures shared by every part's tests.

The demo base model is built once (cached under .cache/ by its recipe hash, so later runs and
`make demo` reuse it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_BASE = Path(os.environ.get("LORAMUX_DEMO_BASE", REPO / ".cache" / "demo-base"))


@pytest.fixture(scope="session")
def demo_base() -> Path:
    from loramux.demo.base_model import build

    return build(DEMO_BASE).path
