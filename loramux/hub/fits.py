"""Does an adapter fit a base? Each LoRA pair's shapes against the base weight it adapts.

A fingerprint says *which* base an adapter was pushed for; an adapter fetched from elsewhere
names its base by a Hub id, which says nothing about the base a user serves. So before an
import publishes, every ``…<module>.lora_A/B.weight`` is checked against ``<module>.weight`` in
the base's safetensors headers (only headers are read): ``B.rows == W.rows`` and
``A.cols == W.cols``, and the module must exist. Works for any architecture whose adapter keys
follow PEFT's ``base_model.model.<module>`` naming.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from loramux.registry.errors import ConfigMismatch, InvalidBaseModel

WEIGHTS = "adapter_model.safetensors"
_LORA_RE = re.compile(
    r"^base_model\.model\.(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[^.]+)?\.weight$")


def _shapes(path: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as handle:
        return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 (not a dict)


def base_shapes(base: Path) -> dict[str, list[int]]:
    """Every tensor's shape in the base folder's safetensors files (headers only)."""
    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise InvalidBaseModel(f"{base} holds no *.safetensors weights to check the adapter "
                               "against")
    shapes: dict[str, list[int]] = {}
    for file in files:
        shapes.update(_shapes(file))
    return shapes


def check_fits(adapter: Path, base: Path) -> None:
    """Refuse (``ConfigMismatch``, one line) an adapter whose LoRA shapes do not fit ``base``."""
    weights = _shapes(adapter / WEIGHTS)
    shapes = base_shapes(base)
    tied = _tied(base)
    for key, shape in sorted(weights.items()):
        match = _LORA_RE.match(key)
        if match is None or len(shape) != 2:
            continue
        module = match["module"]
        target = shapes.get(f"{module}.weight")
        if target is None and tied and module.endswith("lm_head"):
            target = shapes.get(module.replace("lm_head", "model.embed_tokens") + ".weight")
        if target is None:
            raise ConfigMismatch(f"the adapter adapts {module}, which the base {base} does not "
                                 "have (trained for another architecture?)")
        rows, cols = target[0], target[-1]
        if match["side"] == "A" and shape[1] != cols:
            raise ConfigMismatch(f"{module}: the adapter expects inputs of {shape[1]}, the base's "
                                 f"layer takes {cols} (trained for another base)")
        if match["side"] == "B" and shape[0] != rows:
            raise ConfigMismatch(f"{module}: the adapter writes {shape[0]} outputs, the base's "
                                 f"layer has {rows} (trained for another base)")


def _tied(base: Path) -> bool:
    try:
        return bool(json.loads((base / "config.json").read_text()).get("tie_word_embeddings"))
    except (OSError, ValueError):
        return False
