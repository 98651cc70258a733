"""Is this a LoRA adapter the server can load? Checked before anything is stored.

The same checks run on a local folder (before copying) and on uploaded blobs (before the
version commits), keyed by the adapter's logical file paths and reading bytes from wherever they
physically are. Only safetensors headers are read, never tensor data.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from loramux.registry.errors import (
    ConfigMismatch,
    InvalidAdapter,
    InvalidName,
    NotLora,
    PickleWeights,
    TooLarge,
)
from loramux.registry.manifest import LoraFacts
from loramux.registry.patterns import Matcher, check_config_patterns, check_tensor_name
from loramux.registry.sources import check_entry, open_regular

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+=@-]{0,254}$")
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
# Every dtype a server reads and checks at load (its finite-weights check included): F8_*, F4,
# F6_* and unsigned 16-64 bit tensors make that check raise, so they are refused here, at push.
LOADABLE_DTYPES = frozenset(_FLOAT_DTYPES | {"I8", "U8", "I16", "I32", "I64", "BOOL"})
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?P<adapter>[A-Za-z0-9_-]+))?(?:\.weight)?$"
)
_DORA_KEY = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.[A-Za-z0-9_-]+)?(?:\.weight)?$")
_PREFIXES = ("base_model.model.",)

CONVERT_HINT = (
    "pickle weights can run arbitrary code when loaded, so the registry stores safetensors only. "
    "Re-save with model.save_pretrained(dir, safe_serialization=True), or convert: "
    "python -c \"import torch; from safetensors.torch import save_file; "
    "save_file(torch.load('adapter_model.bin', weights_only=True), "
    "'adapter_model.safetensors')\" and delete the .bin"
)
# A trainer's checkpoint state, not weights: pushing a checkpoint folder (or an output folder
# that holds checkpoints) is the usual way these arrive, and converting them is the wrong remedy.
TRAINER_STATE_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin",
                       "scaler.pt"}
_CHECKPOINT_DIR = re.compile(r"^(checkpoint-\d+|checkpoints)$")
_RNG_STATE = re.compile(r"^rng_state(_\d+)?\.pth$")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one push may store; the HTTP server enforces the same ones."""

    max_total_bytes: int = 2 << 30
    max_file_bytes: int | None = None
    max_files: int = 256
    max_config_bytes: int = 1 << 20

    @property
    def file_bytes(self) -> int:
        return min(self.max_file_bytes or self.max_total_bytes, self.max_total_bytes)


@dataclass
class ValidatedAdapter:
    lora: LoraFacts
    base_model_name_or_path: str | None
    config: dict[str, Any]
    tensors: dict[str, list[int]] = field(default_factory=dict)


def check_rel_path(path: str) -> str:
    """A file path inside an adapter: relative, POSIX, no traversal, no hidden parts."""
    if not isinstance(path, str) or not path or len(path) > 1024:
        raise InvalidName(f"invalid file path {path!r} in adapter")
    parts = path.split("/")
    if len(parts) > 8 or any(not _COMPONENT_RE.match(p) or p in (".", "..") for p in parts):
        raise InvalidName(
            f"invalid file path {path!r} in adapter: relative POSIX path of plain names "
            "(letters, digits, '._+=@-'), no '..', no hidden files, at most 8 levels"
        )
    return path


def check_file_tree(paths: Iterable[str]) -> None:
    """No listed path may also be a folder of another (``x`` and ``x/y``): no folder can hold
    both, so every pull of such a version would fail."""
    listed = set(paths)
    for path in sorted(listed):
        parts = path.split("/")
        for i in range(1, len(parts)):
            if (prefix := "/".join(parts[:i])) in listed:
                raise InvalidName(f"file {prefix!r} is also listed as a folder, of {path!r}: "
                                  "a file list must be a tree")


