"""loramux's CPU LoRA ops for vLLM: a token marked -1 (a base-model request in a mixed batch)
gets no adapter delta, and adapter tokens get what vLLM's own ops compute."""

from __future__ import annotations

import pytest
import torch

try:  # the modules loramux's plugin patches: gone after a vLLM upgrade is a failure, not a skip
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu
except ImportError as exc:
    pytest.fail(f"vLLM's CPU LoRA ops cannot be imported ({exc}): loramux's plugin "
                "(server/engines/vllm_patches.py) patches vllm.lora.ops.torch_ops.lora_ops and "
                "vllm.lora.punica_wrapper.punica_cpu, so it breaks at run time with this vLLM; "
                "follow the move there", pytrace=False)

from loramux.server.engines import vllm_patches

SLOTS, RANK, HIDDEN, OUT = 3, 4, 16, 24
STOCK = {name: getattr(lora_ops, name) for name in vllm_patches.OPS}


def _lora_pass(ops: dict, indices, dtype: torch.dtype, stacked_dim: int):
    """shrink then expand (whole and sliced), the way PunicaWrapperCPU calls them."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen).to(torch.bfloat16)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=gen).to(torch.bfloat16)
    if stacked_dim == 3:
        a, b = a.squeeze(1), b.squeeze(1)
    x = torch.randn(len(indices), HIDDEN, generator=gen).to(torch.bfloat16)
    buffer = torch.zeros(len(indices), RANK)  # vLLM keeps the shrink buffer in float32
    ops["bgmv_shrink"](x, a, buffer, indices, 0.5)
    out = torch.ones(len(indices), OUT, dtype=dtype)  # the base layer's output
    ops["bgmv_expand"](buffer, b, out, indices, add_inputs=True)
    sliced = torch.ones(len(indices), 2 * OUT, dtype=dtype)
    ops["bgmv_expand_slice"](buffer, b, sliced, indices, OUT, OUT, add_inputs=True)
    replaced = torch.full((len(indices), OUT), 7.0, dtype=dtype)
    ops["bgmv_expand"](buffer, b, replaced, indices, add_inputs=False)
    return buffer, out, sliced, replaced


@pytest.mark.parametrize("stacked_dim", [3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_as_vllm_for_adapter_tokens_and_nothing_for_base_tokens(dtype, stacked_dim) -> None:
    indices = torch.tensor([-1, 0, 2, 1, -1, 2])
    buffer, out, sliced, replaced = _lora_pass(vllm_patches.OPS, indices, dtype, stacked_dim)
    stock = _lora_pass(STOCK, indices, dtype, stacked_dim)
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    lora = indices >= 0
    for mine, theirs in zip((buffer, out, sliced, replaced), stock, strict=True):
        torch.testing.assert_close(mine[lora], theirs[lora], **tol)
    # Base-model tokens: no delta at all (stock vLLM adds the last slot's adapter here).
    assert torch.count_nonzero(buffer[~lora]) == 0
    assert torch.equal(out[~lora], torch.ones_like(out[~lora]))
    assert torch.equal(sliced[~lora], torch.ones_like(sliced[~lora]))
    assert torch.count_nonzero(replaced[~lora]) == 0
    assert not torch.allclose(out[1], out[2])  # the slots really differ


def test_stock_vllm_still_gives_base_tokens_the_last_slot() -> None:
    """Why the replacement exists; once vLLM fixes its ops, this says so instead of failing.
    The session server's two slots rely on it being the last slot (tests/server/conftest.py)."""
    assert all(op.__module__.startswith("vllm.") for op in STOCK.values()), \
        "STOCK holds loramux's ops, not vLLM's: it was read after the plugin replaced them"
    indices = torch.tensor([-1, 0, 2, 1, -1, 2])
    _, out, _, _ = _lora_pass(STOCK, indices, torch.float32, 4)
    base = indices < 0
    if torch.equal(out[base], torch.ones_like(out[base])):
        pytest.skip("stock vLLM no longer adds an adapter to base-model tokens (PR #48421 "
                    "landed?): the -1 half of loramux's CPU ops is redundant, the speed half stays")
    # The same tokens marked as the last slot's: stock vLLM computes exactly that for -1.
    _, last, _, _ = _lora_pass(STOCK, torch.where(base, SLOTS - 1, indices), torch.float32, 4)
    assert torch.equal(out, last)
    assert not torch.equal(last[base], torch.ones_like(last[base]))  # the last slot adds a delta


def test_prefill_ops_route_through_the_replacements(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's sgmv_* (prefill) ops reach the bgmv_* ones through lora_ops's globals."""
    _keep_stock(monkeypatch)
    vllm_patches.apply()
    seq_lens, seq_indices = torch.tensor([2, 3]), torch.tensor([-1, 1])
    token_indices = torch.repeat_interleave(seq_indices, seq_lens)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen)
    x = torch.randn(5, HIDDEN, generator=gen)
    prefill, direct = torch.zeros(5, RANK), torch.zeros(5, RANK)
    lora_ops.sgmv_shrink(x, a, prefill, torch.tensor([0, 2]), seq_lens, seq_indices, 2, 3, 5, 1.0)
    vllm_patches.bgmv_shrink(x, a, direct, token_indices, 1.0)
    assert torch.equal(prefill, direct)
    assert torch.count_nonzero(prefill[:2]) == 0


def _keep_stock(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.lora.ops.torch_ops as torch_ops

    for module in (lora_ops, torch_ops, punica_cpu):
        for name in vllm_patches.OPS:
            monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test


def test_plugin_acts_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    _keep_stock(monkeypatch)
    monkeypatch.delenv(vllm_patches.ENV, raising=False)
    vllm_patches.register()
    assert punica_cpu.bgmv_shrink is STOCK["bgmv_shrink"]  # a plain `vllm serve` stays stock

    monkeypatch.setenv(vllm_patches.ENV, "1")
    vllm_patches.register()
    vllm_patches.register()  # vLLM may load plugins more than once per process
    for module in (lora_ops, punica_cpu):
        for name, op in vllm_patches.OPS.items():
            assert getattr(module, name) is op, name
