"""Random LoRA adapters in PEFT's on-disk format, for tests and benchmarks.

Written straight from shapes (no model is loaded, no peft needed): `adapter_config.json` plus one
`adapter_model.safetensors` whose keys are exactly what `peft.save_pretrained` writes, so the
registry, vLLM and peft all read them as real adapters. Distinct seeds give distinct weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

# peft's "all-linear" on a Llama-architecture model (lm_head excluded, as peft does).
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Shapes = Mapping[str, tuple[int, int]]  # module path -> (in_features, out_features)


def llama_shapes(config: Mapping[str, int] | Path,
                 modules: tuple[str, ...] = LLAMA_LINEAR) -> dict[str, tuple[int, int]]:
    """The linear layers of a Llama model (its `config.json`, or the dict) by module path."""
    if isinstance(config, Path):
        config = json.loads((config / "config.json" if config.is_dir() else config).read_text())
    hidden, mlp = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    per_module = {
        "q_proj": ("self_attn", hidden, heads * head_dim),
        "k_proj": ("self_attn", hidden, kv * head_dim),
        "v_proj": ("self_attn", hidden, kv * head_dim),
        "o_proj": ("self_attn", heads * head_dim, hidden),
        "gate_proj": ("mlp", hidden, mlp), "up_proj": ("mlp", hidden, mlp),
        "down_proj": ("mlp", mlp, hidden)}
    return {f"model.layers.{layer}.{per_module[m][0]}.{m}": per_module[m][1:]
            for layer in range(config["num_hidden_layers"]) for m in modules}


def filler_shapes(mib: float, rank: int, width: int = 4096) -> dict[str, tuple[int, int]]:
    """q/v projections of `width` enough for an fp32 adapter of about `mib` MiB (size tests)."""
    pairs = max(1, round(mib * (1 << 20) / (2 * rank * width * 4)))
    return {f"model.layers.{i // 2}.self_attn.{('q_proj', 'v_proj')[i % 2]}": (width, width)
            for i in range(pairs)}


def write_adapter(folder: Path, shapes: Shapes, *, rank: int = 8, alpha: int | None = None,
                  seed: int = 0, dtype: str = "float32", b_std: float = 0.02,
                  base: str = "loramux/random-base") -> Path:
    """A random LoRA adapter over `shapes` in `folder`; returns `folder`.

    A ~ N(0, 1/in_features) and B ~ N(0, b_std): a small, nonzero delta, unlike peft's default
    init whose B is zero. `dtype` is float32 (numpy only) or bfloat16 (needs torch).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module, (fan_in, fan_out) in shapes.items():
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, fan_in), np.float32)
                                           * np.float32(fan_in ** -0.5))
        tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((fan_out, rank), np.float32)
                                           * np.float32(b_std))
    path = str(folder / "adapter_model.safetensors")
    if dtype == "float32":
        from safetensors.numpy import save_file

        save_file(tensors, path)
    elif dtype == "bfloat16":
        import torch
        from safetensors.torch import save_file as save_torch

        save_torch({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}, path)
    else:
        raise ValueError(f"dtype must be float32 or bfloat16, not {dtype!r}")
    targets = sorted({module.rsplit(".", 1)[-1] for module in shapes})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank,
              "lora_alpha": alpha if alpha is not None else 2 * rank, "lora_dropout": 0.0,
              "bias": "none", "target_modules": targets, "base_model_name_or_path": base,
              "use_dora": False, "use_rslora": False, "modules_to_save": None}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder
