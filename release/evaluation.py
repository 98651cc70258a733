"""Eval sets and scorers: what eval-gated promotion and the rollout watcher measure.

An eval set is chat JSONL in the trainer's format: one ``{"messages": [...]}`` record a line,
the last message the assistant's expected answer, every message before it the prompt. A scorer
turns (prediction, expected) into a number in [0, 1]; the set's score is their mean. Exact match
is always measured too, so every record carries it whatever scorer gated. The trainer's exact
match (``loramux train``'s verdict) uses the same :func:`normalize`.

Running a set through a server and deciding on the scores: :mod:`loramux.release.promote`; the
records the registry keeps of it, and the gate's arithmetic it re-checks on them:
:mod:`loramux.registry.evaluations`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loramux.registry.errors import InvalidRequest

Scorer = Callable[[str, str], float]
ROLES = ("system", "user", "assistant")
BUILTIN_SCORERS = ("exact", "contains", "json")
MAX_ITEMS = 10_000


# -- eval sets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    prompt: list[dict[str, str]]  # every message before the answer
    expected: str


@dataclass(frozen=True)
class EvalSet:
    path: Path
    digest: str  # sha256 of the file's bytes, as the trainer records its data
    items: list[EvalItem]


def load_eval_set(path: Path | str) -> EvalSet:
    """Read and check a chat JSONL eval file; every problem is reported as ``file:line: what``.

    Raises InvalidRequest (exit 5) for a missing, empty or malformed file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"eval file {path}: {exc.strerror or exc}") from None
    items, problems = [], []
    for line_no, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(_item(json.loads(line)))
        except (ValueError, TypeError) as exc:
            problems.append(f"{path}:{line_no}: {exc}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidRequest(problems[0] + more)
    if not items:
        raise InvalidRequest(f"eval file {path} has no records")
    if len(items) > MAX_ITEMS:
        raise InvalidRequest(f"eval file {path} has {len(items)} records; at most {MAX_ITEMS}")
    return EvalSet(path, "sha256:" + hashlib.sha256(data).hexdigest(), items)


def _item(record: object) -> EvalItem:
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError('expected {"messages": [...]} with a prompt and the expected answer')
    for m in messages:
        if not (isinstance(m, dict) and m.get("role") in ROLES
                and isinstance(m.get("content"), str)):
            raise ValueError(f"each message needs a role ({', '.join(ROLES)}) and text content")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's expected answer")
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    return EvalItem(prompt, messages[-1]["content"])


# -- scorers -------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Whitespace-insensitive text: what the gate's and the trainer's exact match compare."""
    return " ".join(text.strip().split())


def exact(prediction: str, expected: str) -> float:
    return float(normalize(prediction) == normalize(expected))


def contains(prediction: str, expected: str) -> float:
    """1 when the expected answer appears in the prediction (whitespace-normalised)."""
    return float(normalize(expected) in normalize(prediction))


def json_valid(prediction: str, expected: str) -> float:
    """1 when the prediction parses as JSON (the expected answer is not compared)."""
    try:
        json.loads(prediction)
    except ValueError:
        return 0.0
    return 1.0


_BUILTIN: dict[str, Scorer] = {"exact": exact, "contains": contains, "json": json_valid}


def load_scorer(spec: str) -> Scorer:
    """``exact``, ``contains``, ``json``, or ``module:function`` (a callable
    ``(prediction, expected) -> float`` in [0, 1]; the current folder is importable too)."""
    if spec in _BUILTIN:
        return _BUILTIN[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidRequest(f"scorer {spec!r}: use {', '.join(BUILTIN_SCORERS)} or "
                             "module:function")
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise InvalidRequest(f"scorer {spec!r}: cannot import {module_name}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InvalidRequest(f"scorer {spec!r}: {module_name} has no function {attr!r}")
    return fn


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        if "" in sys.path or str(Path.cwd()) in sys.path:
            raise
        sys.path.append(str(Path.cwd()))  # the console script does not put the cwd on the path
        return importlib.import_module(module_name)


def score_answers(scorer: Scorer, name: str, predictions: list[str],
                  items: list[EvalItem]) -> tuple[float, float]:
    """(mean score, exact match) of ``predictions`` against the items' expected answers."""
    total = 0.0
    for i, (prediction, item) in enumerate(zip(predictions, items, strict=True), 1):
        try:
            value = float(scorer(prediction, item.expected))
        except Exception as exc:  # a user's scorer: report its failure, with the item
            raise InvalidRequest(f"scorer {name} failed on record {i}: {exc!r}") from exc
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise InvalidRequest(f"scorer {name} returned {value} for record {i}: scores must "
                                 "be in [0, 1]")
        total += value
    hits = sum(exact(p, i.expected) for p, i in zip(predictions, items, strict=True))
    return total / len(items), hits / len(items)
