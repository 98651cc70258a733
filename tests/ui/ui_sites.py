"""The servers the web-page tests open in the browser, and their secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from loramux.support.launch import RegistryProcess

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




@dataclass
class Playground:
    """A live `loramux serve` (vLLM) whose registry holds `ui-demo`: v1 the caps adapter,
    v2 the codeword one, `ui-demo:prod` on v1."""

    url: str
    registry_dir: Path
    key: str


def running_session_server(session) -> object | None:
    """The `server` fixture of tests/server/conftest.py, when this session already started it
    (a fixture of another folder's conftest cannot be requested from here; starting a second
    vLLM engine would cost a minute and GBs)."""
    for item in session.items:
        info = getattr(item, "_fixtureinfo", None)
        for fixturedef in (info.name2fixturedefs.get("server", ()) if info else ()):
            cached = fixturedef.cached_result
            if cached is not None and cached[2] is None:
                return cached[0]
    return None


def publish_demo(store: Path, demo_adapters: dict[str, Path], name: str) -> None:
    from loramux.trainer.publish import publish_trained

    publish_trained(demo_adapters["caps"], name, store, alias="prod", force=True)
    publish_trained(demo_adapters["codeword"], name, store, force=True)


def serve_registry(store: Path, root: Path) -> RegistryProcess:
    """`loramux registry serve` of `store` with an admin and a read token."""
    tokens = root / "tokens.txt"
    tokens.write_text(f"{ADMIN}:admin:ui-admin\n{READER}:read:reader\n")
    return RegistryProcess(store, root / "registry.log", ["--tokens", str(tokens)])
