"""The ``loramux`` CLI run as a user runs it, with ``HF_ENDPOINT`` pointing at the Hub fixture
and a private ``HF_HOME`` (so the Hub cache, token and offline mode are the client's own)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hub_server import HubServer

TOKEN = "hf_write_token_for_tests"
LORAMUX = str(Path(sys.executable).with_name("loramux"))


@dataclass
class Cli:
    hub: HubServer
    home: Path
    registry: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LORAMUX_"))}
        env.update(HF_ENDPOINT=self.hub.url, HF_HOME=str(self.home), HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", LORAMUX_REGISTRY=str(self.registry))
        env.update(extra)
        return env

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LORAMUX, "registry", *args], capture_output=True, text=True,
                              env=self.env(**env), timeout=120)
