"""Adapters the demo and the tests train, cached by everything that decides their weights.

One recipe (a dict of ``TrainConfig`` fields) per kind of run: the demo tasks on the demo base,
the real-model task on the packaged real base. A recipe, the trainer's own defaults and mapping
onto TRL (their source), the base's identity file, the data and the library versions together
key the cache, so equal keys mean retraining would give the same adapters and they are reused;
``make test`` then ``make demo`` trains each adapter once. A recipe of one thread trains its
missing adapters side by side, one process per core: a small model's step is mostly overhead
that a second thread barely shortens (the demo adapters: 0.48 s a step on 2 threads, 0.55 on
one beside another run), so two at once take about half as long.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loramux import build_store

STORE_KIND = "adapters"  # their entries in loramux.build_store: "<cache key>-<task>"
# What identifies a base's weights: the demo base's recipe, or an imported base's provenance.
BASE_IDENTITY_FILES = ("loramux_demo_recipe.json", "loramux_base.json")


def train_adapter(base: Path | str, task_dir: Path | str, out: Path | str,
                  recipe: dict[str, Any], **overrides: Any):
    """Train one task's adapter (``task_dir/train.jsonl``, eval on ``task_dir/eval.jsonl``)."""
    from loramux.trainer.api import train

    task_dir = Path(task_dir)
    settings = {"base": str(base), "data": task_dir / "train.jsonl",
                "eval": task_dir / "eval.jsonl", "out": Path(out), **recipe}
    settings.update(overrides)
    return train(settings)


def adapter_key(base: Path | str, data: dict[str, Path], recipe: dict[str, Any]) -> str:
    """The cache key of adapters trained with ``recipe`` on ``base`` from ``data``."""
    from importlib import metadata

    from loramux.trainer import chat_masks, config, model, sft

    h = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode())
    for module in (config, model, sft, chat_masks):
        h.update(Path(module.__file__).read_bytes())
    identity = [Path(base) / name for name in BASE_IDENTITY_FILES if (Path(base) / name).is_file()]
    if not identity:
        raise FileNotFoundError(f"{base} has none of {', '.join(BASE_IDENTITY_FILES)}: build "
                                "the demo base or import the real one first")
    h.update(identity[0].read_bytes())
    for task in sorted(data):
        h.update((Path(data[task]) / "train.jsonl").read_bytes())
    for lib in ("torch", "transformers", "peft", "trl", "bitsandbytes"):
        h.update(f"{lib}={metadata.version(lib)}".encode())
    from loramux.hardware import fast_dtype

    h.update(fast_dtype("cpu").encode())  # recipes with compute_dtype auto train in it
    return h.hexdigest()[:16]


def cached_adapters(base: Path | str, data: dict[str, Path], cache: Path | str,
                    recipe: dict[str, Any], *, tasks: Iterable[str] | None = None,
                    progress: bool = True) -> dict[str, Path]:
    """task -> adapter folder under ``cache/<key>/<task>``, trained only when not there yet.

    A folder counts only when its report exists (written last), so an interrupted run is
    retrained, never half-reused.
    """
    root = Path(cache) / adapter_key(base, data, recipe)
    adapters = {task: root / task for task in (tasks or sorted(data))}
    missing = [t for t, folder in adapters.items()
               if not (folder / "training_report.json").is_file()]
    for task in missing:
        shutil.rmtree(adapters[task], ignore_errors=True)
    missing = [t for t in missing
               if not (build_store.restore(STORE_KIND, f"{root.name}-{t}", adapters[t])
                       and (adapters[t] / "training_report.json").is_file())]
    workers = min(len(missing), len(os.sched_getaffinity(0))) if recipe.get("threads") == 1 else 1
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if progress:
            print(f"training {len(missing)} adapters side by side, one core each "
                  f"({recipe.get('max_steps')} steps each)", flush=True)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in [pool.submit(_train_and_tidy, base, data[t], adapters[t], recipe, False)
                         for t in missing]:
                done.result()
    else:
        for task in missing:
            _train_and_tidy(base, data[task], adapters[task], recipe, progress)
    for task in adapters:  # a no-op for those already stored
        build_store.keep(STORE_KIND, f"{root.name}-{task}", adapters[task])
    return adapters


def _train_and_tidy(base: Path | str, task_dir: Path | str, folder: Path,
                    recipe: dict[str, Any], progress: bool) -> None:
    from loramux.trainer.api import remove_checkpoints

    train_adapter(base, task_dir, folder, recipe, progress=progress)
    remove_checkpoints(folder)


def cached_demo_adapters(base: Path | str, data: dict[str, Path], cache: Path | str, *,
                         progress: bool = True) -> dict[str, Path]:
    """The two demo tasks' adapters on the demo base (shared by the tests and ``make demo``)."""
    from loramux.demo.tasks import DEMO_TRAIN_SETTINGS, TASKS

    return cached_adapters(base, data, cache, DEMO_TRAIN_SETTINGS, tasks=TASKS,
                           progress=progress)
