"""Evaluation records and their check: the store side of eval-gated promotion.

A gate run (``loramux registry promote``, in ``release/``) measures a candidate version and the
alias's current one on the serving stack, and records the result here whether it passed or not:
an audit row ``evaluate`` and one row per version measured (``registry show NAME@V`` lists them).
A pass then moves the alias compare-and-set against the version it was compared with, citing
that record. The registry runs nothing itself; it re-checks what it is given, because over HTTP
the record comes from a client: ``passed`` must follow from the scores (:func:`judge`, the one
place the gate's arithmetic lives), and a promotion must cite a passing evaluation of exactly
that move. Recording and the move are one transaction each (:class:`LocalPromotions`, a base
class of LocalRegistry).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from loramux.registry.canary import end_canary
from loramux.registry.errors import Conflict, InvalidRequest, NotFound, RegistryError
from loramux.registry.index import evaluations as sql
from loramux.registry.index import now, to_dt
from loramux.registry.manifest import AliasPointer
from loramux.registry.refs import validate_alias, validate_name

if TYPE_CHECKING:
    from loramux.registry.store import LocalRegistry

log = logging.getLogger(__name__)
EPSILON = 1e-9  # scores are means of floats: 0.1 + 0.2 must still reach a 0.3 threshold
# Longest text a record may carry, per field: every record is stored twice (the audit row and
# the evaluations row per version) and read by every ``registry show`` and history page.
MAX_DIGEST = 128
TEXT_LIMITS: dict[str, int] = {
    "scorer": 256, "eval_digest": MAX_DIGEST, "server": 2048, "reason": 4096,
    "base_fingerprint": MAX_DIGEST,
}


class GateFailed(RegistryError, status=422, exit_code=10):
    """The candidate scored below the threshold, or worse than the current version by more than
    the allowed regression: the alias stays where it is. ``entry`` is the recorded result."""

    def __init__(self, message: str, entry: EvaluationEntry | None = None) -> None:
        super().__init__(message)
        self.entry = entry


# -- records -------------------------------------------------------------------------------------


class SideScore(BaseModel):
    """One version's result on the eval set."""

    version: int = Field(ge=1)
    digest: str = Field(max_length=MAX_DIGEST)
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


class EvaluationBody(Evaluation):
    """``POST …/evaluations``'s body: the record with its text bounded (``TEXT_LIMITS``), so an
    oversized one is a 400 before it is parsed further. ``Evaluation`` itself stays unbounded
    to read what older versions stored; :func:`check_evaluation` bounds what is recorded."""

    scorer: str = Field(max_length=TEXT_LIMITS["scorer"])
    eval_digest: str = Field(max_length=TEXT_LIMITS["eval_digest"])
    server: str = Field(max_length=TEXT_LIMITS["server"])
    base_fingerprint: str | None = Field(None, max_length=TEXT_LIMITS["base_fingerprint"])
    reason: str = Field("", max_length=TEXT_LIMITS["reason"])


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
    ``passed`` follows from the scores, both sides were measured on the same set, and no text
    is longer than ``TEXT_LIMITS`` (the local store checks here, as the HTTP body does)."""
    for field, limit in TEXT_LIMITS.items():
        value = getattr(evaluation, field)
        if value is not None and len(value) > limit:
            raise InvalidRequest(f"evaluation {field} is {len(value)} characters long (at most "
                                 f"{limit})")
    for side in (evaluation.candidate, evaluation.current):
        if side is not None and len(side.digest) > MAX_DIGEST:
            raise InvalidRequest(f"evaluation digest is {len(side.digest)} characters long (at "
                                 f"most {MAX_DIGEST})")
    current = evaluation.current
    passed, _ = judge(evaluation.candidate.score, current.score if current else None,
                      evaluation.threshold, evaluation.max_regression)
    if passed != evaluation.passed:
        raise InvalidRequest(f"evaluation says passed={evaluation.passed}, but its scores say "
                             f"{passed}")
    if current is not None and current.n != evaluation.candidate.n:
        raise InvalidRequest("candidate and current were measured on sets of different sizes")
    return evaluation


# -- store side ----------------------------------------------------------------------------------


class LocalPromotions:
    """The evaluation verbs of :class:`~loramux.registry.store.LocalRegistry` (a base class)."""

    def record_evaluation(self: LocalRegistry, name: str, evaluation: Evaluation, *,
                          actor: str | None = None) -> EvaluationEntry:
        validate_name(name)
        validate_alias(evaluation.alias)
        check_evaluation(evaluation)
        actor, at = actor or self.actor, now()
        with self.index.write() as tx:
            for side in (evaluation.candidate, evaluation.current):
                if side is not None and tx.live_digest(name, side.version) != side.digest:
                    raise NotFound(f"{name}@{side.version} with digest {side.digest} is not a "
                                   "live version")
            audit_id = sql.record(tx, name, evaluation, at=at, actor=actor)
        log.info("evaluated %s@%d for %s:%s: %s", name, evaluation.candidate.version, name,
                 evaluation.alias, "passed" if evaluation.passed else "failed")
        return EvaluationEntry(id=audit_id, at=to_dt(at), actor=actor, name=name,
                               version=evaluation.candidate.version, role="candidate",
                               evaluation=evaluation)

    def evaluations(self: LocalRegistry, name: str, version: int,
                    limit: int = 5) -> list[EvaluationEntry]:
        validate_name(name)
        return sql.latest(self.index, name, int(version), limit)

    def promote_alias(self: LocalRegistry, name: str, alias: str, version: int, *,
                      expected: int | None, evaluation_id: int,
                      actor: str | None = None) -> AliasPointer:
        validate_name(name)
        validate_alias(alias)
        actor, at = actor or self.actor, now()
        with self.index.write() as tx:
            old = tx.alias_target(name, alias)
            if (old[0] if old else None) != expected:
                now_at = f"{name}@{old[0]}" if old else "nothing"
                was = f"{name}@{expected}" if expected else "nothing"
                raise Conflict(f"{name}:{alias} moved to {now_at} while the gate compared with "
                               f"{was}: not promoted; run the gate again")
            found = sql.find(tx, evaluation_id)
            _check_cited(found, name, alias, version, expected, evaluation_id)
            pointer = self._alias_set(tx, name, alias, int(version), actor, at)
            end_canary(tx, name, alias, actor, at, reason="promoted")  # as any plain move
            tx.audit(at=at, actor=actor, action="promote", name=name, alias=alias,
                     version=pointer.version, digest=pointer.digest,
                     old_version=old[0] if old else None, old_digest=old[1] if old else None,
                     detail={"evaluation_id": evaluation_id})
        log.info("promoted %s@%d to %s:%s (evaluation %d)", name, version, name, alias,
                 evaluation_id)
        return pointer


def _check_cited(found: tuple[str, Evaluation] | None, name: str, alias: str, version: int,
                 expected: int | None, evaluation_id: int) -> None:
    """A promotion must cite a passing evaluation of exactly this move."""
    if found is None:
        raise NotFound(f"no evaluation {evaluation_id}")
    ev_name, ev = found
    current = ev.current.version if ev.current else None
    if (ev_name, ev.alias, ev.candidate.version, current) != (name, alias, version, expected):
        raise Conflict(f"evaluation {evaluation_id} measured {ev_name}@{ev.candidate.version} "
                       f"for {ev_name}:{ev.alias} against "
                       f"{f'@{current}' if current else 'nothing'}, not this move")
    if not ev.passed:
        raise GateFailed(f"evaluation {evaluation_id} did not pass: {ev.reason}")
