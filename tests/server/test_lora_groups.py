"""Grouped LoRA products (one GEMM per adapter present) against a per-token reference.

Fast and engine-free: the grouping is built the way the punica wrapper builds it once per step,
with tokens of many adapters, few and many tokens per adapter, base tokens (-1), and adapters of
different ranks padded to one stacked rank as vLLM pads them."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from loramux.server.engines import lora_groups, lora_linear  # noqa: E402
from loramux.server.engines.lora_groups import TokenGroups  # noqa: E402

SLOTS, MAX_RANK, HIDDEN, OUT = 6, 16, 32, 40
RANKS = {0: 8, 1: 16, 2: 4, 3: 16, 4: 8, 5: 16}


def _weights(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    a = torch.zeros(SLOTS, 1, MAX_RANK, HIDDEN)
    b = torch.zeros(SLOTS, 1, OUT, MAX_RANK)
    for slot, rank in RANKS.items():  # vLLM zero-pads each slot up to max_lora_rank
        a[slot, 0, :rank] = torch.randn(rank, HIDDEN, generator=gen)
        b[slot, 0, :, :rank] = torch.randn(OUT, rank, generator=gen)
    return a.to(dtype), b.to(dtype)


def _reference(x, a, b, indices, scale):
    out = torch.zeros(len(indices), OUT, dtype=torch.float64)
    for t, slot in enumerate(indices.tolist()):
        if slot >= 0:
            h = scale * (x[t].double() @ a[slot, 0].double().t())
            out[t] = h @ b[slot, 0].double().t()
    return out


def _indices(spec: list[tuple[int, int]]) -> torch.Tensor:
    """(slot, count) runs, shuffled the way a scheduler interleaves requests."""
    flat = torch.tensor([slot for slot, count in spec for _ in range(count)])
    return flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(1))]


CASES = {
    "decode, every slot, base tokens": [(-1, 3), (0, 1), (1, 2), (2, 1), (3, 1), (4, 2), (5, 1)],
    "prefill and decode mixed": [(1, 40), (0, 2), (-1, 20), (3, 1), (5, 33)],
    "one adapter": [(4, 7)],
    # every adapter the same number of rows: the grid has no holes (one gather fills it)
    "decode, one token each, base tokens": [(-1, 2), (0, 1), (2, 1), (5, 1)],
    "decode, two tokens each": [(1, 2), (3, 2), (4, 2)],
    "base only": [(-1, 5)],
}


@pytest.mark.parametrize("ranked", [True, False], ids=["rank-cut", "padded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_grouped_products_match_per_token_reference(case, dtype, ranked) -> None:
    indices = _indices(CASES[case])
    a, b = _weights(dtype)
    x = torch.randn(len(indices), HIDDEN, generator=torch.Generator().manual_seed(2)).to(dtype)
    groups = TokenGroups.build(indices, RANKS if ranked else None, small_max=16)
    buffer = torch.full((len(indices), MAX_RANK), 9.0, dtype=dtype)  # stale values: overwritten
    lora_groups.shrink(x, [a], [buffer], groups, 0.5)
    out = torch.ones(len(indices), OUT, dtype=dtype)  # the base layer's output
    lora_groups.expand(buffer, b, out, groups, add=True)
    expected = _reference(x, a, b, indices, 0.5) + 1
    tol = {"rtol": 3e-2, "atol": 3e-1} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(out.double(), expected, **tol)
    base = indices < 0
    assert torch.equal(out[base], torch.ones_like(out[base]))  # exactly no delta
    assert torch.count_nonzero(buffer[base]) == 0


def test_groups_split_big_and_small_and_skip_base_tokens() -> None:
    indices = _indices([(1, 40), (0, 2), (-1, 20), (3, 1), (5, 17)])
    groups = TokenGroups.build(indices, RANKS, small_max=16)
    assert [g.slot for g in groups.big] == [1, 5]
    assert groups.dense is not None and groups.dense.slots.tolist() == [0, 3]
    assert groups.dense.rank == 16
    assert groups.slots == [0, 1, 3, 5]
    covered = torch.cat([groups.big_rows, groups.dense.rows])
    assert sorted(covered.tolist()) == torch.nonzero(indices >= 0).view(-1).tolist()
    assert TokenGroups.build(torch.full((4,), -1)).empty
    decode = TokenGroups.build(torch.tensor([3, 0, 3, 5]), RANKS)
    assert decode.dense.rows is None and decode.dense.member.tolist() == [1, 0, 1, 2]
    assert decode.dense.gather is None  # slots 0 and 5 have one row, 3 has two: holes
    even = TokenGroups.build(torch.tensor([5, -1, 0, 3]), RANKS).dense
    assert even.width == 1 and even.gather.tolist() == [2, 3, 0]  # token rows by slot


def test_prepared_weights_follow_the_slots_contents() -> None:
    """Weights laid out for a batch are reused across its steps, and rebuilt once any slot's
    contents change, even when the token-to-slot mapping stays the same."""
    indices = torch.tensor([0, 1, 1, 2])
    a, _ = _weights(torch.float32)
    groups = TokenGroups.build(indices, RANKS)
    x = torch.randn(4, HIDDEN)
    first = torch.empty(4, MAX_RANK)
    lora_groups.shrink(x, [a], [first], groups, 1.0)
    a[1] *= 2  # vLLM writes another adapter into slot 1
    stale = torch.empty(4, MAX_RANK)
    lora_groups.shrink(x, [a], [stale], groups, 1.0)
    assert torch.equal(stale, first)  # same generation: the prepared copy is used
    lora_groups.slots_changed()
    fresh = torch.empty(4, MAX_RANK)
    lora_groups.shrink(x, [a], [fresh], groups, 1.0)
    torch.testing.assert_close(fresh[1:3], 2 * first[1:3])
    torch.testing.assert_close(fresh[[0, 3]], first[[0, 3]])


def test_expand_overwrite_zeroes_base_rows() -> None:
    indices = torch.tensor([2, -1, 2])
    _, b = _weights(torch.float32)
    groups = TokenGroups.build(indices, RANKS)
    h = torch.randn(3, MAX_RANK)
    out = torch.full((3, OUT), 7.0)
    lora_groups.expand(h, b, out, groups, add=False)
    assert torch.count_nonzero(out[1]) == 0
    torch.testing.assert_close(out[0], h[0, :4] @ b[2, 0, :, :4].t())


def test_fused_slices_match_one_slice_at_a_time() -> None:
    """q/k/v (or gate/up) shrinks in one GEMM give what each slice gives alone."""
    indices = _indices([(0, 3), (1, 20), (-1, 2), (4, 1)])
    gen = torch.Generator().manual_seed(3)
    slices = [_weights(torch.float32)[0] * (i + 1) for i in range(3)]
    x = torch.randn(len(indices), HIDDEN, generator=gen)
    groups = TokenGroups.build(indices, RANKS)
    fused = [torch.empty(len(indices), MAX_RANK) for _ in slices]
    lora_groups.shrink(x, slices, fused, groups, 2.0)
    for a, out in zip(slices, fused, strict=True):
        alone = torch.empty(len(indices), MAX_RANK)
        lora_groups.shrink(x, [a], [alone], groups, 2.0)
        torch.testing.assert_close(out, alone)


@pytest.mark.parametrize("fp32_max", [0, 16], ids=["model-dtype layouts", "fp32 layouts"])
@pytest.mark.parametrize("outs", [(OUT, OUT, OUT), (OUT, 24, 24), (OUT,)],
                         ids=["equal slices", "unequal slices", "one slice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_one_pass_linear_matches_per_token_reference(case, dtype, outs, fp32_max,
                                                     monkeypatch) -> None:
    """add_linear (shrink and every slice's expand in one pass) against the per-token
    reference, slice by slice; base rows keep exactly what the base layer wrote. Both layouts:
    fp32 for a few adapters, the model's dtype past ``FP32_MAX_ADAPTERS``."""
    monkeypatch.setattr(lora_linear, "FP32_MAX_ADAPTERS", fp32_max)
    lora_groups.slots_changed()  # start from no laid-out weights
    indices = _indices(CASES[case])
    gen = torch.Generator().manual_seed(4)
    a_stacks, b_stacks = [], []
    for i, size in enumerate(outs):
        a, b = _weights(torch.float32)
        a_stacks.append((a * (i + 1)).to(dtype))
        b_stacks.append(b[:, :, :size].contiguous().to(dtype))
    x = torch.randn(len(indices), HIDDEN, generator=gen).to(dtype)
    groups = TokenGroups.build(indices, RANKS, small_max=16)
    y = torch.ones(len(indices), sum(outs) + 5, dtype=dtype)  # the base layer's output, padded
    lora_linear.add_linear(y, x, a_stacks, b_stacks, 0.5, list(outs), groups)
    tol = {"rtol": 3e-2, "atol": 3e-1} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}
    offset = 0
    for a, b, size in zip(a_stacks, b_stacks, outs, strict=True):
        expected = torch.zeros(len(indices), size, dtype=torch.float64)
        for t, slot in enumerate(indices.tolist()):
            if slot >= 0:
                h = 0.5 * (x[t].double() @ a[slot, 0].double().t())
                expected[t] = h @ b[slot, 0].double().t()
        torch.testing.assert_close(y[:, offset:offset + size].double(), expected + 1, **tol)
        offset += size
    base = indices < 0
    assert torch.equal(y[base], torch.ones_like(y[base]))  # exactly no delta
    assert torch.equal(y[:, sum(outs):], torch.ones_like(y[:, sum(outs):]))


