"""What the server checks in an adapter's folder before the engine sees it.

Two checks, both at load time (once per engine load, never per request): the folder is still what
its manifest says (a cached folder can be damaged on disk after it was written and verified), and
its weights are finite numbers. A NaN or infinity in a LoRA weight makes every logit of the rows
that use it NaN; an engine that batches several adapters together (the reference engine samples
a whole batch in one call, where NaN probabilities raise) then fails other tenants' requests, and
vLLM answers garbage for the adapter's own. Refusing such an adapter once, at load, keeps it out
of every batch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loramux.registry.digests import sha256_file
from loramux.registry.manifest import Manifest


def folder_damage(path: Path, manifest: Manifest) -> str | None:
    """What differs between a cached folder and its manifest (None: nothing)."""
    listed = {entry.path for entry in manifest.files}
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()}
    if present != listed:
        return f"files {sorted(present ^ listed)} differ from the manifest's"
    for entry in manifest.files:
        sha, size = sha256_file(path / entry.path)
        if (sha, size) != (entry.sha256, entry.size):
            return f"{entry.path} hashes to sha256:{sha[:12]}…, not {entry.digest[:19]}…"
    return None


def discard(path: Path) -> None:
    """Move a folder out of the cache's sight at once (a rename), then delete it. A reader that
    already opened its files keeps them; the name is one `AdapterCache.sweep` reclaims."""
    trash = path.with_name(f".{path.name}.partial-damaged-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def nonfinite_tensors(path: Path) -> list[str]:
    """Names of the tensors in the folder's safetensors files that hold a NaN or an infinity.

    One tensor at a time (memory stays at the largest tensor, not the adapter)."""
    import torch
    from safetensors import safe_open

    bad = []
    for file in sorted(path.rglob("*.safetensors")):
        with safe_open(str(file), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensor = tensors.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(name)
    return bad
