"""Evaluation by default: which eval data a run uses, and greedy exact match on short answers.

Eval data, in order: ``--eval FILE``; ``--eval-split SHARE``; else (unless ``--no-eval``) an eval
file next to a training file named ``train.<ext>`` (``eval``, ``validation``, ``valid`` or
``val`` with the same extension); else a held-out split of 10 % of the records, at most 200 and
at least 1, none when the data has fewer than ``MIN_RECORDS_TO_SPLIT`` records.

Exact match is measured for data rendered with the base's chat template (the serving path) when
every reference answer among the first ``EXACT_MATCH_PROMPTS`` eval examples is at most
``SHORT_ANSWER_TOKENS`` tokens long: longer answers rarely match word for word, so loss decides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from loramux.release.evaluation import normalize  # the eval gate's exact match, as served
from loramux.trainer.data import Example

AUTO_EVAL_STEMS = ("eval", "validation", "valid", "val")
SPLIT_SHARE = 0.1
SPLIT_MAX = 200
MIN_RECORDS_TO_SPLIT = 10  # below this, one held-out record costs more than 10 % of the data
EXACT_MATCH_PROMPTS = 50
SHORT_ANSWER_TOKENS = 32


def sibling_eval_file(train_file: Path) -> Path | None:
    """``DIR/eval.jsonl`` for ``DIR/train.jsonl`` (see AUTO_EVAL_STEMS), if there is one."""
    train_file = Path(train_file)
    if train_file.stem.lower() != "train":
        return None
    for stem in AUTO_EVAL_STEMS:
        candidate = train_file.with_name(stem + train_file.suffix)
        if candidate.is_file():
            return candidate
    return None


def auto_split_size(records: int) -> int:
    """How many of ``records`` to hold out when no eval data was given (0: too few to spare)."""
    if records < MIN_RECORDS_TO_SPLIT:
        return 0
    return min(SPLIT_MAX, max(1, round(records * SPLIT_SHARE)))


@dataclass(frozen=True)
class AnswerItem:
    prompt: list[dict[str, str]]  # every message before the answer
    reference: str


def exact_match_items(examples: Sequence[Example], tokenizer, prompt_template: str | None,
                      ) -> tuple[list[AnswerItem], str]:
    """(items, reason): the eval prompts to score, or no items and why exact match is skipped."""
    if prompt_template is not None:
        return [], "a prompt template, not the chat template, renders the prompts"
    items = []
    for example in examples[:EXACT_MATCH_PROMPTS]:
        messages = example.chat_view()
        if messages[-1]["role"] != "assistant":
            return [], f"{example.where}: the last message is not the assistant's answer"
        items.append(AnswerItem(messages[:-1], messages[-1]["content"]))
    if not items:
        return [], "no eval data"
    longest = max(len(tokenizer(i.reference, add_special_tokens=False)["input_ids"])
                  for i in items)
    if longest > SHORT_ANSWER_TOKENS:
        return [], f"answers up to {longest} tokens are longer than {SHORT_ANSWER_TOKENS}"
    return items, ""


def greedy_answers(model, tokenizer, prompts: Sequence[list[dict[str, str]]], *,
                   max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers through the chat template with a generation prompt, as the server renders
    a chat request; left-padded batches."""
    import torch

    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(list(p), tokenize=False,
                                                   add_generation_prompt=True)
                     for p in prompts[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                                     use_cache=True)
            answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                              skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def exact_match(model, tokenizer, items: Sequence[AnswerItem]) -> float:
    """Share of items whose greedy answer equals the reference (whitespace-normalised)."""
    if not items:
        return 0.0
    longest = max(len(tokenizer(i.reference, add_special_tokens=False)["input_ids"])
                  for i in items)
    got = greedy_answers(model, tokenizer, [i.prompt for i in items],
                         max_new_tokens=longest + 4)
    hits = sum(normalize(g) == normalize(i.reference) for g, i in zip(got, items, strict=True))
    return hits / len(items)


def measure(trainer, tokenizer, items: Sequence[AnswerItem], *, base: bool,
            ) -> tuple[float, float | None]:
    """(eval loss, exact match or None) of the trainer's model; ``base``: with the adapter off.

    Runs under a forked RNG so that measuring before training leaves the run's random stream
    (dropout, data order) exactly as it would be without it.
    """
    import torch

    model = trainer.model
    adapter_off = model.disable_adapter() if base else contextlib.nullcontext()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), _weights_untouched(model), adapter_off:
        metrics = trainer.evaluate(metric_key_prefix="base" if base else "eval")
        loss = float(metrics["base_loss" if base else "eval_loss"])
        score = exact_match(model, tokenizer, items) if items else None
    return loss, score


@contextlib.contextmanager
def _weights_untouched(model) -> Iterator[None]:
    """Measure without repacking the frozen 4-bit weights.

    On a CPU with AVX512-BF16, bitsandbytes repacks a Linear4bit's weight for inference on its
    first eval-mode, no-grad forward, and that drops double quantization for the rest of the
    run: measuring the base before training would change the model that then trains.
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    saved = [m.support_avx512bf16_for_cpu for m in layers]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    try:
        yield
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.support_avx512bf16_for_cpu = value
