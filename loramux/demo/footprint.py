"""How many bytes a model holds once loaded in 4-bit NF4 (bitsandbytes, double quantization)."""

from __future__ import annotations

from pathlib import Path


def nf4_resident_bytes(model_dir: Path) -> int:
    """Parameter and buffer bytes of the model loaded the way QLoRA and the server load it."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config,
                                                 dtype=torch.bfloat16)
    return int(model.get_memory_footprint())
