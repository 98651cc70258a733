"""Tokens grouped by LoRA slot once per step, and LoRA products computed per group.

Why: vLLM's CPU LoRA ops copy a whole LoRA matrix per token, and a dense op over every slot
costs as many slots as the engine has. Either way the cost follows the token or slot count, not
the adapters present. Here a step's tokens are grouped by slot once (in the punica wrapper's
metadata), and every op then runs

- one GEMM per adapter with many tokens in the step (a prefill), straight on that slot's weights,
  with no copy, and
- one batched GEMM over all adapters with few tokens (decode), on their weights gathered once per
  op and their tokens padded to the largest such group,

so the work follows the distinct adapters in the batch and their tokens. Tokens with index -1
(base-model requests) are in no group and get exactly zero delta. Shapes depend on the data,
which is fine: vLLM runs eager on CPU when LoRA is on (its CPU platform turns compilation off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# A group with more tokens than this gets its own GEMM; smaller ones share one batched GEMM.
# Padding waste in the shared one is bounded by this, and so is the cost of a lone small call.
SMALL_GROUP_TOKENS = 16


@dataclass(frozen=True)
class Batch:
    """Tokens whose products run as one batched GEMM: ``groups`` slots x ``width`` rows each.

    A large group is a batch of its own on a view of its slot's weights (no copy); the small
    groups share one batch on their weights gathered once per op, each padded to ``width`` rows.
    """

    rows: torch.Tensor  # token rows the batch produces, in result order
    source: torch.Tensor  # [groups * width] token row per padded position (pads repeat one)
    placed: torch.Tensor | None  # padded positions that hold ``rows`` (None: every position)
    slots: torch.Tensor | None  # slots to gather (None: the single slot ``slot``, as a view)
    slot: int
    groups: int
    width: int
    rank: int | None  # largest adapter rank in the batch (None: unknown, use the padded rank)


@dataclass(frozen=True)
class TokenGroups:
    """A step's tokens by slot; built once per step, read by every LoRA op of that step."""

    num_tokens: int
    batches: tuple[Batch, ...]

    @property
    def empty(self) -> bool:
        return not self.batches

    @property
    def slots(self) -> list[int]:
        return sorted(s for b in self.batches
                      for s in (b.slots.tolist() if b.slots is not None else [b.slot]))

    @classmethod
    def build(cls, indices: torch.Tensor, ranks: dict[int, int] | None = None,
              small_max: int = SMALL_GROUP_TOKENS) -> TokenGroups:
        """Group ``indices`` (one slot per token, -1 for none). ``ranks``: slot -> the rank of
        the adapter in it, so products skip the zero rows vLLM pads every slot to."""
        indices = indices.reshape(-1)
        rows = torch.nonzero(indices >= 0).view(-1)
        if rows.numel() == 0:
            return cls(int(indices.numel()), ())
        rows = rows[torch.argsort(indices[rows], stable=True)]
        slots, counts = torch.unique_consecutive(indices[rows], return_counts=True)
        batches: list[Batch] = []
        small_slots: list[int] = []
        small_runs: list[torch.Tensor] = []
        start = 0
        for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
            run = rows[start:start + count]
            start += count
            if count > small_max:
                batches.append(Batch(run, run, None, None, slot, 1, count, _rank(ranks, [slot])))
            else:
                small_slots.append(slot)
                small_runs.append(run)
        if small_runs:
            width = max(len(run) for run in small_runs)
            source = torch.stack([
                torch.cat([run, run[:1].expand(width - len(run))]) for run in small_runs]).view(-1)
            placed = torch.cat([torch.arange(len(run)) + g * width
                                for g, run in enumerate(small_runs)])
            batches.append(Batch(torch.cat(small_runs), source, placed, torch.tensor(small_slots),
                                 -1, len(small_runs), width, _rank(ranks, small_slots)))
        return cls(int(indices.numel()), tuple(batches))


def _rank(ranks: dict[int, int] | None, slots: list[int]) -> int | None:
    if not ranks or any(s not in ranks for s in slots):
        return None
    return max(ranks[s] for s in slots)


def _stacked(weights: torch.Tensor) -> torch.Tensor:
    """vLLM's ``[slots, 1, out, in]`` (or ``[slots, out, in]``) as ``[slots, out, in]``."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _mats(w: torch.Tensor, batch: Batch, rank_axis: int) -> torch.Tensor:
    """The batch's ``[groups, out, in]`` weights, cut to its rank before any copy."""
    if batch.rank is not None and batch.rank < w.shape[rank_axis]:
        w = w.narrow(rank_axis, 0, batch.rank)
    return w.narrow(0, batch.slot, 1) if batch.slots is None else w.index_select(0, batch.slots)


def _run(x: torch.Tensor, mats: torch.Tensor, batch: Batch) -> torch.Tensor:
    inputs = x.index_select(0, batch.source).view(batch.groups, batch.width, -1)
    out = torch.bmm(inputs, mats.to(x.dtype).transpose(1, 2)).view(-1, mats.shape[1])
    return out if batch.placed is None else out.index_select(0, batch.placed)


def shrink(x: torch.Tensor, weights: Sequence[torch.Tensor], outs: Sequence[torch.Tensor],
           groups: TokenGroups, scale: float) -> None:
    """``outs[i] = scale * x @ A_i[slot].T`` for one layer's slices (q/k/v, gate/up) at once.

    The slices share their input, so their weights are concatenated per batch and each batch
    is one GEMM for all of them. Overwrites: rows of base tokens, and the padded rank, become 0.
    """
    stacks = [_stacked(w) for w in weights]
    for out in outs:
        out.zero_()
    x = x.to(outs[0].dtype)
    for batch in groups.batches:
        parts = [_mats(w, batch, 1) for w in stacks]
        rank = parts[0].shape[1]
        values = _run(x, parts[0] if len(parts) == 1 else torch.cat(parts, dim=1), batch)
        values.mul_(scale)
        for i, out in enumerate(outs):
            out[:, :rank].index_copy_(0, batch.rows, values[:, i * rank:(i + 1) * rank])


def expand(x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, groups: TokenGroups,
           add: bool = True) -> None:
    """``out (+)= x @ B[slot].T`` on every grouped row; other rows untouched when adding."""
    if not add:
        out.zero_()
    w = _stacked(weights)
    common = min(out.shape[1], w.shape[1])
    x = x.to(out.dtype)
    for batch in groups.batches:
        mats = _mats(w, batch, 2)
        values = _run(x[:, : mats.shape[2]], mats, batch)
        out[:, :common].index_add_(0, batch.rows, values[:, :common])
