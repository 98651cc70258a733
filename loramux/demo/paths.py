"""Where the demo keeps its files when no flag says otherwise: one cache folder, never the cwd.

In a source checkout (the usual case: `make demo`, the tests) that is `<repo>/.cache`, shared
with the tests' cached base model and adapters; an installed package uses `~/.cache/loramux`.
Either way `loramux demo smoke` finds the model `loramux demo base` built, from any folder.
"""

from __future__ import annotations

from pathlib import Path


def default_cache() -> Path:
    """The demo's cache folder (absolute)."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "loramux" / "demo").is_dir():
        return repo / ".cache"
    return Path.home() / ".cache" / "loramux"


def default_base() -> Path:
    """The demo base model's folder (built by `loramux demo base`)."""
    return default_cache() / "demo-base"
