"""The model card (README.md) an exported adapter carries: the Hub's metadata YAML that makes it
a PEFT adapter of its base (``base_model``, ``library_name: peft``, ``base_model_relation:
adapter``), then loramux's facts — digest, lineage, eval verdict — so the Hub page says where
the weights came from and ``registry import`` of the repo can be traced back."""

from __future__ import annotations

import json
from typing import Any

import yaml

from loramux.registry.evaluations import EvaluationEntry
from loramux.registry.manifest import Manifest


def card_metadata(manifest: Manifest, base_model: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "library_name": "peft",
        "tags": ["lora", "peft", "loramux"],
        "loramux": {"name": manifest.name, "version": manifest.version,
                    "digest": manifest.digest, "base_fingerprint": manifest.base_fingerprint},
    }
    if base_model:
        meta["base_model"] = base_model
        meta["base_model_relation"] = "adapter"
    return meta


def model_card(manifest: Manifest, base_model: str | None,
               evaluations: list[EvaluationEntry]) -> str:
    """README.md text: YAML front matter, then a short human summary."""
    meta = card_metadata(manifest, base_model)
    lineage = manifest.lineage.model_dump(mode="json") if manifest.lineage else None
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
        f"# {manifest.name} (loramux {manifest.ref})", "",
        f"A LoRA adapter (rank {manifest.lora.r}) for `{base_model or 'its base model'}`, "
        "exported from a loramux registry.", "",
        f"- loramux digest: `{manifest.digest}`",
        f"- base fingerprint: `{manifest.base_fingerprint or 'not recorded'}`",
        f"- quantization trained against: `{_quantization(manifest)}`",
    ]
    if manifest.description:
        lines.append(f"- description: {manifest.description}")
    for entry in evaluations[:3]:
        ev = entry.evaluation
        verdict = "passed" if ev.passed else "failed"
        lines.append(f"- eval gate ({entry.at:%Y-%m-%d}, {entry.role}): {verdict}, "
                     f"{ev.scorer} {ev.candidate.score:.3f} on {ev.candidate.n} examples "
                     f"(threshold {ev.threshold})")
    lines += ["", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM", "",
              f"base = AutoModelForCausalLM.from_pretrained({base_model or 'BASE'!r})",
              "model = PeftModel.from_pretrained(base, 'THIS_REPO')", "```", ""]
    if lineage:
        lines += ["## Lineage", "", "```json", json.dumps(lineage, indent=2, sort_keys=True),
                  "```", ""]
    return "\n".join(lines)


def _quantization(manifest: Manifest) -> str:
    q = manifest.quantization
    if q is None:
        return "not recorded"
    return "+".join([q.method] + (["dq"] if q.double_quant else [])
                    + ([q.compute_dtype] if q.compute_dtype else []))
