"""Fixtures for the Hub tests: the Hub-compatible endpoint (tests/support/hub_server.py) on
loopback for the module, and the CLI runner of hub_cli.py per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Appended, not inserted: another folder's own `conftest` stays first by name.
sys.path.append(str(Path(__file__).parent))
sys.path.append(str(Path(__file__).parent.parent / "support"))

from hub_cli import TOKEN, Cli
from hub_server import HubServer, running_hub


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    with running_hub(HubServer(tokens={TOKEN})) as served:
        yield served


@pytest.fixture
def cli(hub: HubServer, tmp_path: Path) -> Cli:
    return Cli(hub, tmp_path / "hf-home", tmp_path / "registry")
