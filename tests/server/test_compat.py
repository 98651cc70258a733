"""The compatibility check, one row per refusal the README promises, asserting the reason text.

A refusal is only useful with its reason: the user must learn *why* the server will not serve an
adapter (DoRA, trained embeddings, modules_to_save, unsupported modules, added tokens, another
base, too high a rank) without reading the server's code. The end-to-end refusal through the real
server is in test_api_promises.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from loramux.registry.manifest import FileEntry, LoraFacts, Manifest, QuantizationInfo
from loramux.server.compat import ServedBase, check
from loramux.server.errors import IncompatibleAdapter

FINGERPRINT = "sha256:" + "ab" * 32
SERVED = ServedBase(fingerprint=FINGERPRINT, quantization="nf4", max_lora_rank=64)
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def manifest(files: tuple[str, ...] = (), quantization: str | None = "nf4",
             fingerprint: str = FINGERPRINT, **lora: Any) -> Manifest:
    """A manifest for `ad@1` that the served base accepts, unless a keyword says otherwise."""
    facts = {"r": 8, "lora_alpha": 16, "target_modules": ATTENTION} | lora
    paths = ("adapter_config.json", "adapter_model.safetensors", *files)
    return Manifest(
        name="ad", version=1, digest="sha256:" + "cd" * 32, size=100,
        files=[FileEntry(path=p, size=10, sha256=f"{i:064x}") for i, p in enumerate(paths)],
        lora=LoraFacts(**facts), base_fingerprint=fingerprint,
        quantization=QuantizationInfo.parse(quantization) if quantization else None,
        created_at=datetime.now(UTC), created_by="test")


def test_a_plain_adapter_is_accepted_without_warning() -> None:
    assert check(manifest(), SERVED) is None
    # Fused module names (vLLM's own) and a regex target are accepted too.
    assert check(manifest(target_modules=["qkv_proj", "gate_up_proj", "down_proj"]),
                 SERVED) is None
    assert check(manifest(target_modules="all-linear"), SERVED) is None


@pytest.mark.parametrize(("case", "variant", "reason"), [
    ("another base", dict(fingerprint="sha256:" + "00" * 32),
     "was trained for another base model"),
    ("rank above --max-lora-rank", dict(r=128), "has LoRA rank 128, above this server's "
     "--max-lora-rank 64"),
    ("rank_pattern above the cap", dict(rank_pattern={"q_proj": 96}), "has LoRA rank 96"),
    ("DoRA", dict(use_dora=True), "is a DoRA adapter, which vLLM cannot serve"),
    ("trained lm_head", dict(target_modules=[*ATTENTION, "lm_head"]),
     "trains ['lm_head'] (embeddings/lm_head or modules_to_save)"),
    ("trained embeddings", dict(target_modules=["model.embed_tokens", "q_proj"]),
     "trains ['embed_tokens'] (embeddings/lm_head or modules_to_save)"),
    ("modules_to_save", dict(modules_to_save=["score"]),
     "trains ['score'] (embeddings/lm_head or modules_to_save)"),
    ("unsupported modules", dict(target_modules=[*ATTENTION, "mlp.fc_in", "conv1d"]),
     "targets modules the engine does not support: ['conv1d', 'fc_in']"),
    ("added tokens", dict(files=("added_tokens.json",)),
     "adds tokens (['added_tokens.json']); the served tokenizer cannot follow"),
    ("new embeddings for added tokens",
     dict(files=("new_embeddings.safetensors", "tokenizer.json")),
     "adds tokens (['new_embeddings.safetensors', 'tokenizer.json'])"),
])
def test_refusals_name_their_reason(case: str, variant: dict[str, Any], reason: str) -> None:
    with pytest.raises(IncompatibleAdapter) as info:
        check(manifest(**variant), SERVED)
    error = info.value
    assert error.status == 400 and error.code == "incompatible_adapter", case
    assert error.message.startswith("adapter ad@1 "), error.message
    assert reason in error.message, f"{case}: {error.message}"


def test_quantization_mismatch_is_served_with_a_warning() -> None:
    warning = check(manifest(quantization=None), SERVED)
    assert warning == ("adapter ad@1 was trained against none but the base is served as nf4; "
                       "answers may differ slightly from training")
    assert check(manifest(quantization="nf4+dq+bf16"), SERVED) is None


def test_a_base_without_fingerprint_skips_only_that_check() -> None:
    anonymous = ServedBase(fingerprint=None, quantization="nf4", max_lora_rank=64)
    assert check(manifest(fingerprint="sha256:" + "00" * 32), anonymous) is None
    with pytest.raises(IncompatibleAdapter, match="DoRA"):
        check(manifest(use_dora=True), anonymous)
