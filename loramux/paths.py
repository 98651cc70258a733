"""Where loramux keeps what it builds or converts when no flag says otherwise: one cache folder,
never the working directory.

In a source checkout (the usual case: `make demo`, the tests) that is `<repo>/.cache`, shared by
the demo base, the converted real base and the trained demo adapters; an installed package uses
`~/.cache/loramux`. Either way a command finds what another one built, from any folder.
"""

from __future__ import annotations

from pathlib import Path


def default_cache() -> Path:
    """The cache folder (absolute)."""
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file() and (repo / "loramux" / "demo").is_dir():
        return repo / ".cache"
    return Path.home() / ".cache" / "loramux"
