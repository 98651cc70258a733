"""Demo data: deterministic, chat-shaped, eval prompts never seen in training, exact match."""

from __future__ import annotations

import json
from pathlib import Path

from loramux.demo.tasks import (
    TASKS,
    build_tasks,
    exact_match,
    load_eval,
    normalize,
    write_demo_data,
)


def test_demo_data_is_deterministic(tmp_path: Path) -> None:
    a = write_demo_data(tmp_path / "a")
    b = write_demo_data(tmp_path / "b")
    assert set(a) == set(TASKS) and len(TASKS) >= 2
    for task in TASKS:
        for split in ("train.jsonl", "eval.jsonl"):
            assert (a[task] / split).read_bytes() == (b[task] / split).read_bytes()


def test_eval_records_end_with_the_expected_answer(tmp_path: Path) -> None:
    folders = write_demo_data(tmp_path)
    for task in TASKS:
        items = load_eval(folders[task] / "eval.jsonl")
        assert len(items) >= 30
        assert all(i.messages[-1]["role"] == "user" and i.expected for i in items)
        for line in (folders[task] / "train.jsonl").read_text().splitlines():
            assert json.loads(line)["messages"][-1]["role"] == "assistant"


def test_eval_prompts_are_held_out() -> None:
    for task in build_tasks().values():
        seen = {m["content"] for r in task.train for m in r["messages"] if m["role"] == "user"}
        asked = {r["messages"][-2]["content"] for r in task.eval}
        assert not seen & asked, task.name
        # ... while every answer is one the adapter was trained to give.
        answers = {r["messages"][-1]["content"] for r in task.train}
        assert {r["messages"][-1]["content"] for r in task.eval} <= answers


def test_tasks_have_distinct_answers() -> None:
    tasks = build_tasks()
    codeword = {r["messages"][-1]["content"] for r in tasks["codeword"].eval}
    caps = {r["messages"][-1]["content"] for r in tasks["caps"].eval}
    assert not codeword & caps


def test_exact_match() -> None:
    assert exact_match([" Olivia", "RED\n", "red"], ["Olivia", "RED", "RED"]) == 2 / 3
    assert exact_match([], []) == 0.0
    assert normalize("  a \n b ") == "a b"
