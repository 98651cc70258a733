"""Recording gate results and the compare-and-set promotion, against every registry client and
index (local and over HTTP, SQLite and PostgreSQL): the audit rows the web page reads, the
per-version records ``registry show`` lists, and the refusals."""

from __future__ import annotations

import pytest
from conftest import COMBOS, Backend
from registry_support import READ_TOKEN, WRITE_TOKEN

from loramux.registry.errors import Conflict, Forbidden, InvalidRequest, NotFound
from loramux.registry.evaluations import Evaluation, GateFailed, SideScore

# the blob store plays no part here: the four client x index combinations
FOLDER_COMBOS = [c for c in COMBOS if c.blobs == "folder"]
pytestmark = pytest.mark.parametrize("backend", FOLDER_COMBOS, ids=lambda c: c.id,
                                     indirect=True)
EVALUATE_KEYS = {"alias", "candidate", "current", "scorer", "threshold", "max_regression",
                 "passed", "eval_digest", "server", "base_fingerprint"}


def _three_versions(backend: Backend, adapters) -> list:
    reg = backend.registry
    made = [reg.push(adapters[k], "helper") for k in ("a", "b", "c8")]
    reg.alias_set("helper", "prod", 1)
    return made


def _side(m, score: float) -> SideScore:
    return SideScore(version=m.version, digest=m.digest, score=score, exact=score, n=20)


def _evaluation(cand, cur, cand_score: float, cur_score: float | None, *,
                threshold: float = 0.5, max_regression: float = 0.0) -> Evaluation:
    passed = cand_score >= threshold and (cur_score is None
                                          or cand_score >= cur_score - max_regression)
    return Evaluation(alias="prod", candidate=_side(cand, cand_score),
                      current=_side(cur, cur_score) if cur is not None else None,
                      scorer="exact", threshold=threshold, max_regression=max_regression,
                      passed=passed, eval_digest="sha256:" + "e" * 64,
                      server="http://127.0.0.1:9", base_fingerprint=None, reason="because")


def test_a_passing_evaluation_promotes(backend: Backend, adapters) -> None:
    reg = backend.registry
    v1, v2, _ = _three_versions(backend, adapters)
    entry = reg.record_evaluation("helper", _evaluation(v2, v1, 0.9, 0.6))
    assert (entry.version, entry.role, entry.evaluation.passed) == (2, "candidate", True)
    pointer = reg.promote_alias("helper", "prod", 2, expected=1, evaluation_id=entry.id)
    assert (pointer.version, pointer.digest) == (2, v2.digest)
    assert reg.resolve("helper:prod").version == 2

    promote, alias_set, evaluate = reg.log(name="helper", limit=3)
    assert evaluate.id == entry.id and evaluate.action == "evaluate"
    assert set(evaluate.detail) >= EVALUATE_KEYS
    assert evaluate.detail["candidate"] == {"version": 2, "digest": v2.digest, "score": 0.9,
                                            "exact": 0.9, "n": 20}
    assert evaluate.detail["current"]["version"] == 1 and evaluate.detail["passed"] is True
    assert (alias_set.action, alias_set.old_version, alias_set.version) == ("alias_set", 1, 2)
    assert (promote.action, promote.alias, promote.old_version, promote.version) == (
        "promote", "prod", 1, 2)
    assert promote.detail == {"evaluation_id": entry.id}

    # each measured version lists the run, newest first, with its role
    assert [(e.id, e.role) for e in reg.evaluations("helper", 2)] == [(entry.id, "candidate")]
    assert [(e.id, e.role) for e in reg.evaluations("helper", 1)] == [(entry.id, "current")]
    assert reg.evaluations("helper", 3) == []
    later = reg.record_evaluation("helper", _evaluation(v1, v2, 0.6, 0.9))
    assert [e.id for e in reg.evaluations("helper", 2)] == [later.id, entry.id]
    assert [e.id for e in reg.evaluations("helper", 2, limit=1)] == [later.id]


