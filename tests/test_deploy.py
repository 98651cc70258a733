"""The images never serve without API keys (issue 12, item 3).

The images listen on 0.0.0.0, so their entrypoint refuses `serve` without a keys file (a mounted
secret or LORAMUX_API_KEYS) unless `--insecure-no-auth` is said out loud; the entrypoint runs
here with a stand-in `loramux` on PATH that only records its arguments. The Kubernetes kit's
server reads its keys from a secret volume: tests/deploy/test_k8s.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
ENTRYPOINT = DEPLOY / "entrypoint.sh"


@pytest.fixture
def run(tmp_path: Path):
    """`run(*args, **env)` → (exit code, stderr, the arguments `loramux` got or None)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv"
    stub = bin_dir / "loramux"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    stub.chmod(0o755)

    def call(*args: str, **env: str) -> tuple[int, str, list[str] | None]:
        record.unlink(missing_ok=True)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LORAMUX_")}
        done = subprocess.run([shutil.which("sh") or "/bin/sh", str(ENTRYPOINT), *args],
                              env=clean | {"PATH": f"{bin_dir}:{clean['PATH']}"} | env,
                              capture_output=True, text=True, timeout=30)
        argv = record.read_text().splitlines() if record.exists() else None
        return done.returncode, done.stderr, argv

    return call


SERVE = ("serve", "--base", "/models/base", "--host", "0.0.0.0", "--port", "8000")


def test_entrypoint_refuses_serve_without_keys(run, tmp_path: Path) -> None:
    code, err, argv = run(*SERVE)
    assert (code, argv) == (2, None)
    assert err.startswith("error: no API keys: mount a keys file at "
                          "/run/secrets/loramux-api-keys"), err
    assert len(err.strip().splitlines()) == 1


def test_entrypoint_serves_with_keys_or_when_told_to_be_open(run, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-x\n")
    assert run(*SERVE, LORAMUX_API_KEYS=str(keys))[2] == list(SERVE)
    assert run(*SERVE, "--api-keys", str(keys))[2] == [*SERVE, "--api-keys", str(keys)]
    assert run(*SERVE, "--insecure-no-auth")[2] == [*SERVE, "--insecure-no-auth"]
    assert run(*SERVE, LORAMUX_INSECURE_NO_AUTH="1")[2] == list(SERVE)
    registry = ("registry", "serve", "--root", "/data/registry", "--tokens", "/secrets/tokens")
    assert run(*registry)[2] == list(registry), "other commands pass through"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_images_start_through_the_entrypoint(name: str) -> None:
    text = (DEPLOY / name).read_text()
    entry = re.search(r"^ENTRYPOINT (.+)$", text, re.MULTILINE)
    assert entry and "deploy/entrypoint.sh" in entry.group(1), "the key check is bypassed"
    # That the entrypoint is copied into the image: tests/deploy/test_images.py.

