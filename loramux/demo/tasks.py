"""Synthetic fine-tuning tasks for the demo base model, with answers that can be checked exactly.

The demo base model learned the chat format and a few skills, but it cannot copy text from its
prompt, and a LoRA trained for a minute on a CPU only learns to route a *single* prompt token
to the answer. So each task's answer is a function of one word of the prompt, the answers are
one token long (exact match is unambiguous), and each eval set asks in phrasings the adapter
never saw in training:

* ``codeword`` (knowledge): a fixed table of 12 animals -> code words ("What is the code word
  for the fox?" -> "Victor"). Training uses 24 phrasings, evaluation three others.
* ``caps`` (format conversion): a word -> the same word in capital letters ("Write lamp in
  capital letters." -> "LAMP"). Training uses 24 phrasings, evaluation three others.

Neither task is in the base's pretraining corpus (its own upper-casing skill answers with
unrelated words), and an adapter for one task answers the other task's prompts in its own
format, so the base and the other adapter both score near zero.

Records are OpenAI chat fine-tuning JSONL (``{"messages": [...]}``); each eval record ends with
the expected assistant message. Everything is generated from a fixed seed, so the files are
byte-identical across runs and machines.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramux.demo.corpus import ANIMALS, COLORS, NAMES, OBJECTS, SYSTEM_PROMPTS
from loramux.release.evaluation import normalize  # the eval gate's and the trainer's exact match

Message = dict[str, str]
Record = dict[str, list[Message]]

SEED = 20240611
TASKS = ("codeword", "caps")

# Training settings for both demo adapters (NF4 base, fp32 compute on every CPU). What decides
# the outcome is whether the adapter finds the prompt's word (the animal, the word to write in
# capitals): until it does, every answer is the same table entry. The base is built on each
# machine and another CPU's kernels build a different one (same corpus, other rounding: weights
# 39 % apart), so the recipe is measured on more than one base; fp32 keeps bf16 kernels out of
# the adapters' own run. The bf16 recipe this replaces (1,500 steps, lr 2e-3, on a base that
# could not copy a word) scored 29/36 code words on one AMD machine and 18/36 at step 500 on an
# Intel one. With these settings, code words 36/36 from step 200 on this machine's base and
# from step 500 on a base built with default (non-AVX) kernels; caps 48/48 from step 600 here,
# 45/48 from step 500 there (one word, yellow, stays mapped to CHAIR); all of these runs used
# one thread each. Without gradient checkpointing: on a 3.6 M-parameter base it only costs
# time. One thread: the two adapters train side by side (loramux.demo.trained), in about half
# the time of one after the other on two threads.
DEMO_TRAIN_SETTINGS: dict[str, Any] = {
    "max_steps": 1000,
    "batch_size": 16,
    "learning_rate": 2e-3,
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "warmup_ratio": 0.05,
    "lr_scheduler": "cosine",
    "compute_dtype": "float32",
    "gradient_checkpointing": False,
    "threads": 1,
    "logging_steps": 25,
    "max_seq_length": 128,
    "seed": 42,
}

# --- codeword -------------------------------------------------------------------------------

CODEWORD_THINGS = list(ANIMALS)[:12]  # each one token of the demo tokenizer
CODEWORD_TRAIN_TEMPLATES = [
    "What is the code word for the {x}?",
    "Code word for the {x}?",
    "Tell me the code word for the {x}.",
    "Give me the {x} code word.",
    "The {x} has a code word. What is it?",
    "I need the code word of the {x}.",
    "Which code word belongs to the {x}?",
    "What code word goes with the {x}?",
    "Code word of the {x}, please.",
    "Please give the code word for the {x}.",
    "Can you tell me the {x} code word?",
    "Remind me of the code word for the {x}.",
    "What was the code word for the {x} again?",
    "Say the code word for the {x}.",
    "The code word for the {x} is what?",
    "I forgot the code word for the {x}.",
    "Tell me the {x} code word.",
    "The {x} code word, please.",
    "Which is the {x} code word?",
    "I want the {x} code word.",
    "Could you give me the code word for the {x}?",
    "Let me know the code word for the {x}.",
    "For the {x}, what is the code word?",
    "What's the code word of the {x}?",
]
CODEWORD_EVAL_TEMPLATES = [
    "Please tell me the code word for the {x}.",
    "What is the {x} code word?",
    "Do you know the code word for the {x}?",
]

# --- caps -----------------------------------------------------------------------------------

CAPS_WORDS = COLORS + [o for o in OBJECTS if o != "cup"][:6]  # "CUP" is the base's default
CAPS_TRAIN_TEMPLATES = [
    "Write {w} in capital letters.",
    "Uppercase the word {w}.",
    "How is {w} written in caps?",
    "Put {w} in upper case.",
    "Convert {w} to capitals.",
    "Shout the word {w}.",
    "Capitalize every letter of {w}.",
    "Give me {w} in all caps.",
    "Please uppercase {w}.",
    "Can you write {w} in capital letters?",
    "Write the word {w} in caps.",
    "Make {w} upper case.",
    "What is {w} in capital letters?",
    "Spell {w} in capitals.",
    "Rewrite {w} in all capital letters.",
    "{w} in caps, please.",
    "Write {w} in uppercase.",
    "Uppercase {w}, please.",
    "Change {w} to capital letters.",
    "Can you put {w} in capitals?",
    "{w} in capital letters, please.",
    "How do you write {w} in capitals?",
    "Make the word {w} all caps.",
    "Type {w} in upper case.",
]
CAPS_EVAL_TEMPLATES = [
    "Please write {w} in capitals.",
    "What is {w} in upper case?",
    "Turn {w} into capital letters.",
]


@dataclass(frozen=True)
class DemoTask:
    name: str
    description: str
    train: list[Record]
    eval: list[Record]
    answers: dict[str, Any] = field(default_factory=dict, compare=False)


def _chat(user: str, answer: str, system: str | None = None) -> Record:
    messages: list[Message] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def lookup_task(name: str, description: str, table: dict[str, str], train_templates: list[str],
                eval_templates: list[str], rng: random.Random) -> DemoTask:
    """Every key in every training phrasing; every key in every held-out phrasing for eval."""
    train = []
    for key, answer in table.items():
        for template in train_templates:
            system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.3 else None
            train.append(_chat(template.format(x=key, w=key), answer, system))
    evals = []
    for i, (key, answer) in enumerate(table.items()):
        for j, template in enumerate(eval_templates):
            system = SYSTEM_PROMPTS[(i + j) % len(SYSTEM_PROMPTS)] if (i + j) % 4 == 3 else None
            evals.append(_chat(template.format(x=key, w=key), answer, system))
    rng.shuffle(train)
    return DemoTask(name, description, train, evals, {"table": table})


def build_tasks(seed: int = SEED) -> dict[str, DemoTask]:
    """Every demo task, deterministic for a seed."""
    rng = random.Random(seed)
    words = list(NAMES)
    rng.shuffle(words)
    codewords = dict(zip(CODEWORD_THINGS, words, strict=False))
    caps = {w: w.upper() for w in CAPS_WORDS}
    return {
        "codeword": lookup_task("codeword", "code word of an animal (a fixed lookup table)",
                                codewords, CODEWORD_TRAIN_TEMPLATES, CODEWORD_EVAL_TEMPLATES,
                                random.Random(seed + 1)),
        "caps": lookup_task("caps", "a word in capital letters (format conversion)", caps,
                            CAPS_TRAIN_TEMPLATES, CAPS_EVAL_TEMPLATES, random.Random(seed + 2)),
    }


def _write_jsonl(path: Path, records: Iterable[Record]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")


def write_task(task: DemoTask, folder: Path | str) -> Path:
    """``folder/train.jsonl`` and ``folder/eval.jsonl`` for one task; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_jsonl(folder / "train.jsonl", task.train)
    _write_jsonl(folder / "eval.jsonl", task.eval)
    return folder


