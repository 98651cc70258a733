"""Training data that is not a file: a ``datasets`` ``save_to_disk`` folder, or a dataset in the
local ``datasets`` cache by name, each with an optional ``:split``.

``--data FOLDER`` (a saved ``Dataset``, or a ``DatasetDict`` whose ``train`` split is used),
``--data FOLDER:test``, ``--data org/name:train`` (a hub dataset downloaded earlier: read from
the cache only, so no network is touched even without ``HF_DATASETS_OFFLINE``). The records then
go through the same checks as a file's (``loramux.trainer.data``). The digest covers the Arrow
files the rows come from, so lineage tells two versions of a dataset apart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loramux.trainer.errors import DataError

DEFAULT_SPLIT = "train"
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# A hub dataset id (``name`` or ``org/name``) with an optional ``:split``.
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"where:split"`` -> (where, split); a plain ``where`` -> (where, None)."""
    where, sep, split = spec.rpartition(":")
    if sep and where and split and "/" not in split and not split.startswith("\\"):
        return where, split
    return spec, None


def is_dataset_name(value: str, root: Path | None = None) -> bool:
    """Whether ``--data value`` names a cached dataset rather than a path (relative to ``root``).

    A path wins when it exists (with or without its ``:split``) or ends in a data-file suffix,
    so ``train.jsonl`` that is missing still gets the "file does not exist" error.
    """
    root = root or Path.cwd()
    where, _ = split_spec(value)
    if value.lower().endswith(FILE_SUFFIXES) or Path(value).is_absolute():
        return False
    if (root / value).exists() or (root / where).exists():
        return False
    return bool(_NAME.match(value))


@dataclass
class DatasetSource:
    """Rows of one split, with a label for messages (``where:split``) and a content digest."""

    label: str
    rows: Any  # a datasets.Dataset
    digest: str

    def records(self) -> Iterator[tuple[str, Any, str | None]]:
        """(where, record, problem) like data._iter_raw, ``where`` being ``label row N``."""
        for i, row in enumerate(self.rows, 1):
            yield f"{self.label} row {i}", {k: v for k, v in row.items() if v is not None}, None


def _digest(dataset) -> str:
    h = hashlib.sha256()
    files = [f["filename"] for f in dataset.cache_files]
    if not files:  # an in-memory table: hash its rows
        h.update(repr(dataset.to_list()).encode())
    for name in files:
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def _pick(splits: dict[str, Any], split: str | None, where: str) -> tuple[Any, str]:
    name = split or DEFAULT_SPLIT
    if name not in splits:
        hint = "" if split else f" (no {DEFAULT_SPLIT!r} split: give one as {where}:SPLIT)"
        raise DataError(f"{where}: no split {name!r}; its splits: {', '.join(sorted(splits))}"
                        f"{hint}")
    return splits[name], name


def _from_folder(folder: Path, split: str | None) -> DatasetSource:
    from datasets import Dataset, DatasetDict, load_from_disk

    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist")
    if not any((folder / n).is_file() for n in ("dataset_dict.json", "state.json")):
        raise DataError(f"{folder}: not a dataset saved with datasets' save_to_disk (no "
                        "state.json or dataset_dict.json); give a data file or such a folder")
    try:
        loaded = load_from_disk(str(folder))
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: cannot load the saved dataset: {exc}") from None
    if isinstance(loaded, DatasetDict):
        rows, name = _pick(dict(loaded), split, str(folder))
        return DatasetSource(f"{folder}:{name}", rows, _digest(rows))
    assert isinstance(loaded, Dataset)
    if split is not None:
        raise DataError(f"{folder}: a single saved Dataset has no splits; drop ':{split}'")
    return DatasetSource(str(folder), loaded, _digest(loaded))


def cache_dir() -> Path:
    """The datasets cache: $HF_DATASETS_CACHE, else datasets' default (read at call time)."""
    env = os.environ.get("HF_DATASETS_CACHE")
    if env:
        return Path(env).expanduser()
    from datasets import config

    return Path(config.HF_DATASETS_CACHE)


def _from_cache(name: str, split: str | None, root: Path | None = None) -> DatasetSource:
    """A dataset the cache holds (``load_dataset`` ran earlier), read without the hub."""
    from datasets.packaged_modules.cache.cache import Cache

    # It warns which cached configuration it found: the run names what it read (name:split) in
    # its own line, and the CLI's console is one line per outcome.
    logging.getLogger(Cache.__module__).setLevel(logging.ERROR)
    folder = root or cache_dir()
    try:
        builder = Cache(cache_dir=str(folder), repo_id=name, dataset_name=name.split("/")[-1],
                        version="auto", hash="auto")
    except ValueError as exc:
        if "Couldn't find cache" not in str(exc):
            raise DataError(f"dataset {name}: {str(exc).splitlines()[0]}") from None
        raise DataError(f"{name!r} is no file or folder here, nor a dataset in the local "
                        f"datasets cache ({folder}): give a data file, a save_to_disk folder, "
                        "or the name of a dataset loaded once with datasets.load_dataset"
                        ) from None
    splits = dict(builder.info.splits or {})
    _, picked = _pick(splits, split, name)
    rows = builder.as_dataset(split=picked)
    return DatasetSource(f"{name}:{picked}", rows, _digest(rows))


def open_source(spec: str, *, root: Path | None = None) -> DatasetSource:
    """The rows ``--data spec`` names (a folder or a cached name, each maybe with ``:split``)."""
    where, split = split_spec(spec)
    if Path(spec).is_dir():
        return _from_folder(Path(spec), None)
    if Path(where).is_dir() or Path(where).is_absolute() or not is_dataset_name(spec):
        return _from_folder(Path(where), split)
    return _from_cache(where, split, root)
