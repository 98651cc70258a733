"""What the server checks in an adapter's folder before the engine sees it.

Two checks, both at load time (once per engine load, never per request): the folder is still what
its manifest says (a cached folder can be damaged on disk after it was written and verified; that
check lives in `adapter_cache.py`, shared with the vLLM resolver plugin), and its weights
are finite numbers. A NaN or infinity in a LoRA weight makes every logit of the rows
that use it NaN; an engine that batches several adapters together (the reference engine samples
a whole batch in one call, where NaN probabilities raise) then fails other tenants' requests, and
vLLM answers garbage for the adapter's own. Refusing such an adapter once, at load, keeps it out
of every batch.
"""

from __future__ import annotations

from pathlib import Path

from loramux.registry.validate import LOADABLE_DTYPES
from loramux.server.adapter_cache import discard, folder_damage

__all__ = ["UnloadableTensor", "discard", "folder_damage", "nonfinite_tensors"]


class UnloadableTensor(ValueError):
    """A tensor of a dtype the server does not load (the registry refuses these at push; an
    older version, or another registry, may still hold one)."""


def nonfinite_tensors(path: Path) -> list[str]:
    """Names of the tensors in the folder's safetensors files that hold a NaN or an infinity.
    Raises UnloadableTensor for a dtype outside `LOADABLE_DTYPES` (read from the header, before
    torch sees it: torch cannot check float8 or float4 tensors for NaN).

    One tensor at a time (memory stays at the largest tensor, not the adapter)."""
    import torch
    from safetensors import safe_open

    bad = []
    for file in sorted(path.rglob("*.safetensors")):
        with safe_open(str(file), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open has no __iter__)
                dtype = tensors.get_slice(name).get_dtype()
                if dtype not in LOADABLE_DTYPES:
                    raise UnloadableTensor(f"tensor {name[:200]!r} of {file.name} has dtype "
                                           f"{dtype}, which this server does not load")
                tensor = tensors.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(name)
    return bad
