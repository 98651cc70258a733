"""vLLM's CPU LoRA ops, as loramux's plugin leaves them: a token marked -1 (a base-model request
in a mixed batch) gets no adapter delta, and adapter tokens get exactly what stock vLLM gives."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
punica_cpu = pytest.importorskip("vllm.lora.punica_wrapper.punica_cpu")

from loramux.server.engines import vllm_patches  # noqa: E402

SLOTS, RANK, HIDDEN = 2, 4, 16


def _lora_pass(shrink, expand, expand_slice, indices):
    """shrink then expand (whole and sliced) for 3 tokens, the way PunicaWrapperCPU calls them."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen)
    b = torch.randn(SLOTS, 1, HIDDEN, RANK, generator=gen)
    x = torch.randn(len(indices), HIDDEN, generator=gen)
    buffer = torch.zeros(len(indices), RANK)
    shrink(x, a, buffer, indices, 0.5)
    out = torch.ones(len(indices), HIDDEN)  # the base layer's output the delta is added to
    expand(buffer, b, out, indices, add_inputs=True)
    sliced = torch.ones(len(indices), 2 * HIDDEN)
    expand_slice(buffer, b, sliced, indices, HIDDEN, HIDDEN, add_inputs=True)
    return buffer, out, sliced


def test_base_tokens_get_no_adapter_delta() -> None:
    indices = torch.tensor([-1, 0, 1])
    ops = [vllm_patches.skip_no_lora(getattr(lora_ops, name)) for name in vllm_patches._OPS]
    buffer, out, sliced = _lora_pass(*ops, indices)
    assert torch.count_nonzero(buffer[0]) == 0
    assert torch.equal(out[0], torch.ones(HIDDEN))
    assert torch.equal(sliced[0], torch.ones(2 * HIDDEN))
    # Adapter tokens: bit for bit what the stock ops give.
    stock = _lora_pass(*(getattr(lora_ops, name) for name in vllm_patches._OPS), indices)
    for fixed, original in zip((buffer, out, sliced), stock, strict=True):
        assert torch.equal(fixed[1:], original[1:])
        assert not torch.equal(original[1], original[2])  # the two slots really differ


def test_plugin_patches_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.lora.ops.torch_ops as torch_ops

    for module in (lora_ops, torch_ops, punica_cpu):
        for name in vllm_patches._OPS:
            monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    stock = punica_cpu.bgmv_shrink

    monkeypatch.delenv(vllm_patches.ENV, raising=False)
    vllm_patches.register()
    assert punica_cpu.bgmv_shrink is stock  # a plain `vllm serve` stays stock vLLM

    monkeypatch.setenv(vllm_patches.ENV, "1")
    vllm_patches.register()
    for module in (lora_ops, punica_cpu):
        for name in vllm_patches._OPS:
            assert getattr(getattr(module, name), "__loramux_skip_no_lora__", False), name
    once = punica_cpu.bgmv_shrink
    vllm_patches.register()  # vLLM may load plugins more than once per process
    assert punica_cpu.bgmv_shrink is once