@pytest.mark.parametrize("fp32_max", [0, 16], ids=["model-dtype layouts", "fp32 layouts"])
def test_laid_out_weights_stay_within_what_the_server_counts(fp32_max, monkeypatch) -> None:
    """The server refuses slot counts whose memory does not fit, counting the laid-out copies
    with ``most_layout_bytes``: the copies the one-pass linear really keeps (for the last
    ``KEEP_LAYOUTS`` sets of adapters, and more sets than that) stay within that bound."""
    monkeypatch.setattr(lora_linear, "FP32_MAX_ADAPTERS", fp32_max)
    lora_groups.slots_changed()
    a, b = _weights(torch.bfloat16)
    slot_bytes = 3 * (a[0].numel() + b[0].numel()) * a.element_size()  # q/k/v at MAX_RANK
    for spec in ([(0, 1), (1, 1), (2, 1)], [(3, 1), (4, 1), (5, 1)], [(1, 2), (3, 2), (5, 2)]):
        indices = _indices(spec)
        groups = TokenGroups.build(indices, RANKS, small_max=16)
        y = torch.zeros(len(indices), 3 * OUT, dtype=torch.bfloat16)
        x = torch.randn(len(indices), HIDDEN).bfloat16()
        lora_linear.add_linear(y, x, [a, a * 2, a * 3], [b, b, b], 0.5, [OUT] * 3, groups)
    held = sum(t.numel() * t.element_size() for layouts in lora_groups._PREPARED.values()
               for plan in layouts.values()
               for t in (plan.a, plan.fused_b, *plan.slice_b) if t is not None)
    assert len(lora_groups._PREPARED) == lora_groups.KEEP_LAYOUTS
    assert 0 < held <= lora_linear.most_layout_bytes(slot_bytes, 2, 3)
    # fp32 copies of a few adapters, the model's dtype past FP32_MAX_ADAPTERS
    assert lora_linear.most_layout_bytes(10, 2, 8) == 2 * 8 * 10 * (2 if fp32_max else 1)
    assert lora_linear.most_layout_bytes(10, 2, 64) == 2 * max(fp32_max * 20, 640)
