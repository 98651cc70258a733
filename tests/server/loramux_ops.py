"""loramux's CPU LoRA ops installed in this test's process, for the fp32 oracles that run a vLLM
engine in-process (test_reference_engine, test_oracle_mixed_batch, test_slot_reuse_oracle).

The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so a test can see which ops
it ran, and vLLM loads plugins once per process (an earlier test's engine may have loaded ours
switched off): the ops are installed here as the plugin would install them, and monkeypatch
puts vLLM's own back when the test ends.
"""

from __future__ import annotations

import pytest


def keep_vllm_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the engine in this process with the plugin on, and have monkeypatch restore every
    binding `vllm_patches.apply` replaces."""
    import vllm.lora.ops.torch_ops as torch_ops
    import vllm.lora.ops.torch_ops.lora_ops as lora_ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu
    from vllm.lora.model_manager import LoRAModelManager

    from loramux.server.engines import vllm_patches

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv(vllm_patches.ENV, "1")
    wrapper = punica_cpu.PunicaWrapperCPU
    for name in vllm_patches.GROUPED:
        monkeypatch.setattr(wrapper, name, getattr(wrapper, name))
    for name in ("loramux_tokens", "loramux_sampler", "loramux_indices", "loramux_ranks"):
        if hasattr(wrapper, name):
            monkeypatch.setattr(wrapper, name, getattr(wrapper, name))
    monkeypatch.setattr(LoRAModelManager, "activate_adapter", LoRAModelManager.activate_adapter)
    monkeypatch.setattr(vllm_patches, "_native", vllm_patches._native)
    for module in (lora_ops, torch_ops, punica_cpu):
        for name in vllm_patches.OPS:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))


def install_loramux_ops(monkeypatch: pytest.MonkeyPatch, mode: str = "auto") -> str:
    """loramux's ops in this process under ``lora_ops`` = ``mode``; returns which serve the
    linear layers: ``native`` or ``python``. Fails if they are not the ones vLLM will call."""
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    from loramux.server.engines import vllm_patches

    keep_vllm_ops(monkeypatch)
    vllm_patches.apply(mode)
    assert punica_cpu.PunicaWrapperCPU.add_lora_linear is \
        vllm_patches.GroupedPunica.add_lora_linear
    return "python" if vllm_patches._native is None else "native"
