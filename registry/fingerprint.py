"""Base-model fingerprint: which base (weights, config, tokenizer, chat template) an adapter
was trained on, so the server can refuse an adapter trained for another base.

A LoRA delta is meaningless on other weights, and a chat template that differs between
training and serving silently costs quality, so each of those is a component with its own
digest; :func:`compare` names the components that differ. Things that change without changing
the model (``_name_or_path``, ``transformers_version``, the dtype key renamed across
transformers releases, quantization settings, the template moving from tokenizer_config.json to
chat_template.jinja) are normalised away.

Weights are fingerprinted by each file's size, its safetensors header (names, dtypes, shapes,
offsets) and 16 samples of 64 KiB spread over the file. That reads about 1 MiB per shard instead
of the whole model, so the server can afford it at startup, and any fine-tune of the same
architecture changes virtually every sample. It identifies a base; it is not a tamper seal.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from loramux.registry.errors import InvalidBaseModel

VERSION = "loramux-base-fp-1"
SAMPLES = 16
SAMPLE_BYTES = 64 << 10
_CONFIG_DROP = {
    "_name_or_path",
    "transformers_version",
    "_commit_hash",
    "torch_dtype",
    "dtype",
    "quantization_config",
    "use_cache",
    "_attn_implementation_autoset",
}
_TOKENIZER_JSON = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
_TOKENIZER_RAW = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_TOKENIZER_DROP = {"name_or_path", "tokenizer_file", "_commit_hash", "chat_template"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
COMPONENTS = ("config", "tokenizer", "chat_template", "weights")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidBaseModel(f"cannot read {path}: {exc}") from None


def _config_part(model_dir: Path) -> str:
    path = model_dir / "config.json"
    if not path.is_file():
        raise InvalidBaseModel(f"{model_dir} is not a model folder: no config.json")
    config = _load_json(path)
    if not isinstance(config, dict):
        raise InvalidBaseModel(f"{path} does not hold a JSON object")
    return _sha(_canonical({k: v for k, v in config.items() if k not in _CONFIG_DROP}))


def _chat_template(model_dir: Path) -> Any:
    """The template transformers would use, wherever it is stored (same precedence)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.is_file():
            data = _load_json(path)
            if isinstance(data, dict) and data.get("chat_template") is not None:
                return data["chat_template"]
    return None


def _tokenizer_part(model_dir: Path) -> str:
    parts: dict[str, str] = {}
    for name in _TOKENIZER_JSON:
        path = model_dir / name
        if path.is_file():
            data = _load_json(path)
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if k not in _TOKENIZER_DROP}
            parts[name] = _sha(_canonical(data))
    for name in _TOKENIZER_RAW:
        path = model_dir / name
        if path.is_file():
            parts[name] = _sha(path.read_bytes())
    return _sha(_canonical(parts))


def _weight_file_part(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = b""
        start = 0
        if path.suffix == ".safetensors" and size >= 8:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= min(size - 8, 100 << 20):
                header = f.read(n)
                start = 8 + n
        h = hashlib.sha256()
        body = size - start
        step = max(body - SAMPLE_BYTES, 0) / max(SAMPLES - 1, 1)
        for i in range(SAMPLES if body > 0 else 0):
            f.seek(start + int(i * step))
            h.update(f.read(SAMPLE_BYTES))
    return {"size": size, "header": _sha(header), "samples": "sha256:" + h.hexdigest()}


def _weights_part(model_dir: Path) -> str:
    files = sorted(
        p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
    )
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    files = safetensors or files  # transformers prefers safetensors when both exist
    if not files:
        raise InvalidBaseModel(f"{model_dir} has no weight files (*.safetensors or *.bin)")
    parts: dict[str, Any] = {p.name: _weight_file_part(p) for p in files}
    index = model_dir / "model.safetensors.index.json"
    if safetensors and index.is_file():
        data = _load_json(index)
        parts["index"] = _sha(_canonical(data.get("weight_map", {})))
    return _sha(_canonical(parts))


def base_components(model_dir: Path) -> dict[str, str]:
    """One digest per component (config, tokenizer, chat_template, weights)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InvalidBaseModel(f"{model_dir} is not a folder")
    template = _chat_template(model_dir)
    return {
        "config": _config_part(model_dir),
        "tokenizer": _tokenizer_part(model_dir),
        "chat_template": _sha(_canonical(template)) if template is not None else "none",
        "weights": _weights_part(model_dir),
    }


def fingerprint_of(components: dict[str, str]) -> str:
    """The single fingerprint string, from the components (order-independent)."""
    return _sha(_canonical({"v": VERSION, **{k: components[k] for k in COMPONENTS}}))


def base_fingerprint(model_dir: Path) -> str:
    """``sha256:…`` identifying the base model in ``model_dir`` (a local folder)."""
    return fingerprint_of(base_components(model_dir))


def compare(expected: dict[str, str] | None, actual: dict[str, str]) -> list[str]:
    """Components that differ, for an error that says *what* differs (e.g. chat_template)."""
    if not expected:
        return []
    return [k for k in COMPONENTS if k in expected and expected[k] != actual.get(k)]
