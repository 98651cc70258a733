"""Session-wide fixtures shared by every part's tests.

The demo base model and the two demo adapters are built once and cached under .cache/, keyed by
their recipe (settings, data, library versions), so later runs and `make demo` reuse them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# tests/support/services.py: where the system services are found; its skips are summed up below.
sys.path.append(str(REPO / "tests" / "support"))
import services  # noqa: E402

DEMO_BASE = Path(os.environ.get("LORAMUX_DEMO_BASE", REPO / ".cache" / "demo-base"))
# Trained demo adapters, shared with `make demo` (loramux.demo.tour uses the same folder).
DEMO_ADAPTERS = Path(os.environ.get("LORAMUX_TRAINER_CACHE", REPO / ".cache" / "trainer-demo"))


@pytest.fixture(scope="session")
def demo_base() -> Path:
    from loramux.demo.base_model import build

    return build(DEMO_BASE).path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, Path]:
    from loramux.demo.tasks import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("demo-data"))


@pytest.fixture(scope="session")
def demo_adapters(demo_base: Path, demo_data: dict[str, Path]) -> dict[str, Path]:
    """task -> adapter folder, QLoRA-trained with the demo settings (cached across sessions)."""
    from loramux.demo.trained import cached_demo_adapters

    return cached_demo_adapters(demo_base, demo_data, DEMO_ADAPTERS, progress=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: after the short test summary
def pytest_terminal_summary(terminalreporter):
    """One line: which system services were missing and which tests skipped for them."""
    result = yield
    line = services.summary_line(terminalreporter.stats.get("skipped", []))
    if line:
        terminalreporter.write_line(line, yellow=True, bold=True)
    return result
