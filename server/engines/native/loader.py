"""The native LoRA op, loaded once per process and checked before it serves; or why not.

Why a check: the library is built on this machine by `make install` but may be loaded by a newer
checkout or on another CPU, and a wrong LoRA delta gives fluent wrong answers, not an error. So
before the op serves, it runs one small mixed batch (base tokens, a prefill chunk, decode rows,
a cut rank, two slices, bf16 and fp32) against a float64 reference; anything off and the
Python ops serve instead. ``resolve`` is the one place that turns the ``lora_ops`` setting into
an op: ``python`` never loads it, ``auto`` falls back with one log line, ``native`` refuses to
start without it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loramux.server.engines.native import build
from loramux.server.errors import SettingsError

log = logging.getLogger(__name__)

MODES = ("auto", "native", "python")
# Rows of one adapter per work item: a prefill is cut into chunks this long, and the chunks of
# every adapter in the step are one parallel loop (a decode row is a chunk of one).
CHUNK = 32
_DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class NativeOp:
    """``torch.ops.loramux.lora_linear`` and the instruction set it picked on this CPU."""

    isa: str

    def add_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a: Sequence[torch.Tensor],
                   lora_b: Sequence[torch.Tensor], indices: torch.Tensor, ranks: torch.Tensor,
                   scale: float, output_slices: Sequence[int], chunk: int = CHUNK) -> None:
        """``y[:, slice_i] += scale * x @ A_i[slot].T @ B_i[slot].T`` on every token whose slot
        (``indices``, int64) is not -1, each product cut to ``ranks[slot]``."""
        torch.ops.loramux.lora_linear(y, x, list(lora_a), list(lora_b), indices, ranks,
                                      float(scale), list(output_slices), chunk)

    @staticmethod
    def takes(y: torch.Tensor, x: torch.Tensor, lora_a: Sequence[torch.Tensor],
              indices: torch.Tensor) -> bool:
        """Whether the op accepts these tensors (else the Python ops run this layer): fp32 or
        bf16, x and y in one dtype, rows with unit column stride, a slot for every row."""
        return (x.dtype == y.dtype and x.dtype in _DTYPES and lora_a[0].dtype in _DTYPES
                and x.stride(-1) == 1 and y.stride(-1) == 1 and x.device.type == "cpu"
                and x.shape[0] == y.shape[0] == indices.shape[0])


@functools.cache
def load() -> NativeOp | str:
    """The op, or one line saying why it cannot serve (not built, does not load, wrong)."""
    try:
        path = build.library_path()
    except OSError as exc:  # the sources are not beside this module (an odd install)
        return f"its sources are missing ({exc})"
    if not path.is_file():
        return "not built (`make install` builds it)"
    if not hasattr(torch.ops.loramux, "lora_linear"):
        try:
            torch.ops.load_library(str(path))
        except OSError as exc:
            return f"{path.name} does not load ({exc})"
    op = NativeOp(torch.ops.loramux.lora_isa())
    error = self_check(op)
    if error:
        return f"self-check failed on {op.isa}: {error}"
    return op


def resolve(mode: str) -> NativeOp | None:
    """The op to serve with under ``lora_ops`` = ``mode``; None: the Python ops.

    ``auto`` logs one warning line when the op cannot serve; ``native`` raises SettingsError."""
    if mode not in MODES:
        raise SettingsError(f"--lora-ops must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "python":
        return None
    found = load()
    if isinstance(found, NativeOp):
        return found
    if mode == "native":
        raise SettingsError(f"--lora-ops native: the native LoRA op {found}")
    log.warning("loramux: native LoRA op unavailable (%s); running the Python LoRA ops", found)
    return None


def reference(x: torch.Tensor, lora_a: Sequence[torch.Tensor], lora_b: Sequence[torch.Tensor],
              indices: torch.Tensor, ranks: torch.Tensor, scale: float,
              output_slices: Sequence[int]) -> torch.Tensor:
    """The float64 delta, token by token: what every implementation must give."""
    out = torch.zeros(len(indices), sum(output_slices), dtype=torch.float64)
    for t, slot in enumerate(indices.tolist()):
        if slot < 0:
            continue
        offset = 0
        for a, b, size in zip(lora_a, lora_b, output_slices, strict=True):
            a2, b2 = a.reshape(a.shape[0], -1, a.shape[-1]), b.reshape(b.shape[0], -1, b.shape[-1])
            rank = min(int(ranks[slot]), a2.shape[1])
            h = scale * (a2[slot, :rank].double() @ x[t].double())
            common = min(size, b2.shape[1])
            out[t, offset:offset + common] = b2[slot, :common, :rank].double() @ h
            offset += size
    return out


def self_check(op: NativeOp) -> str | None:
    """None when the op matches the float64 reference on one small mixed batch."""
    gen = torch.Generator().manual_seed(0)
    slots, rank, hidden, sizes = 3, 8, 40, (24, 16)
    indices = torch.tensor([-1, 2, 0] + [1] * (CHUNK + 3) + [2, -1])
    ranks = torch.tensor([8, 3, 5])
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        a = [torch.randn(slots, 1, rank, hidden, generator=gen).to(dtype) for _ in sizes]
        b = [torch.randn(slots, 1, size, rank, generator=gen).to(dtype) for size in sizes]
        x = torch.randn(len(indices), hidden, generator=gen).to(dtype)
        y = torch.zeros(len(indices), sum(sizes), dtype=dtype)
        op.add_linear(y, x, a, b, indices, ranks, 0.5, sizes)
        expected = reference(x, a, b, indices, ranks, 0.5, sizes)
        error = float(((y.double() - expected).abs() / (expected.abs() + 1)).max())
        if not error <= tol:  # NaN fails too
            return f"{dtype} relative error {error:.3g}"
    return None
