"""Eval-gated promotion: run an eval set through the serving stack, then move an alias only if
the candidate passes.

:func:`promote` works with any Registry, local or remote: the candidate ``name@V`` and the
alias's current version ``name@C`` are asked the same prompts on the same server (so the same
quantization and kernels as production), greedy, through the real ``openai`` client, by pinned
reference; every answer must come from the digest the registry names (the server's
``x-loramux-adapter-digest``), else the server reads another registry and nothing is recorded.
The result is recorded (audit ``evaluate`` + per-version rows) whether it passed or not; a pass
then moves the alias compare-and-set against ``C``: if the alias moved meanwhile, the move is
refused (Conflict) rather than overwriting a decision made on other facts.

The store side (recording, the compare-and-set move, the re-check of the gate's arithmetic) is
the registry's: :mod:`loramux.registry.evaluations`.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from loramux.registry.base import Registry
from loramux.registry.errors import InvalidName, InvalidRequest, NotFound
from loramux.registry.evaluations import Evaluation, EvaluationEntry, GateFailed, SideScore, judge
from loramux.registry.manifest import AliasPointer, Manifest
from loramux.registry.refs import AdapterRef, validate_alias
from loramux.release.errors import EvalError
from loramux.release.evaluation import EvalItem, EvalSet, load_scorer, score_answers
from loramux.wire import DIGEST_HEADER, ENV_API_KEY

log = logging.getLogger(__name__)
DEFAULT_CONCURRENCY = 8


@dataclass(frozen=True)
class Gate:
    """What the candidate must reach: ``threshold`` on ``scorer``'s mean, and at most
    ``max_regression`` below the current version."""

    scorer: str = "exact"
    threshold: float = 0.0
    max_regression: float = 0.0

    def __post_init__(self) -> None:
        for label, value in (("threshold", self.threshold),
                             ("max regression", self.max_regression)):
            if not 0.0 <= value <= 1.0:
                raise InvalidRequest(f"the {label} must be between 0 and 1, not {value}")


@dataclass(frozen=True)
class Outcome:
    """What :func:`promote` did: the recorded evaluation and, when it moved, the new pointer."""

    entry: EvaluationEntry | None  # None: nothing to do (the alias is already there)
    pointer: AliasPointer | None

    @property
    def moved(self) -> bool:
        return self.pointer is not None


def promote(
    registry: Registry,
    ref: str,
    alias: str,
    eval_set: EvalSet,
    *,
    server: str,
    gate: Gate,
    api_key: str | None = None,
    max_tokens: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = 300.0,
) -> Outcome:
    """Evaluate ``ref`` (``name@V``) against ``name:alias`` on ``server`` and move the alias if
    the gate passes. Returns the Outcome; raises GateFailed (the result is recorded, the alias
    stays), EvalError (the server failed: nothing recorded), Conflict (the alias moved while
    evaluating), NotFound / InvalidName for bad references."""
    validate_alias(alias)
    parsed = AdapterRef.parse(ref)
    if not parsed.pins_version:
        raise InvalidName(f"promote needs an exact version ({parsed.name}@N), not {parsed}")
    scorer = load_scorer(gate.scorer)  # a bad scorer fails before any request
    candidate = registry.resolve(parsed)
    current = _current(registry, candidate.name, alias)
    if current is not None and current.version == candidate.version:
        log.info("%s:%s already points at %s", candidate.name, alias, candidate.ref)
        return Outcome(None, None)
    tokens = max_tokens or default_max_tokens(eval_set.items)
    openai_client = client(server, api_key, timeout=timeout)
    try:
        sides = [_measure(openai_client, m, eval_set.items, scorer, gate.scorer, tokens,
                          concurrency) for m in (candidate, current) if m is not None]
    finally:
        openai_client.close()
    cand, cur = sides[0], sides[1] if len(sides) > 1 else None
    passed, reason = judge(cand.score, cur.score if cur else None, gate.threshold,
                           gate.max_regression)
    evaluation = Evaluation(
        alias=alias, candidate=cand, current=cur, scorer=gate.scorer, threshold=gate.threshold,
        max_regression=gate.max_regression, passed=passed, eval_digest=eval_set.digest,
        server=server.rstrip("/"), base_fingerprint=candidate.base_fingerprint, reason=reason)
    entry = registry.record_evaluation(candidate.name, evaluation)
    if not passed:
        raise GateFailed(f"gate failed: {candidate.ref} {_scores(evaluation)}; {reason}; "
                         f"{candidate.name}:{alias} stays at "
                         f"{current.ref if current else 'nothing (unset)'}", entry)
    pointer = registry.promote_alias(candidate.name, alias, candidate.version,
                                     expected=current.version if current else None,
                                     evaluation_id=entry.id)
    return Outcome(entry, pointer)


def _scores(e: Evaluation) -> str:
    cur = (f"{e.current.score:.3f} (exact {e.current.exact:.3f})" if e.current
           else "none (alias unset)")
    return (f"scored {e.candidate.score:.3f} (exact {e.candidate.exact:.3f}) vs current {cur} "
            f"on {e.candidate.n} records, scorer {e.scorer}")


def summary(e: Evaluation) -> str:
    """One line with both scores (what the CLI prints)."""
    return f"{_scores(e)}; {e.reason}"


def _current(registry: Registry, name: str, alias: str) -> Manifest | None:
    try:
        return registry.resolve(AdapterRef(name, alias=alias))
    except NotFound:
        registry.resolve(AdapterRef(name))  # no such adapter at all: that NotFound, not None
        return None


def default_max_tokens(items: list[EvalItem]) -> int:
    """Room for the longest expected answer (a token is at least one character) plus some."""
    return min(1024, max(len(i.expected) for i in items) + 16)


def client(server: str, api_key: str | None = None, *, timeout: float = 300.0) -> Any:
    """The ``openai`` client release management asks a server with (the gate and the watcher):
    ``api_key``, else ``LORAMUX_API_KEY``, else none (a server without keys)."""
    import os

    from openai import OpenAI

    key = api_key or os.environ.get(ENV_API_KEY) or "unused"
    return OpenAI(base_url=f"{server.rstrip('/')}/v1", api_key=key, max_retries=2,
                  timeout=timeout)


def _measure(client: Any, manifest: Manifest, items: list[EvalItem], scorer: Any, name: str,
             max_tokens: int, concurrency: int) -> SideScore:
    answers = run_prompts(client, manifest, items, max_tokens=max_tokens,
                          concurrency=concurrency)
    score, exact = score_answers(scorer, name, answers, items)
    log.info("%s: score %.3f exact %.3f on %d records", manifest.ref, score, exact, len(items))
    return SideScore(version=manifest.version, digest=manifest.digest, score=score, exact=exact,
                     n=len(items))


def run_prompts(client: Any, manifest: Manifest, items: list[EvalItem], *, max_tokens: int,
                concurrency: int = DEFAULT_CONCURRENCY) -> list[str]:
    """Greedy answers of the pinned version ``manifest.ref`` to every prompt, in order."""
    import openai

    def ask(item: EvalItem) -> str:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=manifest.ref, messages=item.prompt, temperature=0, max_tokens=max_tokens)
        except openai.APIStatusError as exc:
            raise EvalError(f"server answered {exc.status_code} for {manifest.ref}: "
                            f"{_message(exc)}") from None
        except openai.APIConnectionError as exc:
            raise EvalError(f"server {client.base_url} unreachable: {exc}") from None
        served = raw.headers.get(DIGEST_HEADER)
        if served != manifest.digest:
            raise EvalError(f"server answered {manifest.ref} with adapter {served or 'unknown'}"
                            f", but the registry names {manifest.digest}: does it read this "
                            "registry?")
        reply = raw.parse()
        return (reply.choices[0].message.content or "") if reply.choices else ""

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return list(pool.map(ask, items))


def _message(exc: Any) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return str(error.get("message") if isinstance(error, dict) and error.get("message")
               else exc.message)