def scan_folder(folder: Path, limits: Limits) -> dict[str, Path]:
    """Map the adapter's relative paths to files; hidden files and folders are skipped,
    symlinks and special files (FIFOs, devices, sockets) refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidAdapter(f"{folder} is not a folder")
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):  # never descends into linked folders
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for d in dirnames:
            check_entry(Path(dirpath) / d, folder=True)
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            full = Path(dirpath) / fname
            check_entry(full)  # a symlink or a FIFO is refused here, before anything opens it
            rel = full.relative_to(folder).as_posix()
            found[check_rel_path(rel)] = full
            if len(found) > limits.max_files:
                raise TooLarge(f"{folder} has more than {limits.max_files} files")
    return found


def check_sizes(sizes: dict[str, int], limits: Limits) -> None:
    if len(sizes) > limits.max_files:
        raise TooLarge(f"adapter has {len(sizes)} files (limit {limits.max_files})")
    for rel, size in sizes.items():
        if size > limits.file_bytes:
            raise TooLarge(f"{rel} is {size} bytes (limit {limits.file_bytes} per file)")
    total = sum(sizes.values())
    if total > limits.max_total_bytes:
        raise TooLarge(f"adapter is {total} bytes (limit {limits.max_total_bytes})")


def validate_adapter(files: dict[str, Path], limits: Limits) -> ValidatedAdapter:
    """Validate an adapter given as {relative path: file holding its bytes}."""
    for rel in files:
        check_rel_path(rel)
    check_file_tree(files)
    check_sizes({rel: p.stat().st_size for rel, p in files.items()}, limits)
    pickles = sorted(rel for rel in files if rel.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise PickleWeights(pickle_refusal(pickles))
    if CONFIG not in files:
        raise InvalidAdapter(f"not a PEFT adapter: no {CONFIG} at the top of the folder")
    config = _read_config(files[CONFIG], limits)
    lora = _lora_facts(config)
    if WEIGHTS not in files:
        raise InvalidAdapter(f"no {WEIGHTS}: a LoRA adapter needs its weights in safetensors")
    tensors = {}
    for rel, path in files.items():
        if rel.endswith(".safetensors"):
            shapes = _read_header(rel, path)
            if rel == WEIGHTS:
                tensors = shapes
    _check_tensors(tensors, lora)
    base = config.get("base_model_name_or_path")
    return ValidatedAdapter(lora, base if isinstance(base, str) else None, config, tensors)


def _checkpoint_folder(rel: str) -> str | None:
    """The outermost ``checkpoint-N/`` or ``checkpoints/`` folder ``rel`` lies in, if any."""
    parts = rel.split("/")[:-1]
    for i, part in enumerate(parts):
        if _CHECKPOINT_DIR.match(part):
            return "/".join(parts[: i + 1]) + "/"
    return None


def _trainer_state(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return (_checkpoint_folder(rel) is not None or name in TRAINER_STATE_FILES
            or _RNG_STATE.match(name) is not None)


def pickle_refusal(pickles: list[str]) -> str:
    """The refusal for pickle files, with the remedy that fits them: trainer state is left out
    of the push; only pickled adapter weights are worth converting."""
    state = [p for p in pickles if _trainer_state(p)]
    weights = [p for p in pickles if p not in state and p.rsplit("/", 1)[-1] == "adapter_model.bin"]
    other = [p for p in pickles if p not in state and p not in weights]
    parts = []
    if state:
        folders = sorted({f for p in state if (f := _checkpoint_folder(p)) is not None})
        where = (f"remove or move {', '.join(folders)} out of the folder" if folders else
                 "remove these files, or push the adapter saved at the end of training rather "
                 "than a checkpoint")
        parts.append(
            f"{', '.join(state)}: training checkpoint state (optimizer, scheduler, RNG, "
            f"training arguments), not adapter weights; push only the adapter: {where} (loramux "
            "train keeps its checkpoints apart, in OUT.checkpoints/)")
    if weights:
        parts.append(f"{', '.join(weights)}: {CONVERT_HINT}")
    if other:
        parts.append(f"{', '.join(other)}: pickle files can run arbitrary code when loaded, so "
                     "the registry stores safetensors only; remove them from the folder")
    return "refusing pickle file(s) " + "; ".join(parts)


def _read_config(path: Path, limits: Limits) -> dict[str, Any]:
    with os.fdopen(open_regular(path), "rb") as f:
        data = f.read(limits.max_config_bytes + 1)
    if len(data) > limits.max_config_bytes:
        raise TooLarge(f"{CONFIG} is larger than {limits.max_config_bytes} bytes")
    try:
        config = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidAdapter(f"{CONFIG} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{CONFIG} must hold a JSON object")
    return config


def _lora_facts(config: dict[str, Any]) -> LoraFacts:
    peft_type = config.get("peft_type")
    if peft_type is None:
        raise NotLora(f"{CONFIG} has no peft_type: not a PEFT adapter config")
    if str(peft_type).upper() != "LORA":
        raise NotLora(
            f"peft_type is {peft_type!r}: only LoRA adapters (peft_type LORA) can be served "
            "by loramux"
        )
    check_config_patterns(config)
    missing = [k for k in ("r", "lora_alpha", "target_modules") if config.get(k) in (None, [], "")]
    if missing:
        raise InvalidAdapter(f"{CONFIG} lacks {', '.join(missing)}, which the server needs")
    keys = set(LoraFacts.model_fields)
    facts = {k: v for k, v in config.items() if k in keys and v is not None}
    if isinstance(facts.get("target_modules"), set | tuple):
        facts["target_modules"] = sorted(facts["target_modules"])
    try:
        return LoraFacts.model_validate(facts)
    except ValueError as exc:
        raise InvalidAdapter(f"{CONFIG} has invalid LoRA settings: {exc}") from None


def _read_header(rel: str, path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the header only (safetensors maps the file lazily)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            out = {}
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                sl = f.get_slice(key)
                out[key] = [*sl.get_shape(), sl.get_dtype()]
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidAdapter(f"{rel} is not a valid safetensors file: {exc}") from None
    for key, spec in out.items():
        if spec[-1] not in LOADABLE_DTYPES:
            raise InvalidAdapter(
                f"{rel}: tensor {key[:200]!r} has dtype {spec[-1]}, which loramux servers cannot "
                f"load; save every tensor as one of {', '.join(sorted(LOADABLE_DTYPES))}")
    return out


def _module_key(module: str) -> str:
    for prefix in _PREFIXES:
        if module.startswith(prefix):
            return module[len(prefix) :]
    return module


def _targets(module: str, target_modules: list[str] | str, matcher: Matcher) -> bool:
    """PEFT's own rule: a regex string must fullmatch, list entries match a name suffix."""
    if isinstance(target_modules, str):
        return target_modules == "all-linear" or matcher.fullmatch(
            target_modules, module, "target_modules")
    if "all-linear" in target_modules:
        return True
    return any(module == t or module.endswith("." + t) for t in target_modules)


