"""Where the demo keeps its files: loramux's cache folder (loramux.paths), so `loramux demo smoke`
finds the model `loramux demo base` built, from any folder."""

from __future__ import annotations

from pathlib import Path

from loramux.paths import default_cache

__all__ = ["default_base", "default_cache"]


def default_base() -> Path:
    """The demo base model's folder (built by `loramux demo base`)."""
    return default_cache() / "demo-base"
