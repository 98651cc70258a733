"""Training data: read, validate and normalise every record before any training starts.

Formats, detected per file from the first record unless ``format`` says otherwise:

* chat — OpenAI chat fine-tuning JSONL, ``{"messages": [{"role": ..., "content": ...}, ...]}``,
  the same shape the server answers; the loss covers the assistant turns only.
* prompt_completion — ``{"prompt": ..., "completion": ...}``; the loss covers the completion.
* alpaca — ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` optional).

Files: ``.jsonl`` (one record a line), ``.json`` (a list of records), ``.csv`` and ``.parquet``
with the same columns (a chat file's ``messages`` column holds the JSON list). Problems are
reported as ``file:line: what`` (``file:line:column`` for broken JSON, ``row N`` for Parquet,
``record N`` for JSON lists), all of them at once; with ``skip_bad_records`` they are skipped
and counted instead. A ``datasets`` folder or cached dataset name (``loramux.trainer.sources``)
gives records the same way, reported as ``name:split row N``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramux.trainer.errors import DataError

ROLES = ("system", "user", "assistant")
KINDS = ("chat", "prompt_completion", "alpaca")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TEMPLATE_FIELDS = {"prompt_completion": {"prompt"}, "alpaca": {"instruction", "input"}}


@dataclass
class Example:
    """One valid record, normalised, with where it came from (for later error messages)."""

    where: str
    kind: str  # chat | prompt_completion | alpaca (the source format)
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    completion: str | None = None
    system: str | None = None
    input: str = ""  # Alpaca's optional input, for a prompt template's {input}

    def to_row(self, prompt_template: str | None) -> dict[str, Any]:
        """The row handed to TRL: conversational unless a prompt template renders plain text."""
        if self.messages is not None:
            return {"messages": self.messages}
        assert self.prompt is not None and self.completion is not None
        if prompt_template is not None:
            return {"prompt": self.prompt, "completion": self.completion}
        prompt = [{"role": "user", "content": self.prompt}]
        if self.system:
            prompt.insert(0, {"role": "system", "content": self.system})
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": self.completion}]}

    def chat_view(self) -> list[dict[str, str]]:
        """The example as chat messages (for token counting with a chat template)."""
        if self.messages is not None:
            return self.messages
        row = self.to_row(None)
        return row["prompt"] + row["completion"]


@dataclass
class LoadedData:
    path: Path
    kind: str
    examples: list[Example]
    records_read: int
    skipped: list[str] = field(default_factory=list)  # problems of skipped records
    digest: str = ""

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)


# -- reading files ---------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _iter_raw(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """(where, record or None, problem or None) for each record of a file."""
    suffix = path.suffix.lower()
    name = str(path)
    if suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="strict") as f:
            try:
                for line_no, raw in enumerate(f, 1):
                    where = f"{name}:{line_no}"
                    line = raw.rstrip("\r\n")  # else an unclosed record fails on "line 2"
                    if not line.strip():
                        continue
                    try:
                        yield where, json.loads(line), None
                    except json.JSONDecodeError as exc:
                        yield f"{where}:{exc.colno}", None, f"bad JSON: {exc.msg}"
            except UnicodeDecodeError as exc:
                raise DataError(f"{name}: not UTF-8 text ({exc.reason})") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}:{exc.lineno}: bad JSON: {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{name}: not UTF-8 text ({exc.reason})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{name}: a .json file must hold a list of records (or use .jsonl)")
        for i, record in enumerate(data, 1):
            yield f"{name}: record {i}", record, None
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            try:
                for row in reader:
                    where = f"{name}:{reader.line_num}"
                    if None in row:
                        yield where, None, "more fields than the header has columns"
                        continue
                    yield where, {k: v for k, v in row.items() if v is not None}, None
            except csv.Error as exc:
                raise DataError(f"{name}:{reader.line_num}: bad CSV: {exc}") from None
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several unrelated types for bad files
            raise DataError(f"{name}: cannot read Parquet: {exc}") from None
        for i, row in enumerate(rows, 1):
            yield f"{name}: row {i}", {k: v for k, v in row.items() if v is not None}, None
    else:
        raise DataError(f"{name}: unsupported file type {suffix!r} (use {', '.join(SUFFIXES)})")


# -- validating records ----------------------------------------------------------------------


def detect_kind(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "chat"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def _text(value: Any) -> str | None:
    """Message content as text: a string, or OpenAI's list of text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    return None


