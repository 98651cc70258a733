"""Eval sets, scorers and the gate's arithmetic: what eval-gated promotion measures and decides.

An eval set is chat JSONL in the trainer's format: one ``{"messages": [...]}`` record a line,
the last message the assistant's expected answer, every message before it the prompt. A scorer
turns (prediction, expected) into a number in [0, 1]; the set's score is their mean. Exact match
is always measured too, so every record carries it whatever scorer gated.

The gate lives here (not in the CLI) because the registry re-checks it when a result is recorded:
a result whose ``passed`` does not follow from its own scores is refused, over HTTP too. The
trainer imports this module (trainer -> registry); nothing here imports the trainer or the server.
Running the set through a server over HTTP, and the promotion: :mod:`loramux.registry.promote`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from loramux.registry.errors import InvalidRequest, RegistryError

Scorer = Callable[[str, str], float]
ROLES = ("system", "user", "assistant")
BUILTIN_SCORERS = ("exact", "contains", "json")
EPSILON = 1e-9  # scores are means of floats: 0.1 + 0.2 must still reach a 0.3 threshold
MAX_ITEMS = 10_000


class GateFailed(RegistryError, status=422, exit_code=10):
    """The candidate scored below the threshold, or worse than the current version by more than
    the allowed regression: the alias stays where it is. ``entry`` is the recorded result."""

    def __init__(self, message: str, entry: EvaluationEntry | None = None) -> None:
        super().__init__(message)
        self.entry = entry


class EvalError(RegistryError, status=502, exit_code=11):
    """The serving stack could not run the eval set (unreachable, refused, or answered with
    another adapter than the registry names)."""


# -- records -------------------------------------------------------------------------------------


class SideScore(BaseModel):
    """One version's result on the eval set."""

    version: int = Field(ge=1)
    digest: str
    score: float = Field(ge=0, le=1)  # mean of the gate's scorer
    exact: float = Field(ge=0, le=1)  # exact match, whatever the scorer
    n: int = Field(ge=1)


class Evaluation(BaseModel):
    """One gate run: the ``detail`` of the audit row ``evaluate`` (the web page reads these
    keys), and what ``registry show`` lists for each version it measured."""

    alias: str
    candidate: SideScore
    current: SideScore | None = None
    scorer: str
    threshold: float = Field(ge=0, le=1)
    max_regression: float = Field(ge=0, le=1)
    passed: bool
    eval_digest: str
    server: str
    base_fingerprint: str | None = None
    reason: str = ""


class EvaluationEntry(BaseModel):
    """A recorded evaluation of one version: ``id`` is the audit id of its ``evaluate`` row
    (what a promotion cites), ``role`` whether this version was the candidate or the current."""

    id: int
    at: datetime
    actor: str
    name: str
    version: int
    role: Literal["candidate", "current"]
    evaluation: Evaluation


class PromoteRequest(BaseModel):
    """``POST /v2/adapters/{name}/aliases/{alias}/promote``'s body: ``Registry.promote_alias``."""

    version: int = Field(ge=1, le=2**62)
    expected: int | None = Field(None, ge=1, le=2**62)
    evaluation_id: int = Field(ge=1, le=2**62)


# -- the gate ------------------------------------------------------------------------------------


def judge(candidate: float, current: float | None, threshold: float,
          max_regression: float) -> tuple[bool, str]:
    """(passed, why): the candidate must reach ``threshold`` and lose at most ``max_regression``
    against the current version (none: the threshold alone decides)."""
    if candidate < threshold - EPSILON:
        return False, f"score {candidate:.3f} is below the threshold {threshold:.3f}"
    if current is not None and candidate < current - max_regression - EPSILON:
        return False, (f"score {candidate:.3f} is worse than the current {current:.3f} by "
                       f"{current - candidate:.3f} (allowed {max_regression:.3f})")
    if current is None:
        return True, f"score {candidate:.3f} reaches the threshold {threshold:.3f}"
    return True, (f"score {candidate:.3f} reaches the threshold {threshold:.3f} and the "
                  f"current {current:.3f} (allowed regression {max_regression:.3f})")


def check_evaluation(evaluation: Evaluation) -> Evaluation:
    """What the registry re-checks before recording a result (over HTTP it comes from a client):
    ``passed`` follows from the scores, and both sides were measured on the same set."""
    current = evaluation.current
    passed, _ = judge(evaluation.candidate.score, current.score if current else None,
                      evaluation.threshold, evaluation.max_regression)
    if passed != evaluation.passed:
        raise InvalidRequest(f"evaluation says passed={evaluation.passed}, but its scores say "
                             f"{passed}")
    if current is not None and current.n != evaluation.candidate.n:
        raise InvalidRequest("candidate and current were measured on sets of different sizes")
    return evaluation


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
    """Whitespace-insensitive, as the trainer's exact match."""
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
