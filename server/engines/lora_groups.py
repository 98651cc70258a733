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

from dataclasses import dataclass

import torch

# A group with more tokens than this gets its own GEMM; smaller ones share one batched GEMM.
# Padding waste in the shared one is bounded by this, and so is the cost of a lone small call.
SMALL_GROUP_TOKENS = 16


@dataclass(frozen=True)
class Group:
    """One adapter slot with many tokens: its rows in the step, in token order."""

    slot: int
    rows: torch.Tensor
    rank: int | None


@dataclass(frozen=True)
class SmallGroups:
    """Adapters with few tokens, laid out as ``[len(slots), width]`` padded positions."""

    slots: torch.Tensor  # [G] slot of each group
    source: torch.Tensor  # [G * width] token row for each padded position (pads repeat a row)
    placed: torch.Tensor  # [n] padded positions that hold a real token
    rows: torch.Tensor  # [n] the token row at each of those positions
    width: int
    rank: int | None


@dataclass(frozen=True)
class TokenGroups:
    """A step's tokens by slot; built once per step, read by every LoRA op of that step."""

    num_tokens: int
    big: tuple[Group, ...]
    small: SmallGroups | None

    @property
    def empty(self) -> bool:
        return not self.big and self.small is None

    @property
    def slots(self) -> list[int]:
        small = self.small.slots.tolist() if self.small is not None else []
        return sorted([g.slot for g in self.big] + small)

    @classmethod
    def build(cls, indices: torch.Tensor, ranks: dict[int, int] | None = None,
              small_max: int = SMALL_GROUP_TOKENS) -> TokenGroups:
        """Group ``indices`` (one slot per token, -1 for none). ``ranks``: slot -> the rank of
        the adapter in it, so products skip the zero rows vLLM pads every slot to."""
        indices = indices.reshape(-1)
        rows = torch.nonzero(indices >= 0).view(-1)
        if rows.numel() == 0:
            return cls(int(indices.numel()), (), None)
        rows = rows[torch.argsort(indices[rows], stable=True)]
        slots, counts = torch.unique_consecutive(indices[rows], return_counts=True)
        big: list[Group] = []
        small_slots: list[int] = []
        small_runs: list[torch.Tensor] = []
        start = 0
        for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
            run = rows[start:start + count]
            start += count
            if count > small_max:
                big.append(Group(slot, run, _rank(ranks, [slot])))
            else:
                small_slots.append(slot)
                small_runs.append(run)
        small = None
        if small_runs:
            width = max(len(run) for run in small_runs)
            source = torch.stack([
                torch.cat([run, run[:1].expand(width - len(run))]) for run in small_runs]).view(-1)
            placed = torch.cat([torch.arange(len(run)) + g * width
                                for g, run in enumerate(small_runs)])
            small = SmallGroups(torch.tensor(small_slots), source, placed,
                                torch.cat(small_runs), width, _rank(ranks, small_slots))
        return cls(int(indices.numel()), tuple(big), small)


def _rank(ranks: dict[int, int] | None, slots: list[int]) -> int | None:
    if not ranks or any(s not in ranks for s in slots):
        return None
    return max(ranks[s] for s in slots)


def products(x: torch.Tensor, weights: torch.Tensor, groups: TokenGroups, dtype: torch.dtype,
             rank_dim: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``x[t] @ weights[slot(t)].T`` for every grouped token, as ``(rows, values)`` pieces.

    ``weights`` is vLLM's stacked ``[slots, (1,) out, in]``. ``rank_dim`` names the rank axis of
    a slot's ``[out, in]`` matrix (0 for shrink, 1 for expand) so it can be cut to the rank of
    the adapters present; None keeps it whole.
    """
    w = weights.squeeze(1) if weights.dim() == 4 else weights
    x = x.to(dtype)
    pieces = []
    for group in groups.big:
        pieces.append((group.rows, _mm(x.index_select(0, group.rows), w[group.slot], rank_dim,
                                       group.rank, dtype)))
    small = groups.small
    if small is not None:
        mats = w.index_select(0, small.slots)
        if rank_dim is not None and small.rank is not None:
            mats = mats.narrow(rank_dim + 1, 0, small.rank)
            if rank_dim == 1:
                x = x[:, : small.rank]
        mats = mats.to(dtype)
        inputs = x.index_select(0, small.source).view(len(small.slots), small.width, -1)
        out = torch.bmm(inputs, mats.transpose(1, 2)).view(-1, mats.shape[1])
        out = out.index_select(0, small.placed)
        if rank_dim == 0 and small.rank is not None and small.rank < w.shape[1]:
            out = torch.nn.functional.pad(out, (0, w.shape[1] - small.rank))
        pieces.append((small.rows, out))
    return pieces


def _mm(inputs: torch.Tensor, mat: torch.Tensor, rank_dim: int | None, rank: int | None,
        dtype: torch.dtype) -> torch.Tensor:
    """One slot's product, its ``[out, in]`` matrix cut to ``rank`` along ``rank_dim``."""
    full_out = mat.shape[0]
    if rank_dim is not None and rank is not None:
        mat = mat.narrow(rank_dim, 0, rank)
        if rank_dim == 1:
            inputs = inputs[:, :rank]
    out = inputs @ mat.to(dtype).t()
    if out.shape[1] < full_out:
        out = torch.nn.functional.pad(out, (0, full_out - out.shape[1]))
    return out


def shrink(x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, groups: TokenGroups,
           scale: float) -> None:
    """``out = scale * x @ A[slot].T`` (overwrites; rows of base tokens become 0)."""
    out.zero_()
    for rows, values in products(x, weights, groups, out.dtype, rank_dim=0):
        out.index_copy_(0, rows, values[:, : out.shape[1]].mul_(scale))


def expand(x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, groups: TokenGroups,
           add: bool = True) -> None:
    """``out (+)= x @ B[slot].T`` on every grouped row; other rows untouched when adding."""
    if not add:
        out.zero_()
    common = min(out.shape[1], weights.shape[-2])
    for rows, values in products(x, weights, groups, out.dtype, rank_dim=1):
        out[:, :common].index_add_(0, rows, values[:, :common])
