"""The benchmark's own workload, built deterministically: model, adapters, registry, requests.

Full size: a random-weight Llama of about 77 M parameters (hidden 768, 12 layers, 12 heads with 4
KV heads, MLP 2048, the demo tokenizer's 4 k vocabulary, untied embeddings); 256 random rank-16
LoRA adapters on every linear layer for the load tests, a few more for the hot-swap test, and
rank-8/16/64 ones for the mixed-rank batch. Quick size: the demo base model itself and a handful
of adapters. Model and adapters are cached under the bench cache folder by a hash of what made
them; the registry is a scratch one per run, so every adapter in it is cold for a new server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BUILDER_VERSION = 2
MARKER = "loramux_bench_recipe.json"
_SOURCE = Path(__file__).resolve().parent.parent
# The checkout (editable install, `make bench`); an installed copy works from the current folder.
REPO = _SOURCE if (_SOURCE / "pyproject.toml").is_file() else Path.cwd()
DEFAULT_CACHE = REPO / ".cache" / "bench"
DEMO_BASE = Path(os.environ.get("LORAMUX_DEMO_BASE", REPO / ".cache" / "demo-base"))


@dataclass(frozen=True)
class ModelRecipe:
    """A Llama-architecture model with random weights (compute, not quality, is measured)."""

    shape: dict[str, int] = field(default_factory=lambda: {
        "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
        "num_attention_heads": 12, "num_key_value_heads": 4, "max_position_embeddings": 2048})
    seed: int = 20260
    init_std: float = 0.02


@dataclass(frozen=True)
class AdapterRecipe:
    count: int = 256  # the rank-`rank` adapters the load tests draw from
    cold: int = 5  # extra adapters only the hot-swap test asks for (never loaded before)
    rank: int = 16
    mixed_ranks: tuple[int, ...] = (8, 16, 64)
    mixed_per_rank: int = 4  # adapters of each rank for the mixed-rank batch
    seed: int = 7  # lora_alpha is 2 x rank everywhere


@dataclass
class Workload:
    model_dir: Path
    parameters: int
    served_name: str
    adapters: dict[str, Path]  # load-test adapters, name -> folder (a000, a001, ...)
    cold_adapters: dict[str, Path]  # hot-swap adapters (cold-0, ...)
    mixed_adapters: dict[str, Path]  # the mixed-rank batch's adapters (r8-0, r16-0, r64-0, ...)
    registry_dir: Path
    scratch: Path
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.adapters)


def _digest(*parts: Any) -> str:
    h = hashlib.sha256(f"bench-builder-{BUILDER_VERSION}".encode())
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marked(folder: Path, digest: str) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("digest") == digest else None


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def demo_base() -> Path:
    """The demo base model (built once, cached by its recipe hash)."""
    from loramux.demo.base_model import build

    return build(DEMO_BASE).path


def build_model(cache: Path, recipe: ModelRecipe | None = None) -> tuple[Path, int]:
    """The random-weight Llama in `cache`, reusing the folder when its recipe hash matches."""
    recipe = recipe or ModelRecipe()
    tokenizer_dir = demo_base()
    digest = _digest(asdict(recipe), _file_digest(tokenizer_dir / "tokenizer.json"))
    out = cache / f"llama-{digest[:12]}"
    meta = _marked(out, digest)
    if meta is not None:
        return out, meta["parameters"]

    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    from loramux.demo.base_model import llama_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = llama_config(recipe.shape, tokenizer, initializer_range=recipe.init_std)
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=cache))
    try:
        model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, do_sample=False).save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(
            {"digest": digest, "recipe": asdict(recipe), "parameters": parameters}, indent=2))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built the bench model (%d parameters) at %s", parameters, out)
    return out, parameters


def demo_parameters(model_dir: Path) -> int:
    from loramux.demo.base_model import RECIPE_FILE

    return int(json.loads((model_dir / RECIPE_FILE).read_text())["parameters"])


def adapter_names(recipe: AdapterRecipe) -> tuple[list[str], list[str], list[str]]:
    """Names of the load-test, hot-swap and mixed-rank adapters."""
    width = max(2, len(str(recipe.count - 1)))
    return ([f"a{i:0{width}d}" for i in range(recipe.count)],
            [f"cold-{i}" for i in range(recipe.cold)],
            [f"r{rank}-{i}" for i in range(recipe.mixed_per_rank)
             for rank in recipe.mixed_ranks])


def adapter_rank(name: str, recipe: AdapterRecipe) -> int:
    return int(name[1:].split("-", 1)[0]) if name.startswith("r") else recipe.rank


def build_adapters(model_dir: Path, cache: Path, recipe: AdapterRecipe,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Path]:
    """Random LoRA adapters on every linear layer of the model (distinct weights per adapter),
    in bf16 like a trained adapter, written from the model's shapes (loramux.support)."""
    from loramux.support.adapters import llama_shapes, write_adapter

    model_digest = json.loads((model_dir / MARKER).read_text())["digest"] if (
        model_dir / MARKER).is_file() else _file_digest(model_dir / "model.safetensors")
    digest = _digest(asdict(recipe), model_digest)
    out = cache / f"adapters-{digest[:12]}"
    names = [n for group in adapter_names(recipe) for n in group]
    if _marked(out, digest) is not None:
        return {n: out / n for n in names}
    shapes = llama_shapes(model_dir)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=cache))
    try:
        for i, name in enumerate(names):
            rank = adapter_rank(name, recipe)
            write_adapter(tmp / name, shapes, rank=rank, alpha=2 * rank,
                          seed=recipe.seed * 100_003 + i, dtype="bfloat16",
                          base=str(model_dir))
            if progress:
                progress(i + 1, len(names))
        (tmp / MARKER).write_text(json.dumps({"digest": digest, "recipe": asdict(recipe)}))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {n: out / n for n in names}


