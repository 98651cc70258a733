"""QLoRA fine-tuning from a data file to a saved (and optionally published) adapter.

The public API is ``train(config) -> TrainResult`` with ``config`` a ``TrainConfig``, a dict of
its fields or a YAML path. The names are loaded on first use, so ``import loramux.trainer`` (done
by the ``loramux`` console script for every command) stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loramux.trainer.api import TrainResult, train
    from loramux.trainer.config import TrainConfig

_PUBLIC = {"train": "loramux.trainer.api", "TrainResult": "loramux.trainer.api",
           "TrainConfig": "loramux.trainer.config"}

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