def _rank_for(module: str, lora: LoraFacts, matcher: Matcher) -> int:
    for pattern, rank in lora.rank_pattern.items():
        if matcher.peft_key_matches(pattern, module, "rank_pattern key"):
            return rank
    return lora.r


def _check_tensors(tensors: dict[str, list[Any]], lora: LoraFacts) -> None:
    pairs: dict[str, dict[str, list[Any]]] = {}
    dora: set[str] = set()
    matcher = Matcher()
    for key, spec in tensors.items():
        check_tensor_name(key)
        if (m := _LORA_KEY.match(key)) is not None:
            side = m["kind"][-1]
            pairs.setdefault(m["module"], {})[side] = spec
        elif (m := _DORA_KEY.match(key)) is not None:
            dora.add(m["module"])
    if not pairs:
        raise ConfigMismatch(f"{WEIGHTS} holds no LoRA tensors (…lora_A.weight / …lora_B.weight)")
    for module, sides in sorted(pairs.items()):
        name = _module_key(module)
        if set(sides) != {"A", "B"}:
            missing = ({"A", "B"} - set(sides)).pop()
            raise ConfigMismatch(f"{module}: lora_{missing} is missing from {WEIGHTS}")
        if not _targets(name, lora.target_modules, matcher):
            raise ConfigMismatch(
                f"{module} has LoRA weights but is not in target_modules {lora.target_modules}"
            )
        rank = _rank_for(name, lora, matcher)
        a, b = sides["A"], sides["B"]
        for side, spec in (("A", a), ("B", b)):
            if spec[-1] not in _FLOAT_DTYPES or len(spec) - 1 not in (2, 4):
                raise ConfigMismatch(f"{module}.lora_{side}: unexpected dtype/shape {spec}")
        if a[0] != rank or b[1] != rank:
            raise ConfigMismatch(
                f"{module}: lora_A {a[:-1]} / lora_B {b[:-1]} have rank {a[0]}/{b[1]} but "
                f"adapter_config.json says r={rank}"
            )
    if dora and not lora.use_dora:
        raise ConfigMismatch(f"{WEIGHTS} has DoRA magnitude vectors but use_dora is false")
    if lora.use_dora and not dora:
        raise ConfigMismatch(f"use_dora is true but {WEIGHTS} has no lora_magnitude_vector")
