"""The real base end to end: a task SmolLM2-135M-Instruct cannot do, one adapter that can.

Shared by ``loramux demo real`` and the real-model test, so what the README's table shows is what
the test holds. The task is the demo's ``codeword`` table cut to six animals (an animal -> a
code word drawn at random: no pretrained model knows it), asked in the real model's own chat
format (ChatML, its default system prompt when the record has none). The served answers (vLLM,
NF4 base) are held against transformers + peft on the unquantized base by ``Agreement``: NF4 is
not bf16, so the rule compares scores and counts identical answers rather than equal tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loramux.demo.tasks import (
    CODEWORD_EVAL_TEMPLATES,
    CODEWORD_TRAIN_TEMPLATES,
    SEED,
    DemoTask,
    EvalItem,
    build_tasks,
    lookup_task,
    normalize,
    write_task,
)

REAL_TASK = "codeword"
REAL_ENTRIES = 6  # the first entries of the demo's code-word table: a test-sized run
# QLoRA on the real base. A pretrained 135 M model learns the 6-entry table in about 36 steps
# (held-out prompts: 6/18 at step 24, 18/18 at steps 36 and 48 of this 48-step run, lr 3e-3):
# a third again as margin, about 4 minutes on 2 cores (make test's budget is why it is not
# more; the 60-step run it replaces answered 18/18 too). fp32 compute on every
# CPU, so the outcome the test holds does not depend on a CPU's bf16 kernels (the served side
# and the reference still use the machine's fast dtype). Without gradient checkpointing: the
# base is small, and recomputing its activations would cost a quarter of the step.
REAL_TRAIN_SETTINGS: dict[str, Any] = {
    "max_steps": 48,
    "compute_dtype": "float32",
    "batch_size": 8,
    "learning_rate": 3e-3,
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "warmup_ratio": 0.1,
    "lr_scheduler": "cosine",
    "logging_steps": 5,
    "max_seq_length": 128,
    "gradient_checkpointing": False,
    "seed": 42,
}
# The agreement rule between the served adapter (NF4) and the reference (unquantized base).
# Exact-match scores within 5 points, or one answer where the eval set is too small to count 5
# points (18 prompts: one answer is 5.6): one near-tie that NF4 tips the other way is the noise
# this rule exists to allow, not a disagreement.
MAX_SCORE_GAP = 0.05
MIN_IDENTICAL = 0.8  # and at least 80 % of the answers identical (after trimming whitespace)


@dataclass(frozen=True)
class Agreement:
    """Served answers against reference answers to the same prompts."""

    served: int  # correct served answers
    reference: int  # correct reference answers
    identical: int  # prompts where both answered the same
    total: int

    @property
    def gap(self) -> float:
        return abs(self.served - self.reference) / self.total

    @property
    def ok(self) -> bool:
        allowed = max(MAX_SCORE_GAP * self.total, 1)  # in answers
        return (abs(self.served - self.reference) <= allowed
                and self.identical >= MIN_IDENTICAL * self.total)

    def line(self) -> str:
        verdict = "agree" if self.ok else "DISAGREE"
        return (f"served {self.served}/{self.total} vs reference {self.reference}/{self.total} "
                f"correct, {self.identical}/{self.total} answers identical: {verdict} (rule: "
                f"scores within {MAX_SCORE_GAP:.0%} or one answer, >= {MIN_IDENTICAL:.0%} "
                "identical)")


def real_task(seed: int = SEED) -> DemoTask:
    """The demo's code-word task cut to ``REAL_ENTRIES`` animals, with all its phrasings."""
    import random

    codeword = build_tasks(seed)[REAL_TASK]
    table = dict(list(codeword.answers["table"].items())[:REAL_ENTRIES])
    return lookup_task(REAL_TASK, f"code word of an animal ({REAL_ENTRIES} of them)", table,
                       CODEWORD_TRAIN_TEMPLATES, CODEWORD_EVAL_TEMPLATES, random.Random(seed + 1))


def write_real_data(out: Path | str) -> dict[str, Path]:
    """``{REAL_TASK: folder}`` with the real task's train.jsonl and eval.jsonl."""
    return {REAL_TASK: write_task(real_task(), Path(out) / REAL_TASK)}


def agreement(items: list[EvalItem], served: list[str], reference: list[str]) -> Agreement:
    def hits(answers: list[str]) -> int:
        return sum(normalize(a) == normalize(i.expected) for a, i in zip(answers, items,
                                                                        strict=True))

    same = sum(normalize(a) == normalize(b) for a, b in zip(served, reference, strict=True))
    return Agreement(hits(served), hits(reference), same, len(items))


def reference_answers(base: Path | str, adapter: Path | str | None, items: list[EvalItem], *,
                      max_new_tokens: int = 8) -> list[str]:
    """Greedy answers of transformers + peft on the unquantized base (its fast dtype here)."""
    from loramux.demo.tasks import generate, load_generator

    model, tokenizer = load_generator(base, adapter, quantize=False)
    return generate(model, tokenizer, [i.messages for i in items],
                    max_new_tokens=max_new_tokens)


def cached_real_adapter(base: Path | str, data: dict[str, Path], cache: Path | str, *,
                        progress: bool = True) -> Path:
    """The real task's adapter on the real base, trained once per recipe (like the demo's)."""
    from loramux.demo.trained import cached_adapters

    return cached_adapters(base, data, cache, REAL_TRAIN_SETTINGS, tasks=[REAL_TASK],
                           progress=progress)[REAL_TASK]
