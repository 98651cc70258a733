"""Can this engine serve this adapter on this base? Decided from the manifest alone.

Refusing early, with the reason, beats a vLLM load error deep in the engine (or, worse, an
adapter that loads and silently answers badly because it was trained for another base).
:func:`check_base` is also the vLLM resolver plugin's check (``vllm_resolver.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from loramux.registry.fingerprint import compare
from loramux.registry.manifest import Manifest
from loramux.server.errors import IncompatibleAdapter

# Linear layers vLLM's LoRA kernels cover in Llama-family models.
SUPPORTED_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj",
     "gate_up_proj"})
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head", "wte", "word_embeddings"})
ADDED_TOKEN_FILES = frozenset(
    {"added_tokens.json", "new_embeddings.safetensors", "tokenizer.json", "tokenizer_config.json"})


@dataclass(frozen=True)
class ServedBase:
    fingerprint: str | None
    quantization: str  # "nf4" for bitsandbytes, else the vLLM method name or "none"
    max_lora_rank: int


def served_quantization(method: str | None) -> str:
    return "nf4" if method == "bitsandbytes" else (method or "none")


def _module_names(target: list[str] | str) -> set[str]:
    if isinstance(target, str):
        # A regex or "all-linear": vLLM resolves it against the model itself.
        return set()
    return {t.rsplit(".", 1)[-1] for t in target}


def check_base(manifest: Manifest, fingerprint: str, components: dict[str, str] | None = None,
               *, asked: str | None = None, base_name: str | None = None) -> None:
    """Refuse, with the reason, an adapter trained for another base than the served one (whose
    ``fingerprint`` and, when known, ``components`` are given), or for an unknown one. ``asked``
    is the model string the client sent and ``base_name`` the served base's name, for the
    message."""
    adapter = f"adapter `{asked}` ({manifest.ref})" if asked else f"adapter {manifest.ref}"
    if manifest.base_fingerprint is None:
        raise IncompatibleAdapter(
            f"{adapter} records no base fingerprint, so it cannot be checked against the served "
            "base: re-push it with --base", param="model")
    if manifest.base_fingerprint == fingerprint:
        return
    differ = compare(manifest.base_components, components) if components else []
    served = f"`{base_name}` is {fingerprint[:19]}…" if base_name else f"{fingerprint[:19]}…"
    raise IncompatibleAdapter(
        f"{adapter} was trained for another base model (fingerprint "
        f"{manifest.base_fingerprint[:19]}…, served base {served}"
        f"{'; differs in ' + ', '.join(differ) if differ else ''})", param="model")


def check(manifest: Manifest, base: ServedBase) -> str | None:
    """Raise IncompatibleAdapter with the reason, or return a warning (quantization mismatch)."""
    ref = manifest.ref
    if base.fingerprint:
        check_base(manifest, base.fingerprint)
    lora = manifest.lora
    if lora.max_rank > base.max_lora_rank:
        raise IncompatibleAdapter(
            f"adapter {ref} has LoRA rank {lora.max_rank}, above this server's "
            f"--max-lora-rank {base.max_lora_rank}", param="model")
    if lora.use_dora:
        raise IncompatibleAdapter(f"adapter {ref} is a DoRA adapter, which vLLM cannot serve")
    trained = set(lora.modules_to_save or []) | (_module_names(lora.target_modules) &
                                                 EMBEDDING_MODULES)
    if trained & EMBEDDING_MODULES or lora.modules_to_save:
        raise IncompatibleAdapter(
            f"adapter {ref} trains {sorted(trained)} (embeddings/lm_head or modules_to_save), "
            "which the engine cannot serve as a LoRA", param="model")
    unsupported = _module_names(lora.target_modules) - SUPPORTED_MODULES
    if unsupported:
        raise IncompatibleAdapter(
            f"adapter {ref} targets modules the engine does not support: {sorted(unsupported)}",
            param="model")
    added = {f.path for f in manifest.files} & ADDED_TOKEN_FILES
    if added:
        raise IncompatibleAdapter(
            f"adapter {ref} adds tokens ({sorted(added)}); the served tokenizer cannot follow",
            param="model")
    trained_q = manifest.quantization.method if manifest.quantization else "none"
    if trained_q != base.quantization:
        return (f"adapter {ref} was trained against {trained_q} but the base is served as "
                f"{base.quantization}; answers may differ slightly from training")
    return None
