"""One linear layer's LoRA (shrink, then expand for every slice) in one pass over the batch.

Why: in a decode step every linear layer runs LoRA for each of its slices (q/k/v, gate/up).
Done as vLLM splits it (a shrink into a buffer, then an expand per slice), each product places its
rows in a grid, runs a bmm and gathers them back: some sixty small tensor operations per decoder
layer, and on a CPU each costs tens of microseconds whatever its size, which is most of a
decode step's LoRA time with a handful of adapters. Here the rows are placed in the grid once,
the shrink's result stays in grid layout as the expand's input, the scale is folded into the
laid-out A weights, and slices of one width are expanded in a single bmm (adapter x slice as its
batch). Adapters with many tokens (prefills) keep the per-adapter GEMMs of lora_groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loramux.server.engines.lora_groups import (
    KEEP_LAYOUTS,
    Dense,
    TokenGroups,
    _cut,
    _stacked,
    expand,
    shrink,
)

# Up to this many adapters in the batched product, its weights are laid out and multiplied in
# fp32: on the CPU a small bf16 bmm costs several times an fp32 one of the same shape in fixed
# overhead (39 vs 12 us for [8, 4, 768] x [8, 768, 48]; a one-row expand over 32 adapters,
# [96, 1, 16] x [96, 16, 768], 131 vs 104 us, and over the down projection's 768 outputs 59 vs
# 14 us), and so few adapters' doubled bytes are cheap to read. 32 in fp32 are the bytes of 64 in
# bf16, so the layouts never take more than the bf16 ones of a full 64-sequence batch; past 32,
# bf16 (many adapters' decode is bound by the bytes read). Measured per add_linear call at one
# token per adapter over 32 adapters: 566 us with bf16 layouts, 461 us with fp32.
FP32_MAX_ADAPTERS = 32


def most_layout_bytes(slot_bytes: int, dtype_size: int, adapters: int) -> int:
    """The most the laid-out weights can take: ``KEEP_LAYOUTS`` sets of up to ``adapters``
    dense adapters, each a copy of its slot (``slot_bytes`` in a dtype of ``dtype_size`` bytes),
    in fp32 up to ``FP32_MAX_ADAPTERS``. The server counts it with the slots' memory: for a batch
    of 64 distinct adapters the copies take twice what the 64 slots do."""
    fp32 = min(adapters, FP32_MAX_ADAPTERS) * slot_bytes * 4 // dtype_size
    return KEEP_LAYOUTS * max(fp32, adapters * slot_bytes)


@dataclass(frozen=True)
class _Plan:
    """One layer's weights laid out for one set of dense adapters, and how to expand them."""

    a: torch.Tensor  # [G, slices * rank, in]: each adapter's A, slices stacked, scaled
    rank: int
    fused_b: torch.Tensor | None  # [G * slices, rank, out]: every slice in one bmm, or None
    slice_b: tuple[torch.Tensor, ...]  # else one [G, rank, out_i] per slice
    commons: tuple[int, ...]  # columns of each slice that the layer's output has

    @classmethod
    def make(cls, lora_a: Sequence[torch.Tensor], lora_b: Sequence[torch.Tensor], scale: float,
             output_slices: Sequence[int], dense: Dense, dtype: torch.dtype) -> _Plan:
        a_stacks = [_stacked(w) for w in lora_a]
        b_stacks = [_stacked(w) for w in lora_b]
        count, slices = len(dense.slots), len(a_stacks)
        parts = [_cut(w, 1, dense.rank).index_select(0, dense.slots) for w in a_stacks]
        a = torch.cat(parts, dim=1).to(dtype).mul(scale).contiguous()
        rank = a.shape[1] // slices
        b_mats = [_cut(w, 2, dense.rank).index_select(0, dense.slots).transpose(1, 2).to(dtype)
                  for w in b_stacks]  # [G, rank, out_i] each
        widths = {w.shape[1] for w in b_stacks}
        commons = tuple(min(size, w.shape[1])
                        for size, w in zip(output_slices, b_stacks, strict=True))
        if slices > 1 and len(widths) == 1 and commons == tuple(output_slices):
            fused = torch.stack(b_mats, dim=1).reshape(count * slices, rank, widths.pop())
            return cls(a, rank, fused, (), commons)
        return cls(a, rank, None, tuple(m.contiguous() for m in b_mats), commons)


