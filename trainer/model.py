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
                        compute_dtype: str = "bfloat16", quant_storage: str | None = None):
    """QLoRA's storage format: 4-bit NormalFloat, double quantization, bf16 compute.

    ``quant_storage``: the dtype the packed 4-bit weights are stored in (bitsandbytes' default
    uint8). FSDP shards only floating-point tensors of one dtype per wrapped unit, so under FSDP
    it must be the compute dtype (``Runtime.quant_storage``), and the model loads in it too.
    """
    import torch
    from transformers import BitsAndBytesConfig

    extra = {"bnb_4bit_quant_storage": getattr(torch, quant_storage)} if quant_storage else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, compute_dtype), **extra)


@dataclass
class Runtime:
    """Where and how training runs, decided once from the config and the machine."""

    device: str  # cpu | cuda
    optimizer: str
    bf16: bool
    fp16: bool
    dtype: str  # the dtype the base is loaded in (non-quantized weights)
    processes: int = 1  # data-parallel ranks (accelerate launch), 1 without
    fsdp: bool = False  # launched with an FSDP accelerate config
    quant_storage: str | None = None  # bnb_4bit_quant_storage; the compute dtype under FSDP

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "optimizer": self.optimizer, "bf16": self.bf16,
                "fp16": self.fp16, "dtype": self.dtype, "processes": self.processes,
                "fsdp": self.fsdp, "quant_storage": self.quant_storage}


def runtime_for(config: TrainConfig, *, fsdp: bool | None = None, processes: int | None = None,
                ) -> Runtime:
    """Device, optimizer and dtypes; ``fsdp``/``processes`` default to what accelerate launched."""
    import torch

    from loramux.trainer import distributed

    fsdp = distributed.fsdp_requested() if fsdp is None else fsdp
    processes = distributed.env_world_size() if processes is None else processes
    has_cuda = torch.cuda.is_available()
    if config.device == "cuda" and not has_cuda:
        raise ConfigError("device: cuda was asked for but torch sees no CUDA device")
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and has_cuda) else "cpu"
    dtype = config.compute_dtype
    if dtype == "auto":
        from loramux.hardware import fast_dtype

        dtype = fast_dtype(device)
    if device == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("compute_dtype: this GPU has no bfloat16; use float16")
    if device == "cpu" and dtype == "float16":
        raise ConfigError("compute_dtype: float16 training needs CUDA; use bfloat16 on CPU")
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = auto_optimizer(device, fsdp)
    elif device == "cpu" and ("paged" in optimizer or "8bit" in optimizer or "bnb" in optimizer):
        raise ConfigError(f"optimizer {optimizer!r} needs CUDA (bitsandbytes' paged and 8-bit "
                          "optimizers); use adamw_torch on CPU, or leave optimizer: auto")
    if fsdp and device != "cuda":
        raise ConfigError("FSDP (an accelerate config with distributed_type: FSDP) needs CUDA; "
                          "on CPU use --num-processes N (DDP)")
    return Runtime(device, optimizer, bf16=dtype == "bfloat16", fp16=dtype == "float16",
                   dtype=dtype, processes=processes, fsdp=fsdp,
                   quant_storage=quant_storage_for(config, fsdp, dtype))


def auto_optimizer(device: str, fsdp: bool) -> str:
    """Paged 8-bit AdamW on CUDA, except under FSDP, where it fails to save a checkpoint
    (PEFT's FSDP + QLoRA caveats); torch's AdamW elsewhere."""
    return "paged_adamw_8bit" if device == "cuda" and not fsdp else "adamw_torch"


def quant_storage_for(config: TrainConfig, fsdp: bool, dtype: str | None = None) -> str | None:
    """bnb_4bit_quant_storage: the compute dtype under FSDP (which shards only float tensors
    of one dtype: the packed 4-bit weights then look like the rest), else bitsandbytes' uint8.
    ``dtype``: the resolved compute dtype (FSDP runs on GPUs: bf16 for ``auto``)."""
    dtype = dtype or (config.compute_dtype if config.compute_dtype != "auto" else "bfloat16")
    return dtype if fsdp and config.quantize else None


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
            config.quant_type, config.double_quant, runtime.dtype, runtime.quant_storage)
    if runtime.device == "cuda" and not runtime.fsdp:  # FSDP places (and shards) the weights
        from loramux.trainer.distributed import local_rank

        kwargs["device_map"] = {"": local_rank()}  # each DDP rank its own GPU
    try:
        model = AutoModelForCausalLM.from_pretrained(config.base, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(_load_problem(config.base, exc)) from None
    if config.quantize and not runtime.fsdp:
        # Under FSDP every weight must keep the storage dtype: no fp32 upcast of the rest, as
        # prepare_model_for_kbit_training does (PEFT's FSDP-QLoRA recipe skips it too).
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
