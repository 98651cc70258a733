"""Release management's tests run against the registry's fixtures (registry_fixtures.py: a real
HTTP registry server) and, for the serving side, the server tests' fake engine."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).parents[1] / "registry"))

from registry_fixtures import http_server  # noqa: F401  (a fixture, registered here)
