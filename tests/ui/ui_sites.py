"""The servers the web-page tests open in the browser, and their secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ADMIN, READER = "ui-admin-secret", "ui-reader-secret"


@dataclass
class RegistrySite:
    url: str
    root: Path

    def cli(self, *args: str, token: str = ADMIN) -> str:
        """`loramux registry --registry URL ARGS` as a user runs it; its stdout."""
        done = subprocess.run([sys.executable, "-m", "loramux.cli", "registry", "--registry",
                               self.url, *args], capture_output=True, text=True, timeout=120,
                              env=os.environ | {"LORAMUX_TOKEN": token})
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout


