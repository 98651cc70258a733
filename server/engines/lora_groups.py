"""Tokens grouped by LoRA slot once per step, and LoRA products computed for the adapters present.

Why: vLLM's CPU LoRA ops copy a whole LoRA matrix per token, and a dense op over every slot
costs as many slots as the engine has. Either way the cost follows the token or slot count, not
the adapters in the batch. Here a step's tokens are grouped by slot once (in the punica wrapper's
metadata), and every op then runs

- one GEMM per adapter with many tokens in the step (a prefill), straight on that slot's weights,
  with no copy, and
- one batched GEMM over the adapters with few tokens (decode): their weights are gathered and laid
  out once per set of such adapters (on the CPU that set lasts many decode steps), and each
  adapter's rows sit in a zero-padded ``[adapters, width]`` grid, so every adapter multiplies
  its own rows only. Tiny per-adapter GEMMs cost more in call overhead than one bmm, and a
  dense GEMM over every adapter present would do as many times the work as there are adapters.

lora_linear.py runs a whole linear layer (shrink, then every slice's expand) over that grid.
Each product is cut to the largest rank among the adapters it covers (vLLM pads every slot to
``max_lora_rank``). Tokens with index -1 (base-model requests) are in no group and get exactly
zero delta. Shapes depend on the data, which is fine: vLLM runs eager on CPU when LoRA is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import torch

# A group with more tokens than this gets its own GEMM; smaller ones share the dense one.
SMALL_GROUP_TOKENS = 16

# Bumped whenever an adapter is written into a slot: prepared weights of older generations are
# stale even if the step's token-to-slot mapping did not change.
_generation = 0


def slots_changed() -> None:
    global _generation
    _generation += 1
    _PREPARED.clear()


@dataclass(frozen=True)
class Group:
    """One adapter with many tokens in the step: ``TokenGroups.big_rows[start:end]``."""

    slot: int
    start: int
    end: int
    rank: int | None  # the adapter's rank (None: unknown, use the padded rank)


@dataclass(frozen=True)
class Dense:
    """The adapters with few tokens, computed together as one batched GEMM.

    Each covered row gets a place in a ``[G, width]`` grid (its adapter's position, then its
    turn among that adapter's rows): rows are scattered into the grid, one ``bmm`` runs every
    adapter on its own rows, and the grid is read back at the same places.
    """

    slots: torch.Tensor  # [G] their slots
    rows: torch.Tensor | None  # [n] the token rows they cover (None: every row, in order)
    member: torch.Tensor  # [n] index into ``slots`` of each covered row
    rank: int | None
    width: int  # the most rows any one of these adapters has
    places: torch.Tensor  # [n] member * width + the row's turn among its adapter's rows
    # When every adapter has exactly ``width`` rows (no holes in the grid, e.g. one token each
    # in decode), the token rows in grid order: the grid is one index_select, no zero fill.
    gather: torch.Tensor | None = None

    @cached_property
    def key(self) -> tuple:
        return (tuple(self.slots.tolist()), self.rank)

    def grid(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``[G * width, features]``: each covered row of ``x`` (all the step's tokens) at its
        place, zeros in the holes; one gather when there are none."""
        if self.gather is not None:
            return x.index_select(0, self.gather).to(dtype)
        inputs = x if self.rows is None else x.index_select(0, self.rows)
        grid = inputs.new_zeros(len(self.slots) * self.width, inputs.shape[1], dtype=dtype)
        grid.index_copy_(0, self.places, inputs.to(dtype))
        return grid

    @cached_property
    def _slice_rows(self) -> dict[int, torch.Tensor]:
        return {}

    def slice_rows(self, slices: int) -> torch.Tensor:
        """For a ``[G, slices, width, out]`` product grid seen as rows, each covered token's
        rows, slice after slice (``[n * slices]``): one index_select gives every token its
        slices side by side, with no transpose copy of the grid first."""
        rows = self._slice_rows.get(slices)
        if rows is None:
            turn = self.places - self.member * self.width
            first = self.member * (slices * self.width) + turn  # the token's row in slice 0
            rows = (first[:, None] + torch.arange(slices) * self.width).reshape(-1)
            self._slice_rows[slices] = rows
        return rows


@dataclass(frozen=True)
class TokenGroups:
    """A step's tokens by slot; built once per mapping, read by every LoRA op of those steps."""

    num_tokens: int
    big: tuple[Group, ...]
    dense: Dense | None
    big_rows: torch.Tensor | None = None  # rows of the big groups, one group after the other
    generation: int = 0

    @property
    def empty(self) -> bool:
        return not self.big and self.dense is None

    @property
    def covers_all(self) -> bool:
        """Every token is an adapter token (no base-model token in the step)."""
        covered = 0 if self.big_rows is None else len(self.big_rows)
        if self.dense is not None:
            covered += self.num_tokens if self.dense.rows is None else len(self.dense.rows)
        return covered == self.num_tokens

    @cached_property
    def big_only(self) -> TokenGroups:
        """The same groups without the dense adapters (their rows are left alone)."""
        return replace(self, dense=None)

    @property
    def slots(self) -> list[int]:
        dense = self.dense.slots.tolist() if self.dense is not None else []
        return sorted([g.slot for g in self.big] + dense)

    @classmethod
    def build(cls, indices: torch.Tensor, ranks: dict[int, int] | None = None,
              small_max: int = SMALL_GROUP_TOKENS) -> TokenGroups:
        """Group ``indices`` (one slot per token, -1 for none). ``ranks``: slot -> the rank of
        the adapter in it, so products skip the zero rows vLLM pads every slot to."""
        indices = indices.reshape(-1)
        n = int(indices.numel())
        rows = torch.nonzero(indices >= 0).view(-1)
        if rows.numel() == 0:
            return cls(n, (), None, None, _generation)
        order = rows[torch.argsort(indices[rows], stable=True)]
        slots, counts = torch.unique_consecutive(indices[order], return_counts=True)
        big: list[Group] = []
        big_runs: list[torch.Tensor] = []
        small: list[int] = []
        start = placed = 0
        for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
            if count > small_max:
                big.append(Group(slot, placed, placed + count, _rank(ranks, [slot])))
                big_runs.append(order[start:start + count])
                placed += count
            else:
                small.append(slot)
            start += count
        dense = None
        if small:
            small_slots = torch.tensor(small, dtype=indices.dtype)
            lookup = torch.full((int(indices.max()) + 1,), -1, dtype=torch.long)
            lookup[small_slots] = torch.arange(len(small))
            member = torch.where(indices >= 0, lookup[indices.clamp(min=0)], -1)
            covered = torch.nonzero(member >= 0).view(-1)
            every = len(covered) == n
            member = member if every else member[covered]
            width, turn = _turns(member, len(small))
            places = member * width + turn
            gather = None
            if width * len(small) == len(member):
                gather = torch.empty_like(places)
                gather[places] = torch.arange(n) if every else covered
            dense = Dense(small_slots, None if every else covered, member,
                          _rank(ranks, small), width, places, gather)
        return cls(n, tuple(big), dense, torch.cat(big_runs) if big_runs else None, _generation)

    def prepared(self, key: tuple, make) -> torch.Tensor:
        """``make()`` once per key for as long as the dense adapters and the slots' contents last.

        Kept per set of dense adapters, not per mapping: when one request leaves the batch and
        another of an adapter already present joins, the mapping changes but the layout does not.
        """
        if self.generation != _generation:
            _PREPARED.clear()
            object.__setattr__(self, "generation", _generation)
        layouts = _PREPARED.get(self.dense.key)
        if layouts is None:
            while len(_PREPARED) >= KEEP_LAYOUTS:
                _PREPARED.pop(next(iter(_PREPARED)))
            layouts = _PREPARED[self.dense.key] = {}
        value = layouts.get(key)
        if value is None:
            value = layouts[key] = make()
        return value


# Weights laid out for the last few sets of dense adapters: set -> op key -> tensor.
KEEP_LAYOUTS = 2
_PREPARED: dict[tuple, dict[tuple, torch.Tensor]] = {}


def _turns(member: torch.Tensor, groups: int) -> tuple[int, torch.Tensor]:
    """Each row's turn among its group's rows, and the most rows in one group."""
    counts = torch.bincount(member, minlength=groups)
    order = torch.argsort(member, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    turn = torch.empty_like(member)
    turn[order] = torch.arange(len(member)) - starts[member[order]]
    return int(counts.max()), turn


def _rank(ranks: dict[int, int] | None, slots: list[int]) -> int | None:
    if not ranks or any(s not in ranks for s in slots):
        return None
    return max(ranks[s] for s in slots)


def _stacked(weights: torch.Tensor) -> torch.Tensor:
    """vLLM's ``[slots, 1, out, in]`` (or ``[slots, out, in]``) as ``[slots, out, in]``."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _cut(w: torch.Tensor, axis: int, rank: int | None) -> torch.Tensor:
    return w if rank is None or rank >= w.shape[axis] else w.narrow(axis, 0, rank)


def shrink(x: torch.Tensor, weights: Sequence[torch.Tensor], outs: Sequence[torch.Tensor],
           groups: TokenGroups, scale: float) -> None:
    """``outs[i] = scale * x @ A_i[slot].T`` for one layer's slices (q/k/v, gate/up) at once.

    The slices share their input, so their weights are concatenated and each product is one GEMM
    for all of them. Overwrites: rows of base tokens, and the padded rank, become 0.
    """
    stacks = [_stacked(w) for w in weights]
    dtype = outs[0].dtype
    for out in outs:
        out.zero_()
    x = x.to(dtype)
    if groups.big:
        inputs = x.index_select(0, groups.big_rows)
        for group in groups.big:
            mats = [_cut(w[group.slot], 0, group.rank) for w in stacks]
            values = inputs[group.start:group.end] @ torch.cat(mats).to(dtype).t()
            rows = groups.big_rows[group.start:group.end]
            _write_slices(values.mul_(scale), outs, mats[0].shape[0], rows)
    dense = groups.dense
    if dense is None:
        return
    key = ("shrink", *(w.data_ptr() for w in stacks), dtype)

    def lay_out() -> torch.Tensor:  # [G, in, slices * rank]: A^T of each adapter, slices abreast
        parts = [_cut(w, 1, dense.rank).index_select(0, dense.slots) for w in stacks]
        return torch.cat(parts, dim=1).to(dtype).transpose(1, 2).contiguous()

    mats = groups.prepared(key, lay_out)
    values = _batched(x, mats, dense)
    rank = values.shape[1] // len(stacks)
    _write_slices(values.mul_(scale), outs, rank, dense.rows)


def _batched(x: torch.Tensor, mats: torch.Tensor, dense: Dense) -> torch.Tensor:
    """Each covered row of ``x`` (all the step's tokens) times its adapter's matrix in ``mats``
    ``[G, in, out]``: one bmm; the products of the covered rows, in their order.

    Rows sit in a zero-padded ``[G, width, in]`` grid, so each adapter multiplies its own rows
    only (a dense GEMM over every adapter present would do G times the work)."""
    groups, _, n_out = mats.shape
    grid = dense.grid(x, x.dtype)
    products = torch.bmm(grid.view(groups, dense.width, -1), mats)
    return products.view(-1, n_out).index_select(0, dense.places)


def _write_slices(values: torch.Tensor, outs: Sequence[torch.Tensor], rank: int,
                  rows: torch.Tensor | None) -> None:
    for i, out in enumerate(outs):
        part = values[:, i * rank:(i + 1) * rank]
        if rows is None:
            out[:, :rank].copy_(part)
        else:
            out[:, :rank].index_copy_(0, rows, part)


def expand(x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, groups: TokenGroups,
           add: bool = True) -> None:
    """``out (+)= x @ B[slot].T`` on every grouped row; other rows untouched when adding.

    The products land in one contiguous buffer, which is added to ``out`` (a column slice of the
    layer's output) in one pass: scattered adds into a strided bf16 view are several times slower.
    """
    if not add:
        out.zero_()
    w = _stacked(weights)
    dtype = out.dtype
    common = min(out.shape[1], w.shape[1])
    target = out[:, :common]
    x = x.to(dtype)
    pieces: list[tuple[torch.Tensor | None, torch.Tensor]] = []
    if groups.big:
        inputs = x.index_select(0, groups.big_rows)
        values = torch.empty(len(inputs), common, dtype=dtype)
        for group in groups.big:
            mat = _cut(w[group.slot], 1, group.rank)[:common]
            torch.mm(inputs[group.start:group.end, : mat.shape[1]], mat.to(dtype).t(),
                     out=values[group.start:group.end])
        pieces.append((groups.big_rows, values))
    dense = groups.dense
    if dense is not None:
        def lay_out() -> torch.Tensor:  # [G, rank, out]: each adapter's B^T
            mats = _cut(w, 2, dense.rank).index_select(0, dense.slots)
            return mats.transpose(1, 2).to(dtype).contiguous()

        mats = groups.prepared(("expand", w.data_ptr(), dtype), lay_out)
        pieces.append((dense.rows, _batched(x[:, :mats.shape[1]], mats, dense)[:, :common]))
    _add_rows(target, pieces, groups)


def _add_rows(target: torch.Tensor, pieces: list[tuple[torch.Tensor | None, torch.Tensor]],
              groups: TokenGroups) -> None:
    if not pieces:
        return
    if len(pieces) == 1 and pieces[0][0] is None:  # decode: every row, in order
        target.add_(pieces[0][1])
        return
    rows = torch.cat([r for r, _ in pieces]) if len(pieces) > 1 else pieces[0][0]
    values = torch.cat([v for _, v in pieces]) if len(pieces) > 1 else pieces[0][1]
    if groups.covers_all:
        delta = torch.empty_like(values)
        delta.index_copy_(0, rows, values)
        target.add_(delta)
    else:
        target.index_copy_(0, rows, target.index_select(0, rows).add_(values))
