"""Loss on assistant tokens only: the labels the model is trained on, taken from its forward call.

The batch is caught where the trainer hands it to the model (a forward pre-hook), so it has gone
through the trainer's whole data path: our records -> the chat template's assistant masks
(TRL's, from the demo base's ``{% generation %}`` markers; loramux's, for a SmolLM2-style
ChatML template without markers) -> the collator. The expectation is computed apart from all
of that, from character offsets in the rendered chat: a token is trained on exactly when it
lies inside an assistant message's content or the end-of-turn text that follows it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import TrainerCallback

from loramux.support.templates import SMOLLM2
from loramux.trainer.api import train

pytestmark = pytest.mark.slow

SYSTEM = {"role": "system", "content": "Answer with one word."}
RECORDS = [
    [SYSTEM, {"role": "user", "content": "What is the code word for the fox?"},
     {"role": "assistant", "content": "Olivia"},
     {"role": "user", "content": "And for the owl?"},
     {"role": "assistant", "content": "Mason"}],
    [{"role": "user", "content": "Write lamp in capital letters."},
     {"role": "assistant", "content": "LAMP"}],
    [SYSTEM, {"role": "user", "content": "Write red in capital letters."},
     {"role": "assistant", "content": "RED"}],
    [{"role": "user", "content": "What is the code word for the cat?"},
     {"role": "assistant", "content": "Noah"},
     {"role": "user", "content": "Write it in capital letters."},
     {"role": "assistant", "content": "NOAH"}],
]


class _CatchBatch(TrainerCallback):
    """Records the keyword arguments of the model's first training forward call."""

    def __init__(self) -> None:
        self.batch: dict | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def hook(module, positional, keywords):
            if self.batch is None and "labels" in keywords:
                self.batch = {k: v.detach().clone() for k, v in keywords.items()
                              if hasattr(v, "detach")}

        model.register_forward_pre_hook(hook, with_kwargs=True)


# SmolLM2's template (its tokens are plain text to the demo tokenizer: no new ids).
# template -> (end-of-turn text trained on after each answer, who finds the assistant tokens)
TEMPLATES = {"demo": ("<|end|>", "trl"), "smollm2": ("<|im_end|>\n", "loramux")}


def _trained_char_ranges(tokenizer, messages: list[dict[str, str]], end_text: str,
                         ) -> list[range]:
    """Character ranges of each assistant message's content plus its end-of-turn text."""
    ranges = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        header = tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                               add_generation_prompt=True)
        start = len(header)
        end = start + len(message["content"]) + len(end_text)
        ranges.append(range(start, end))
    return ranges


def _base_with_template(demo_base: Path, folder: Path, template: str) -> Path:
    """A copy of the demo base whose chat template (chat_template.jinja) is ``template``."""
    shutil.copytree(demo_base, folder)
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    return folder


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_labels_cover_assistant_tokens_only(demo_base: Path, tmp_path: Path,
                                            template: str) -> None:
    from transformers import AutoTokenizer

    end_text, masked_by = TEMPLATES[template]
    base = demo_base if template == "demo" else \
        _base_with_template(demo_base, tmp_path / "base", SMOLLM2)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in RECORDS))
    catch = _CatchBatch()
    result = train({"base": str(base), "data": data, "out": tmp_path / "out", "max_steps": 1,
                    "batch_size": len(RECORDS), "progress": False, "threads": 2, "seed": 0},
                   callbacks=[catch])
    assert catch.batch is not None, "the model was never called with labels"
    assert result.report["data"]["assistant_masks"] == masked_by

    tokenizer = AutoTokenizer.from_pretrained(base)
    assert (template == "smollm2") == ("<|im_start|>" in tokenizer.chat_template)
    rows = {}
    for messages in RECORDS:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        rows[tuple(enc["input_ids"])] = (messages, enc["offset_mapping"])

    ids, labels, mask = catch.batch["input_ids"], catch.batch["labels"], \
        catch.batch["attention_mask"]
    assert ids.shape[0] == len(RECORDS)
    for row in range(ids.shape[0]):
        real = mask[row].bool()
        row_ids = tuple(ids[row][real].tolist())
        assert row_ids in rows, "a batch row is not one of the records, tokenized"
        messages, offsets = rows[row_ids]
        trained = _trained_char_ranges(tokenizer, messages, end_text)
        row_labels = labels[row][real].tolist()
        assert (labels[row][~real] == -100).all(), "padding is never trained on"
        seen_trained = 0
        for position, (token_id, label, (start, _end)) in enumerate(
                zip(row_ids, row_labels, offsets, strict=True)):
            expected = any(start in r for r in trained)
            piece = tokenizer.decode([token_id])
            if expected:
                seen_trained += 1
                assert label == token_id, (position, piece, "assistant token not trained on")
            else:
                assert label == -100, (position, piece, "system/user/markup token trained on")
        assert seen_trained >= 2 * len(trained)  # a word and an end-of-turn per turn
