"""The deploy kit's tests: the images, the Kubernetes manifests, the compose stack, monitoring."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
