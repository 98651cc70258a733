"""What a GGUF file says about itself: architecture, quantization, special tokens, chat template.

Read with the ``gguf`` package alone (no torch), so the CLI can refuse a wrong file in a second
or two. The end-of-generation ids follow llama.cpp, the runtime GGUF files are written for: the
declared eos/eot/eom ids, plus any token whose text is one of the end markers llama.cpp treats as
end-of-generation. SmolLM2, for one, declares only ``<|im_end|>`` and relies on that rule for
``<|endoftext|>``.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loramux.bases.errors import NotGGUF

MAGIC = b"GGUF"
# llama.cpp's end-of-generation texts (src/llama-vocab.cpp, the special_eog_ids loop).
END_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
})
# What a damaged file makes the reader raise (short reads, bad offsets, bad enum values).
READ_ERRORS = (ValueError, IndexError, KeyError, OSError, struct.error, UnicodeDecodeError)


@dataclass(frozen=True)
class GGUFHeader:
    """The metadata loramux uses; ``end_ids`` holds the eos id first."""

    architecture: str
    name: str | None
    file_type: str | None
    tensor_types: dict[str, int]
    context_length: int | None
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    end_ids: list[int]
    end_texts: list[str]
    chat_template: str | None


def is_gguf(path: Path) -> bool:
    """Whether the file starts with the GGUF magic (checked before anything slow)."""
    try:
        with path.open("rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def check_gguf(path: Path) -> None:
    """Raise ``NotGGUF`` with a one-line reason unless ``path`` looks like a GGUF file."""
    if not path.exists():
        raise NotGGUF(f"{path}: no such file")
    if not path.is_file():
        raise NotGGUF(f"{path}: not a file")
    if not is_gguf(path):
        raise NotGGUF(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")


def read_header(path: Path) -> GGUFHeader:
    """Parse the file's metadata (a few seconds for a 49k-token vocabulary)."""
    import gguf

    check_gguf(path)
    try:
        reader = gguf.GGUFReader(path)
        values = {key: f.contents() for key, f in reader.fields.items()
                  if key not in ("tokenizer.ggml.merges", "tokenizer.ggml.scores")}
        tensor_types = Counter(t.tensor_type.name for t in reader.tensors)
    except READ_ERRORS as exc:
        raise NotGGUF(f"{path}: not a readable GGUF file ({exc})") from None
    architecture = values.get("general.architecture")
    if not isinstance(architecture, str):
        raise NotGGUF(f"{path}: GGUF file without general.architecture")
    tokens: list[str] = list(values.get("tokenizer.ggml.tokens") or [])
    file_type = values.get("general.file_type")
    ends = end_ids(values, tokens)
    return GGUFHeader(
        architecture=architecture,
        name=values.get("general.name"),
        file_type=_file_type_name(file_type),
        tensor_types=dict(sorted(tensor_types.items())),
        context_length=values.get(f"{architecture}.context_length"),
        vocab_size=len(tokens),
        bos_id=values.get("tokenizer.ggml.bos_token_id"),
        eos_id=values.get("tokenizer.ggml.eos_token_id"),
        pad_id=values.get("tokenizer.ggml.padding_token_id"),
        unk_id=values.get("tokenizer.ggml.unknown_token_id"),
        end_ids=ends,
        end_texts=[tokens[i] for i in ends],
        chat_template=values.get("tokenizer.chat_template"),
    )


def end_ids(values: dict[str, Any], tokens: list[str]) -> list[int]:
    """The end-of-generation ids: declared ones first (eos, eot, eom), then llama.cpp's texts."""
    ids: list[int] = []
    for key in ("eos", "eot", "eom"):
        token_id = values.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(token_id, int) and 0 <= token_id < len(tokens) and token_id not in ids:
            ids.append(token_id)
    ids.extend(i for i, text in enumerate(tokens) if text in END_TEXTS and i not in ids)
    return ids


def _file_type_name(value: Any) -> str | None:
    import gguf

    if not isinstance(value, int):
        return None
    try:
        return gguf.LlamaFileType(value).name
    except ValueError:
        return str(value)
