"""Which floating-point type this machine computes fastest in, decided once for every part.

bf16 halves memory traffic, and on CPUs with bf16 instructions (AVX-512 BF16, AMX) or a GPU with
bf16 it is the fast type. A CPU without them (AVX2 only: AMD Zen 3 and older, many Intel client
parts) converts every bf16 matmul through slow paths: ~20x slower than fp32 here (a 4096x256 by
256x704 product, 2 threads: 1.2 s in bf16, 61 ms in fp32). The trainer's ``compute_dtype: auto``
and the server's ``--dtype auto`` both ask this module, so they cannot disagree.
"""

from __future__ import annotations

import functools


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when torch's CPU kernels run bf16 natively (AVX-512 BF16 or AMX tiles)."""
    import torch

    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(cpu, name, lambda: False)() for name in checks):
        return True
    # Arm (and other) CPUs: oneDNN's own answer
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fast_dtype(device: str) -> str:
    """``bfloat16`` where it is the fast type on ``device`` ("cpu" or "cuda"), else ``float32``
    (a GPU without bf16 gets ``float16``: its fast type, and what QLoRA used before bf16)."""
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def resolve_dtype(dtype: str) -> str:
    """``dtype``, with ``auto`` made this machine's fast type (on its GPU if it has one)."""
    if dtype != "auto":
        return dtype
    import torch

    return fast_dtype("cuda" if torch.cuda.is_available() else "cpu")


def describe(device: str) -> str:
    """One line for logs: the dtype chosen and why."""
    dtype = fast_dtype(device)
    if device == "cuda" or dtype == "bfloat16":
        return f"{dtype} ({device})"
    return "float32 (this CPU has no bf16 instructions: bf16 would run ~20x slower)"