def _chat(where: str, record: dict[str, Any]) -> Example:
    if "messages" not in record:
        raise ValueError("not a chat record: no 'messages'")
    messages = record["messages"]
    if isinstance(messages, str):  # CSV / Parquet columns hold the list as JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as exc:
            raise ValueError(f"messages is not valid JSON: {exc.msg}") from None
    if not isinstance(messages, list):
        raise ValueError("messages must be a list of {role, content} objects")
    if not messages:
        raise ValueError("empty messages")
    clean: list[dict[str, str]] = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r} (expected one of "
                             f"{', '.join(ROLES)})")
        if message.get("tool_calls") or message.get("function_call"):
            raise ValueError(f"message {i}: tool calls are not supported")
        content = _text(message.get("content"))
        if content is None:
            raise ValueError(f"message {i} ({role}): content must be text")
        if not content.strip():
            raise ValueError(f"message {i} ({role}): empty content")
        if role == "system" and i != 1:
            raise ValueError(f"message {i}: a system message must come first")
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in clean):
        raise ValueError("no assistant turn to learn from")
    return Example(where, "chat", messages=clean)


def _string(record: dict[str, Any], key: str, *, required: bool = True) -> str:
    if required and key not in record:
        raise ValueError(f"missing {key!r}")
    value = record.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"empty {key}")
    return value


def _prompt_completion(where: str, record: dict[str, Any]) -> Example:
    system = _string(record, "system", required=False) or None
    return Example(where, "prompt_completion", prompt=_string(record, "prompt"),
                   completion=_string(record, "completion"), system=system)


def _alpaca(where: str, record: dict[str, Any], template: str | None) -> Example:
    instruction = _string(record, "instruction")
    extra = _string(record, "input", required=False)
    if template is not None:
        prompt = instruction  # rendered later by the template
    else:
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    system = _string(record, "system", required=False) or None
    return Example(where, "alpaca", prompt=prompt, completion=_string(record, "output"),
                   system=system, input=extra)


def check_template(template: str | None, kind: str) -> None:
    """The prompt template must use only the fields its format provides."""
    if template is None:
        return
    if kind == "chat":
        raise DataError("prompt_template applies to prompt/completion and Alpaca data, not chat "
                        "data (chat data uses the base model's chat template)")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise DataError(f"prompt_template is not a valid template: {exc}") from None
    allowed = TEMPLATE_FIELDS[kind]
    unknown = fields - allowed
    if unknown or not fields:
        names = ", ".join("{" + f + "}" for f in sorted(allowed))
        raise DataError(
            f"prompt_template for {kind} data may use {names}"
            + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else "; it uses none"))


def render_prompt(example: Example, template: str) -> str:
    if example.kind == "alpaca":
        return template.format(instruction=example.prompt, input=example.input)
    return template.format(prompt=example.prompt)