def publish(registry_dir: Path, model_dir: Path, adapters: dict[str, Path],
            progress: Callable[[int, int], None] | None = None) -> None:
    """Push every adapter to a registry at `registry_dir` (a scratch one per run)."""
    import loramux.registry as reg

    registry = reg.open(registry_dir)
    try:
        for i, (name, folder) in enumerate(adapters.items()):
            registry.push(folder, name, base_model=model_dir)
            if progress:
                progress(i + 1, len(adapters))
    finally:
        registry.close()


# -- requests -----------------------------------------------------------------------------------


def _word_tokens(tokenizer) -> list[int]:
    """Ids of tokens that are one space-prefixed lowercase word: a run of them re-encodes to
    exactly the same ids, so every prompt has exactly the token count asked for."""
    ids = []
    for token, idx in tokenizer.get_vocab().items():
        if token.startswith("Ġ") and token[1:].isascii() and token[1:].isalpha() and len(
                token) > 2 and token[1:].islower():
            ids.append(idx)
    return sorted(ids)


def make_prompts(model_dir: Path, count: int, tokens: int, seed: int) -> list[str]:
    """`count` distinct prompts of exactly `tokens` tokens each (no special tokens added)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words = _word_tokens(tokenizer)
    if len(words) < 50:
        raise RuntimeError(f"the tokenizer of {model_dir} has too few word tokens for prompts")
    rng = random.Random(seed)
    prompts: list[str] = []
    while len(prompts) < count:
        ids = [rng.choice(words) for _ in range(tokens)]
        text = tokenizer.decode(ids)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == tokens:
            prompts.append(text)
    return prompts


@dataclass(frozen=True)
class Request:
    model: str
    prompt: str
    max_tokens: int

    def payload(self) -> dict[str, Any]:
        """The exact JSON body every server receives (OpenAI completions + vLLM extensions)."""
        return {"model": self.model, "prompt": self.prompt, "max_tokens": self.max_tokens,
                "temperature": 0.0, "ignore_eos": True, "add_special_tokens": False,
                "stream": True, "stream_options": {"include_usage": True}}


def requests_for(prompts: list[str], models: list[str], max_tokens: int) -> list[Request]:
    return [Request(m, p, max_tokens) for m, p in zip(models, prompts, strict=True)]