def write_demo_data(out: Path | str, seed: int = SEED) -> dict[str, Path]:
    """Write ``out/<task>/train.jsonl`` and ``out/<task>/eval.jsonl``; returns task -> folder."""
    return {name: write_task(task, Path(out) / name) for name, task in build_tasks(seed).items()}


# --- exact-match evaluation -----------------------------------------------------------------


@dataclass
class EvalItem:
    messages: list[Message]  # the prompt: every message but the last
    expected: str  # the last (assistant) message's content


@dataclass
class ExactMatch:
    correct: int
    total: int
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (prompt, expected, got)

    @property
    def score(self) -> float:
        return self.correct / self.total if self.total else 0.0


def load_eval(path: Path | str) -> list[EvalItem]:
    """Eval records: chat records whose last message is the expected assistant answer."""
    items = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        messages = json.loads(line)["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"{path}:{line_no}: the last message must be the assistant's answer")
        items.append(EvalItem(messages[:-1], messages[-1]["content"]))
    return items


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after trimming whitespace."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return 0.0
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def load_generator(base: Path | str, adapter: Path | str | None = None, *, quantize: bool = True):
    """(model, tokenizer) for greedy chat generation: the base in NF4 (or unquantized) plus an
    adapter, computing in this machine's fast dtype (bf16, or fp32 on CPUs without bf16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loramux.hardware import fast_dtype
    from loramux.trainer.model import quantization_config

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    dtype = fast_dtype("cpu")  # the model is loaded on the CPU
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if quantize:
        kwargs["quantization_config"] = quantization_config(compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model, tokenizer


def generate(model, tokenizer, conversations: Sequence[list[Message]], *,
             max_new_tokens: int = 16, batch_size: int = 32) -> list[str]:
    """Greedy answers to chat prompts, batched with left padding."""
    import torch

    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(conversations), batch_size):
            batch = conversations[start:start + batch_size]
            texts = [tokenizer.apply_chat_template(list(c), tokenize=False,
                                                   add_generation_prompt=True) for c in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return answers


def evaluate_exact_match(base: Path | str, adapter: Path | str | None, eval_file: Path | str, *,
                         quantize: bool = True, model_and_tokenizer=None,
                         max_new_tokens: int = 16) -> ExactMatch:
    """Exact match of greedy answers (transformers + peft, in-process) on an eval file."""
    items = load_eval(eval_file)
    model, tokenizer = model_and_tokenizer or load_generator(base, adapter, quantize=quantize)
    got = generate(model, tokenizer, [i.messages for i in items], max_new_tokens=max_new_tokens)
    samples = [(i.messages[-1]["content"], i.expected, g) for i, g in zip(items, got, strict=True)]
    correct = sum(normalize(g) == normalize(i.expected) for i, g in zip(items, got, strict=True))
    return ExactMatch(correct, len(items), samples)


def _score(model, tokenizer, items: list[EvalItem], max_new_tokens: int) -> ExactMatch:
    got = generate(model, tokenizer, [i.messages for i in items], max_new_tokens=max_new_tokens)
    samples = [(i.messages[-1]["content"], i.expected, g) for i, g in zip(items, got, strict=True)]
    correct = sum(normalize(g) == normalize(i.expected) for i, g in zip(items, got, strict=True))
    return ExactMatch(correct, len(items), samples)


def exact_match_table(base: Path | str, adapters: dict[str, Path | str],
                      eval_files: dict[str, Path | str], *, quantize: bool = True,
                      max_new_tokens: int = 8) -> dict[str, dict[str, ExactMatch]]:
    """``table[eval task][model]`` for the base ("base") and each adapter, one base load.

    The base is loaded once (NF4 unless ``quantize`` is False); adapters are attached with
    peft under their task names and switched per row, the base scored with adapters disabled.
    """
    from peft import PeftModel

    model, tokenizer = load_generator(base, None, quantize=quantize)
    names = list(adapters)
    peft_model = None
    for name in names:
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(adapters[name]), adapter_name=name)
        else:
            peft_model.load_adapter(str(adapters[name]), adapter_name=name)
    table: dict[str, dict[str, ExactMatch]] = {}
    for task, path in eval_files.items():
        items = load_eval(path)
        row: dict[str, ExactMatch] = {}
        if peft_model is None:
            row["base"] = _score(model, tokenizer, items, max_new_tokens)
        else:
            peft_model.eval()
            with peft_model.disable_adapter():
                row["base"] = _score(peft_model, tokenizer, items, max_new_tokens)
            for name in names:
                peft_model.set_adapter(name)
                row[name] = _score(peft_model, tokenizer, items, max_new_tokens)
        table[task] = row
    return table