def add_linear(y: torch.Tensor, x: torch.Tensor, lora_a: Sequence[torch.Tensor],
               lora_b: Sequence[torch.Tensor], scale: float, output_slices: Sequence[int],
               groups: TokenGroups) -> None:
    """``y[:, slice_i] += scale * x @ A_i[slot].T @ B_i[slot].T`` on every adapter token.

    ``y`` is ``[tokens, out]`` with the slices side by side from column 0; rows of base tokens
    (slot -1) are left exactly as they are."""
    if groups.big:
        _add_big(y, x, lora_a, lora_b, scale, output_slices, groups)
    dense = groups.dense
    if dense is None:
        return
    count, width = len(dense.slots), dense.width
    dtype = torch.float32 if count <= FP32_MAX_ADAPTERS else y.dtype
    # One lookup per call for everything laid out (the weights' storage identifies the layer).
    key = ("linear", *(w.data_ptr() for w in lora_a), *(w.data_ptr() for w in lora_b),
           tuple(output_slices), dtype, scale)
    plan = groups.prepared(key, lambda: _Plan.make(lora_a, lora_b, scale, output_slices, dense,
                                                   dtype))
    grid = dense.grid(x, dtype).view(count, width, -1)
    rank, slices = plan.rank, len(plan.commons)
    if width == 1 and dtype != torch.float32:
        # One row per adapter in bf16: A times the row (each adapter's A read row by row, as
        # stored), [G, slices * rank, 1], which is [G * slices, 1, rank] with no copy. In fp32
        # that matrix-vector form is 3-5x slower than the row times A's transpose (130 vs 32 us
        # over 8 adapters' q/k/v), which the general form below is.
        hidden = torch.bmm(plan.a, grid.transpose(1, 2)).view(count, 1, slices * rank)
    else:
        hidden = torch.bmm(grid, plan.a.transpose(1, 2))  # [G, width, slices * rank]
    if plan.fused_b is not None:
        out = plan.fused_b.shape[2]
        per_slice = hidden.view(count, width, slices, rank).transpose(1, 2)
        products = torch.bmm(per_slice.reshape(count * slices, width, rank), plan.fused_b)
        # Back to one row per token, slices side by side, in one gather
        delta = products.view(-1, out).index_select(0, dense.slice_rows(slices))
        _add(y[:, : slices * out], delta.view(-1, slices * out).to(y.dtype), dense.rows)
        return
    offset = 0
    for i, (b, common, size) in enumerate(zip(plan.slice_b, plan.commons, output_slices,
                                              strict=True)):
        products = torch.bmm(hidden[:, :, i * rank:(i + 1) * rank], b)
        delta = products.view(count * width, -1).index_select(0, dense.places)[:, :common]
        _add(y[:, offset: offset + common], delta.to(y.dtype), dense.rows)
        offset += size


def _add(target: torch.Tensor, delta: torch.Tensor, rows: torch.Tensor | None) -> None:
    if rows is None:
        target.add_(delta)
    else:
        target.index_add_(0, rows, delta)


def _add_big(y: torch.Tensor, x: torch.Tensor, lora_a: Sequence[torch.Tensor],
             lora_b: Sequence[torch.Tensor], scale: float, output_slices: Sequence[int],
             groups: TokenGroups) -> None:
    """The adapters with many tokens: a GEMM each, through a rank-wide buffer per slice."""
    big = groups.big_only
    buffers = [torch.empty(x.shape[0], _stacked(w).shape[2], dtype=y.dtype) for w in lora_b]
    shrink(x, lora_a, buffers, big, scale)
    offset = 0
    for buffer, w, size in zip(buffers, lora_b, output_slices, strict=True):
        expand(buffer, w, y[:, offset: offset + size], big, add=True)
        offset += size
