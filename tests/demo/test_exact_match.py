"""Each demo adapter learns its task (>= 90 % exact match on held-out prompts, greedy,
transformers + peft in-process, base in NF4); the base and the other task's adapter do not
(<= 10 %)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loramux.demo.tasks import TASKS, exact_match_table

pytestmark = pytest.mark.slow


def _render(table) -> str:
    models = ["base", *TASKS]
    lines = ["eval set   " + "".join(f"{m:>16}" for m in models)]
    for task, row in table.items():
        cells = "".join(f"{f'{row[m].score:.0%} ({row[m].correct}/{row[m].total})':>16}"
                        for m in models)
        lines.append(f"{task:<11}{cells}")
    return "\n".join(lines)


def test_exact_match_table(demo_base: Path, demo_adapters: dict[str, Path],
                           demo_data: dict[str, Path]) -> None:
    table = exact_match_table(demo_base, demo_adapters,
                              {t: demo_data[t] / "eval.jsonl" for t in TASKS})
    text = _render(table)
    print("\n" + text)
    for task in TASKS:
        row = table[task]
        misses = [s for s in row[task].samples if s[1].strip() != s[2].strip()][:5]
        assert row[task].score >= 0.9, f"{task} adapter on its own task\n{text}\n{misses}"
        assert row["base"].score <= 0.1, f"base on {task}\n{text}"
        for other in TASKS:
            if other != task:
                assert row[other].score <= 0.1, f"{other} adapter on {task}\n{text}"
