"""The registry's fixtures (tiny adapters, a real HTTP registry server, every backend
combination): registry_fixtures.py, which tests in other folders import too."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "support"))

from registry_fixtures import (  # noqa: F401  (fixtures, registered here; names tests import)
    COMBOS,
    Backend,
    adapters,
    backend,
    http_server,
    make_adapter,
    postgres_dsn,
    postgres_server,
)