def test_a_failed_evaluation_is_recorded_and_cannot_promote(backend: Backend, adapters) -> None:
    reg = backend.registry
    v1, _, v3 = _three_versions(backend, adapters)
    entry = reg.record_evaluation("helper", _evaluation(v3, v1, 0.55, 0.6))
    assert not entry.evaluation.passed
    with pytest.raises(GateFailed, match="did not pass: because"):
        reg.promote_alias("helper", "prod", 3, expected=1, evaluation_id=entry.id)
    assert reg.resolve("helper:prod").version == 1
    assert [e.action for e in reg.log(name="helper", limit=2)] == ["evaluate", "alias_set"]


def test_the_move_is_compare_and_set(backend: Backend, adapters) -> None:
    """The alias moved after the gate compared with v1: the promotion is refused, the alias
    keeps the newer decision."""
    reg = backend.registry
    v1, v2, _ = _three_versions(backend, adapters)
    entry = reg.record_evaluation("helper", _evaluation(v2, v1, 0.9, 0.6))
    reg.alias_set("helper", "prod", 3)  # someone else, meanwhile
    with pytest.raises(Conflict, match="helper:prod moved to helper@3 while the gate compared "
                                       "with helper@1: not promoted"):
        reg.promote_alias("helper", "prod", 2, expected=1, evaluation_id=entry.id)
    assert reg.resolve("helper:prod").version == 3
    # an evaluation must be of exactly this move
    with pytest.raises(Conflict, match="not this move"):
        reg.promote_alias("helper", "prod", 2, expected=3, evaluation_id=entry.id)
    with pytest.raises(NotFound, match="no evaluation 9999"):
        reg.promote_alias("helper", "prod", 2, expected=3, evaluation_id=9999)
    assert reg.resolve("helper:prod").version == 3


def test_first_promotion_of_an_unset_alias(backend: Backend, adapters) -> None:
    reg = backend.registry
    v1 = reg.push(adapters["a"], "fresh")
    entry = reg.record_evaluation("fresh", _evaluation(v1, None, 0.7, None))
    assert reg.evaluations("fresh", 1)[0].evaluation.current is None
    assert reg.promote_alias("fresh", "prod", 1, expected=None, evaluation_id=entry.id).version == 1


def test_what_is_refused_before_recording(backend: Backend, adapters) -> None:
    reg = backend.registry
    v1, v2, _ = _three_versions(backend, adapters)
    lying = _evaluation(v2, v1, 0.4, 0.6).model_copy(update={"passed": True})
    with pytest.raises(InvalidRequest, match="says passed=True, but its scores say False"):
        reg.record_evaluation("helper", lying)
    wrong_digest = _evaluation(v2, v1, 0.9, 0.6)
    wrong_digest.candidate.digest = v1.digest
    with pytest.raises(NotFound, match=r"helper@2 with digest .* is not a live version"):
        reg.record_evaluation("helper", wrong_digest)
    assert [e.action for e in reg.log(name="helper", limit=1)] == ["alias_set"]


def test_recording_needs_write_scope(backend: Backend, adapters) -> None:
    if backend.kind != "remote":
        pytest.skip("scopes are the HTTP server's")
    v1, v2, _ = _three_versions(backend, adapters)
    evaluation = _evaluation(v2, v1, 0.9, 0.6)
    reader = backend.client(READ_TOKEN)
    with pytest.raises(Forbidden):
        reader.record_evaluation("helper", evaluation)
    entry = backend.client(WRITE_TOKEN).record_evaluation("helper", evaluation)
    assert reader.evaluations("helper", 2)[0].id == entry.id  # reading needs only read
    with pytest.raises(Forbidden):
        reader.promote_alias("helper", "prod", 2, expected=1, evaluation_id=entry.id)
    assert backend.client(WRITE_TOKEN).promote_alias(
        "helper", "prod", 2, expected=1, evaluation_id=entry.id).version == 2
