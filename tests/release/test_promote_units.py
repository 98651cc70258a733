"""Eval-gated promotion, the parts without a server: the gate's arithmetic, the scorers, eval
set files, and the checks the registry applies before it records a result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from loramux.registry.errors import InvalidRequest
from loramux.registry.evaluations import Evaluation, SideScore, check_evaluation, judge
from loramux.release.cli import gate_from_options
from loramux.release.evaluation import (
    contains,
    exact,
    json_valid,
    load_eval_set,
    load_scorer,
    score_answers,
)
from loramux.release.promote import Gate


@pytest.mark.parametrize(("candidate", "current", "threshold", "max_regression", "passed"), [
    (0.9, None, 0.5, 0.0, True),  # no current: the threshold alone
    (0.4, None, 0.5, 0.0, False),
    (0.5, 0.5, 0.5, 0.0, True),  # equal to both is enough
    (0.1 + 0.2, None, 0.3, 0.0, True),  # a mean of floats still reaches its threshold
    (0.8, 0.9, 0.5, 0.0, False),  # worse than current, no regression allowed
    (0.8, 0.9, 0.5, 0.1, True),  # exactly the allowed regression
    (0.79, 0.9, 0.5, 0.1, False),  # a little more than allowed
    (0.95, 0.9, 0.96, 0.0, False),  # better than current but under the threshold
    (1.0, 0.0, 0.0, 0.0, True),
])
def test_gate_arithmetic(candidate: float, current: float | None, threshold: float,
                         max_regression: float, passed: bool) -> None:
    got, why = judge(candidate, current, threshold, max_regression)
    assert got is passed, why
    assert f"{candidate:.3f}" in why


def test_gate_options() -> None:
    assert gate_from_options(0.8, None, None, 0.0) == Gate("exact", 0.8, 0.0)
    assert gate_from_options(None, 0.7, "contains", 0.1) == Gate("contains", 0.7, 0.1)
    with pytest.raises(InvalidRequest, match="give one threshold"):
        gate_from_options(None, None, None, 0.0)
    with pytest.raises(InvalidRequest, match="give one threshold"):
        gate_from_options(0.5, 0.5, None, 0.0)
    with pytest.raises(InvalidRequest, match="--min-exact gates on exact match"):
        gate_from_options(0.5, None, "json", 0.0)
    with pytest.raises(InvalidRequest, match="between 0 and 1"):
        Gate("exact", 1.5)


def test_builtin_scorers() -> None:
    assert exact("  Paris\n", "Paris") == 1.0
    assert exact("paris", "Paris") == 0.0
    assert exact("Paris, France", "Paris") == 0.0
    assert contains("It is  Paris, France.", "Paris,\tFrance") == 1.0
    assert contains("Lyon", "Paris") == 0.0
    assert json_valid('{"a": [1, 2]}', "anything") == 1.0
    assert json_valid("{'a': 1}", "anything") == 0.0
    assert load_scorer("exact") is exact


def test_custom_scorer_from_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_scorers.py").write_text(
        "def prefix(prediction, expected):\n"
        "    return 1.0 if prediction.startswith(expected[:2]) else 0.25\n"
        "def too_big(prediction, expected):\n    return 2\n"
        "def broken(prediction, expected):\n    raise KeyError('oops')\n"
        "NOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    items = load_eval_set(_eval_file(tmp_path / "e.jsonl", [("q1", "abc"), ("q2", "xyz")])).items
    scorer = load_scorer("my_scorers:prefix")
    assert score_answers(scorer, "my_scorers:prefix", ["abX", "nope"], items) == (0.625, 0.0)
    assert score_answers(exact, "exact", ["abc", "nope"], items) == (0.5, 0.5)
    with pytest.raises(InvalidRequest, match=r"returned 2.0 for record 1: scores must be in"):
        score_answers(load_scorer("my_scorers:too_big"), "too_big", ["a", "b"], items)
    with pytest.raises(InvalidRequest, match=r"scorer b failed on record 1: KeyError\('oops'\)"):
        score_answers(load_scorer("my_scorers:broken"), "b", ["a", "b"], items)
    for spec, message in [("my_scorers:NOT_CALLABLE", "has no function 'NOT_CALLABLE'"),
                          ("my_scorers:absent", "has no function 'absent'"),
                          ("no_such_module_here:f", "cannot import no_such_module_here"),
                          ("fuzzy", "use exact, contains, json or module:function")]:
        with pytest.raises(InvalidRequest, match=message):
            load_scorer(spec)


def _eval_file(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q},
        {"role": "assistant", "content": a}]}) + "\n" for q, a in pairs))
    return path


def test_eval_set_file(tmp_path: Path) -> None:
    path = _eval_file(tmp_path / "eval.jsonl", [("2+2?", "4"), ("Capital of France?", "Paris")])
    loaded = load_eval_set(path)
    assert loaded.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert [i.expected for i in loaded.items] == ["4", "Paris"]
    assert loaded.items[1].prompt == [{"role": "system", "content": "Answer briefly."},
                                      {"role": "user", "content": "Capital of France?"}]


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", r"bad.jsonl:2: Expecting property name"),
    ('{"prompt": "x"}', r"bad.jsonl:2: expected \{\"messages\""),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]}',
     "bad.jsonl:2: the last message must be the assistant's expected answer"),
    ('{"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}',
     "bad.jsonl:2: each message needs a role"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}',
     "bad.jsonl:2: each message needs a role"),
])
def test_eval_set_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = _eval_file(tmp_path / "bad.jsonl", [("q", "a")])
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(InvalidRequest, match=message):
        load_eval_set(path)


def test_eval_set_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"absent\.jsonl: No such file"):
        load_eval_set(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InvalidRequest, match="has no records"):
        load_eval_set(tmp_path / "empty.jsonl")


def _evaluation(candidate: float, current: float | None, passed: bool, n: int = 10,
                current_n: int = 10) -> Evaluation:
    cur = None if current is None else SideScore(version=1, digest="sha256:" + "1" * 64,
                                                 score=current, exact=current, n=current_n)
    return Evaluation(alias="prod", current=cur, scorer="exact", threshold=0.5,
                      candidate=SideScore(version=2, digest="sha256:" + "2" * 64,
                                          score=candidate, exact=candidate, n=n),
                      max_regression=0.0, passed=passed, eval_digest="sha256:" + "e" * 64,
                      server="http://127.0.0.1:1")


def test_a_recorded_result_must_follow_from_its_scores() -> None:
    assert check_evaluation(_evaluation(0.9, 0.8, True)).passed
    assert not check_evaluation(_evaluation(0.7, 0.8, False)).passed
    with pytest.raises(InvalidRequest, match="says passed=True, but its scores say False"):
        check_evaluation(_evaluation(0.7, 0.8, True))
    with pytest.raises(InvalidRequest, match="says passed=False, but its scores say True"):
        check_evaluation(_evaluation(0.9, None, False))
    with pytest.raises(InvalidRequest, match="sets of different sizes"):
        check_evaluation(_evaluation(0.9, 0.8, True, current_n=9))
