"""Synthetic fine-tuning tasks for the demo base model, with answers that can be checked exactly.

The demo base model learned the chat format and a few skills, but it cannot copy text from its
prompt, and a LoRA trained for a minute on a CPU only learns to route a *single* prompt token
to the answer. So each task's answer is a function of one word of the prompt, the answers are
one token long (exact match is unambiguous), and each eval set asks in phrasings the adapter
never saw in training:

* ``codeword`` (knowledge): a fixed table of 16 animals -> code words ("What is the code word
  for the fox?" -> "Olivia"). Training uses eight phrasings, evaluation three others.
* ``caps`` (format conversion): a word -> the same word in capital letters ("Write lamp in
  capital letters." -> "LAMP"). Training uses eight phrasings, evaluation three others.

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

Message = dict[str, str]
Record = dict[str, list[Message]]

SEED = 20240611
TASKS = ("codeword", "caps")

# Training settings that reach >= 90 % exact match on both tasks on the demo base (NF4, batch
# 16, about 6 minutes each on 2 CPU cores). The routing from a prompt word to the answer appears
# after a plateau whose length depends on the machine: the demo base is built on the machine
# itself, and its CPU's bf16 kernels decide the exact weights. 500 steps were enough on one
# machine (35/36 code words) and not on another (18/36, eval loss 0.71, the plateau ending near
# step 225); 1500 steps reach eval loss 0.07 there, flat from step 900.
DEMO_TRAIN_SETTINGS: dict[str, Any] = {
    "max_steps": 1500,
    "batch_size": 16,
    "learning_rate": 2e-3,
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "warmup_ratio": 0.05,
    "lr_scheduler": "cosine",
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


def _lookup_task(name: str, description: str, table: dict[str, str], train_templates: list[str],
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
        "codeword": _lookup_task("codeword", "code word of an animal (a fixed lookup table)",
                                 codewords, CODEWORD_TRAIN_TEMPLATES, CODEWORD_EVAL_TEMPLATES,
                                 random.Random(seed + 1)),
        "caps": _lookup_task("caps", "a word in capital letters (format conversion)", caps,
                             CAPS_TRAIN_TEMPLATES, CAPS_EVAL_TEMPLATES, random.Random(seed + 2)),
    }


def _write_jsonl(path: Path, records: Iterable[Record]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")


def write_demo_data(out: Path | str, seed: int = SEED) -> dict[str, Path]:
    """Write ``out/<task>/train.jsonl`` and ``out/<task>/eval.jsonl``; returns task -> folder."""
    out = Path(out)
    folders = {}
    for name, task in build_tasks(seed).items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        _write_jsonl(folder / "train.jsonl", task.train)
        _write_jsonl(folder / "eval.jsonl", task.eval)
        folders[name] = folder
    return folders


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


def normalize(text: str) -> str:
    return " ".join(text.strip().split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after trimming whitespace."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return 0.0
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def load_generator(base: Path | str, adapter: Path | str | None = None, *, quantize: bool = True):
    """(model, tokenizer) for greedy chat generation: the base in NF4 (or bf16) plus an adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loramux.trainer.model import quantization_config

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
    if quantize:
        kwargs["quantization_config"] = quantization_config()
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


def train_demo_adapter(base: Path | str, task_dir: Path | str, out: Path | str,
                       **overrides: Any):
    """Train one demo task's adapter with the demo settings (QLoRA unless quantize=False)."""
    from loramux.trainer.api import train

    task_dir = Path(task_dir)
    settings = {"base": str(base), "data": task_dir / "train.jsonl",
                "eval": task_dir / "eval.jsonl", "out": Path(out), **DEMO_TRAIN_SETTINGS}
    settings.update(overrides)
    return train(settings)


def demo_adapter_key(base: Path | str, data: dict[str, Path]) -> str:
    """A key for trained demo adapters: the demo settings, the trainer's defaults and its mapping
    onto TRL (their source), the base's recipe, the data and the library versions. Equal keys mean
    retraining would give the same adapters, so they are reused.
    """
    import hashlib
    from importlib import metadata

    from loramux.trainer import config, model, sft

    h = hashlib.sha256(json.dumps(DEMO_TRAIN_SETTINGS, sort_keys=True).encode())
    for module in (config, model, sft):
        h.update(Path(module.__file__).read_bytes())
    h.update((Path(base) / "loramux_demo_recipe.json").read_bytes())
    for task in sorted(data):
        h.update((Path(data[task]) / "train.jsonl").read_bytes())
    for lib in ("torch", "transformers", "peft", "trl", "bitsandbytes"):
        h.update(f"{lib}={metadata.version(lib)}".encode())
    return h.hexdigest()[:16]


def cached_demo_adapters(base: Path | str, data: dict[str, Path], cache: Path | str, *,
                         progress: bool = True) -> dict[str, Path]:
    """task -> adapter folder under ``cache/<key>/<task>``, trained only when not there yet.

    The tests and ``loramux demo run`` share this cache, so a newcomer's ``make test`` then
    ``make demo`` trains each demo adapter once. A folder counts only when its report exists
    (written last), so an interrupted run is retrained, never half-reused.
    """
    import shutil

    from loramux.trainer.api import remove_checkpoints

    root = Path(cache) / demo_adapter_key(base, data)
    adapters = {}
    for task in TASKS:
        folder = root / task
        if not (folder / "training_report.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            train_demo_adapter(base, data[task], folder, progress=progress)
            remove_checkpoints(folder)
        adapters[task] = folder
    return adapters
