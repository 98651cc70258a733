"""Where a run's intermediate checkpoints live: next to the adapter folder, never inside it.

``OUT`` holds only the adapter and the files that explain it, so ``loramux registry push OUT``
works on a finished run; the checkpoints (optimizer, scheduler and RNG state: pickles the
registry refuses) go to the sibling ``OUT.checkpoints/`` and are deleted once the adapter is
saved, unless ``--keep-checkpoints``. An interrupted or failed run keeps them, for ``--resume``.
Runs of earlier loramux versions wrote them to ``OUT/checkpoints/``: that folder is noticed and
the user told how to move it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from loramux.trainer.config import TrainConfig
from loramux.trainer.errors import ConfigError

SUFFIX = ".checkpoints"
OLD_LAYOUT = "checkpoints"  # OUT/checkpoints, before the adapter folder was kept clean


def checkpoint_dir(out: Path | str) -> Path:
    """``OUT.checkpoints``: the sibling folder TRL saves ``checkpoint-N/`` folders in."""
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


def _last(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def resume_from(config: TrainConfig) -> str | None:
    """The checkpoint to resume (with --resume), after refusing to clobber an earlier run."""
    folder = checkpoint_dir(config.out)
    last = _last(folder)
    old = Path(config.out) / OLD_LAYOUT
    if last is None and _last(old) is not None and not config.overwrite:
        raise ConfigError(
            f"{old} holds checkpoints of an earlier run in the old layout (inside the adapter "
            f"folder): move them next to it with `mv {old} {folder}` and pass --resume to "
            "continue, or pass --overwrite to start over")
    if config.resume:
        if last is None:
            raise ConfigError(f"resume: no checkpoint in {folder} to resume from")
        return last
    if last is not None and config.overwrite:
        return None  # deleted by train() once every check has passed
    if last is not None:
        raise ConfigError(f"{folder} holds checkpoints of an earlier run ({Path(last).name}):"
                          " pass --resume to continue it, --overwrite to start over, or choose "
                          "another --out")
    return None


def remove_checkpoints(out: Path | str) -> None:
    """Delete a run's checkpoints (they are only needed to resume), in either layout."""
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
    shutil.rmtree(Path(out) / OLD_LAYOUT, ignore_errors=True)
