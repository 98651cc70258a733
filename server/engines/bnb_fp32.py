"""A vLLM general plugin that lets vllm-bnb-plugin's NF4 weights load in a float32 model.

Why: on a CPU without bf16 instructions (AVX2 only) bf16 matmuls run ~60x slower than fp32
(loramux.hardware), so ``loramux serve --dtype auto`` serves in float32 there. vllm-bnb-plugin
sizes a 4-bit weight's packed uint8 buffer as ``numel // (bits of the model dtype / 8)``: right
for 16-bit dtypes (two 4-bit values a byte), but a quarter of the weight for float32, so loading
fails on a shape assertion. Two values a byte is the packing whatever the dtype; this makes the
plugin say so. For bf16/fp16 models nothing changes (the ratio was already 2), so it is applied
in every vLLM process, stock ``vllm serve`` included: there it only turns a crash into a load.
"""

from __future__ import annotations

NF4_VALUES_PER_BYTE = 2


def register() -> None:
    """Entry point for ``vllm.general_plugins``."""
    try:
        from vllm_bnb_plugin.quantization import fused_moe, linear
    except ImportError:  # plugin absent (or another layout): nothing to fix
        return

    def quant_ratio(dtype) -> int:
        return NF4_VALUES_PER_BYTE

    for module in (linear, fused_moe):
        if hasattr(module, "calculate_quant_ratio"):
            module.calculate_quant_ratio = quant_ratio
