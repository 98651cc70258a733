"""The deploy kit's tests: Kubernetes manifests, the compose stack, its monitoring config."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