def load_data(path: Path | str, *, fmt: str = "auto", prompt_template: str | None = None,
              skip_bad: bool = False) -> LoadedData:
    """Read and validate every record; raise DataError listing all problems unless skip_bad."""
    path = Path(path)
    if path.is_file():
        raw, digest = _iter_raw(path), file_digest(path)
    elif path.suffix.lower() in SUFFIXES:
        raise DataError(f"data file {path} does not exist")
    else:  # a datasets save_to_disk folder, or a cached dataset's name (either with :split)
        from loramux.trainer.sources import open_source

        source = open_source(str(path))
        raw, digest = source.records(), source.digest
    kind = None if fmt == "auto" else fmt
    if kind is not None:
        check_template(prompt_template, kind)
    examples: list[Example] = []
    problems: list[str] = []
    read = 0
    for where, record, problem in raw:
        read += 1
        if problem is None:
            found = detect_kind(record)
            if not isinstance(record, dict):
                problem = f"expected an object, got {type(record).__name__}"
            elif kind is None and found is None:
                problem = ("not a chat ({messages}), prompt/completion ({prompt, completion}) "
                           "or Alpaca ({instruction, input, output}) record")
            elif kind is None:
                kind = found
                check_template(prompt_template, kind)
            elif found is not None and found != kind:
                problem = f"a {found} record in a {kind} file"
        if problem is None:
            try:
                if kind == "chat":
                    example = _chat(where, record)
                elif kind == "prompt_completion":
                    example = _prompt_completion(where, record)
                else:
                    example = _alpaca(where, record, prompt_template)
            except ValueError as exc:
                problem = str(exc)
            else:
                if prompt_template is not None and kind != "chat":
                    example.prompt = render_prompt(example, prompt_template)
                examples.append(example)
        if problem is not None:
            problems.append(f"{where}: {problem}")
    if read == 0:
        raise DataError(f"{path}: no records")
    if problems and not skip_bad:
        raise DataError(f"{path}: {len(problems)} of {read} records are invalid "
                        "(fix them, or pass --skip-bad-records to leave them out)", problems)
    if not examples:
        raise DataError(f"{path}: none of the {read} records is valid", problems)
    return LoadedData(path, "chat" if kind == "chat" else "prompt_completion", examples, read,
                      problems, digest)


def split(data: LoadedData, share: float, seed: int, *, count: int | None = None,
          ) -> tuple[list[Example], list[Example]]:
    """A seeded (train, eval) split holding out ``share`` of the examples (at least one), or
    exactly ``count`` of them."""
    order = list(range(len(data.examples)))
    random.Random(seed).shuffle(order)
    n_eval = count if count is not None else max(1, round(len(order) * share))
    if n_eval >= len(order):
        raise DataError(f"{data.path}: {len(order)} examples are too few to hold out {share:.0%}")
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(data.examples) if i not in held]
    evals = [e for i, e in enumerate(data.examples) if i in held]
    return train, evals


def token_lengths(examples: list[Example], tokenizer, prompt_template: str | None,
                  known: dict[str, int] | None = None) -> list[int]:
    """Tokens per example as the trainer will see them (chat template or prompt + completion);
    ``known``: lengths by ``where`` of records already tokenized (loramux.trainer.chat_masks)."""
    lengths = []
    for example in examples:
        if known is not None and example.where in known:
            lengths.append(known[example.where])
        elif example.messages is not None or prompt_template is None:
            ids = tokenizer.apply_chat_template(example.chat_view(), tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            lengths.append(len(ids))
        else:
            text = f"{example.prompt}{example.completion}{tokenizer.eos_token or ''}"
            lengths.append(len(tokenizer(text, add_special_tokens=True)["input_ids"]))
    return lengths


def check_lengths(examples: list[Example], tokenizer, max_len: int, prompt_template: str | None,
                  *, skip_bad: bool, known: dict[str, int] | None = None,
                  ) -> tuple[list[Example], list[str], int]:
    """Drop (or report) examples longer than the cut-off; returns (kept, problems, tokens)."""
    lengths = token_lengths(examples, tokenizer, prompt_template, known)
    kept, problems = [], []
    for example, n in zip(examples, lengths, strict=True):
        if n > max_len:
            problems.append(f"{example.where}: {n} tokens, longer than max_seq_length {max_len}")
        else:
            kept.append(example)
    if problems and not skip_bad:
        raise DataError(f"{len(problems)} records are longer than the cut-off (raise "
                        "--max-seq-length, or pass --skip-bad-records to leave them out)",
                        problems)
    return kept, problems, sum(n for e, n in zip(examples, lengths, strict=True) if n <= max_len)
