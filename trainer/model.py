"""Load the base model (4-bit NF4 with double quantization, or plain) and describe the LoRA.

QLoRA as the paper defines it: the frozen base is stored in 4-bit NormalFloat with its
quantization constants quantized again (double quantization), matmuls run in bf16, LoRA adapters
sit on every linear layer, and gradient checkpointing keeps activations small. The paged 8-bit
AdamW optimizer is CUDA-only in bitsandbytes, so other devices get torch's AdamW.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loramux.trainer.config import TrainConfig
from loramux.trainer.errors import ConfigError, ModelError


def quantization_config(quant_type: str = "nf4", double_quant: bool = True,
                        compute_dtype: str = "bfloat16"):
    """QLoRA's storage format: 4-bit NormalFloat, double quantization, bf16 compute."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, compute_dtype))


@dataclass
class Runtime:
    """Where and how training runs, decided once from the config and the machine."""

    device: str  # cpu | cuda
    optimizer: str
    bf16: bool
    fp16: bool
    dtype: str  # the dtype the base is loaded in (non-quantized weights)

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "optimizer": self.optimizer, "bf16": self.bf16,
                "fp16": self.fp16, "dtype": self.dtype}


def runtime_for(config: TrainConfig) -> Runtime:
    import torch

    has_cuda = torch.cuda.is_available()
    if config.device == "cuda" and not has_cuda:
        raise ConfigError("device: cuda was asked for but torch sees no CUDA device")
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and has_cuda) else "cpu"
    dtype = config.compute_dtype
    if device == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("compute_dtype: this GPU has no bfloat16; use float16")
    if device == "cpu" and dtype == "float16":
        raise ConfigError("compute_dtype: float16 training needs CUDA; use bfloat16 on CPU")
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if device == "cuda" else "adamw_torch"
    elif device == "cpu" and ("paged" in optimizer or "8bit" in optimizer or "bnb" in optimizer):
        raise ConfigError(f"optimizer {optimizer!r} needs CUDA (bitsandbytes' paged and 8-bit "
                          "optimizers); use adamw_torch on CPU, or leave optimizer: auto")
    return Runtime(device, optimizer, bf16=dtype == "bfloat16", fp16=dtype == "float16",
                   dtype=dtype)


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise ModelError(_load_problem(base, exc)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_problem(base: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(base).exists():
        return f"cannot load the base model from {base}: {first}"
    return (f"cannot load the base model {base!r}: it is not a local folder, and the hub "
            f"could not provide it ({first})")


def load_base(config: TrainConfig, runtime: Runtime):
    """The frozen base: NF4 + double quant + prepared for k-bit training, or plain."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": getattr(torch, runtime.dtype)}
    if config.quantize:
        kwargs["quantization_config"] = quantization_config(
            config.quant_type, config.double_quant, config.compute_dtype)
    if runtime.device == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(config.base, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(_load_problem(config.base, exc)) from None
    if config.quantize:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing)
    model.config.use_cache = False
    return model


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    same_names = ("r", "lora_alpha", "lora_dropout", "bias", "target_modules", "use_rslora")
    return LoraConfig(task_type="CAUSAL_LM", **{k: getattr(config, k) for k in same_names})


def check_target_modules(model, config: TrainConfig) -> None:
    """Named target modules must exist in the base (peft's own error is a long traceback)."""
    if config.target_modules == "all-linear":
        return
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in config.target_modules if m not in names]
    if missing:
        import torch

        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)} - {"lm_head"})
        raise ConfigError(f"target_modules: {', '.join(missing)} not in the base model "
                          f"(its linear layers: {', '.join(linear)})")
