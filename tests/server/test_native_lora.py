"""The native LoRA op (one C++ call per linear layer) against the float64 per-token reference,
and against the torch ops it replaces; and how the server falls back when it cannot serve.

Every mix a step can hold: base tokens (slot -1, exactly no delta), decode rows, prefill rows cut
into several chunks, ranks cut below the padded rank (and ranks that are not a multiple of 8),
bf16 and fp32 weights and activations, one to three slices of equal and unequal widths, and a B
with fewer rows than its slice. Skipped where the op is not built (`make install` builds it)."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")

from loramux.server.engines import lora_groups, lora_linear  # noqa: E402
from loramux.server.engines.lora_groups import TokenGroups  # noqa: E402
from loramux.server.engines.native import build, loader  # noqa: E402
from loramux.server.errors import SettingsError  # noqa: E402

SLOTS, HIDDEN = 6, 48
RANKS = {0: 8, 1: 16, 2: 4, 3: 16, 4: 8, 5: 13}  # 4 and 13: not a multiple of 8

CASES = {
    "decode, every slot, base tokens": [(-1, 3), (0, 1), (1, 2), (2, 1), (3, 1), (4, 2), (5, 1)],
    "prefill and decode mixed": [(1, 40), (0, 2), (-1, 20), (3, 1), (5, 33)],
    "one adapter": [(4, 7)],
    "one prefill of many chunks": [(2, 70), (-1, 1)],
    "base only": [(-1, 5)],
}
SLICES = {"q/k/v": (40, 24, 24), "gate/up": (40, 40), "one slice": (40,)}


@pytest.fixture(scope="module")
def op() -> loader.NativeOp:
    found = loader.load()
    if isinstance(found, str):
        pytest.skip(f"native LoRA op: {found}")
    return found


def _indices(spec: list[tuple[int, int]]) -> torch.Tensor:
    """(slot, count) runs, shuffled the way a scheduler interleaves requests."""
    flat = torch.tensor([slot for slot, count in spec for _ in range(count)])
    return flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(1))]


def _stacks(sizes: tuple[int, ...], dtype: torch.dtype, padded: int = 16,
            b_rows: int | None = None, ranks: dict[int, int] = RANKS):
    """vLLM's stacked slots, each zero-padded from its adapter's rank to ``padded``."""
    gen = torch.Generator().manual_seed(0)
    a_stacks, b_stacks = [], []
    for size in sizes:
        a = torch.zeros(SLOTS, 1, padded, HIDDEN)
        b = torch.zeros(SLOTS, 1, b_rows or size, padded)
        for slot, rank in ranks.items():
            rank = min(rank, padded)
            a[slot, 0, :rank] = torch.randn(rank, HIDDEN, generator=gen)
            b[slot, 0, :, :rank] = torch.randn(b.shape[2], rank, generator=gen)
        a_stacks.append(a.to(dtype))
        b_stacks.append(b.to(dtype))
    return a_stacks, b_stacks


def _ranks(known: bool, ranks: dict[int, int] = RANKS) -> torch.Tensor:
    """Per slot: the adapter's rank, or one past any rank (unknown: the padded rank is used)."""
    return torch.tensor([ranks[s] if known else 1 << 30 for s in range(SLOTS)])


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 3e-2, "atol": 3e-1} if dtype == torch.bfloat16 else {"rtol": 1e-4,
                                                                           "atol": 1e-4}


@pytest.mark.parametrize("chunk", [4, loader.CHUNK])
@pytest.mark.parametrize("known", [True, False], ids=["rank-cut", "padded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sizes", list(SLICES.values()), ids=list(SLICES))
@pytest.mark.parametrize("case", list(CASES))
def test_native_op_matches_per_token_reference(op, case, sizes, dtype, known, chunk) -> None:
    indices = _indices(CASES[case])
    a, b = _stacks(sizes, dtype)
    x = torch.randn(len(indices), HIDDEN, generator=torch.Generator().manual_seed(2)).to(dtype)
    y = torch.ones(len(indices), sum(sizes) + 5, dtype=dtype)  # the base output, padded
    ranks = _ranks(known)
    op.add_linear(y, x, a, b, indices, ranks, 0.5, sizes, chunk=chunk)
    expected = loader.reference(x, a, b, indices, ranks, 0.5, sizes) + 1
    torch.testing.assert_close(y[:, :sum(sizes)].double(), expected, **_tolerance(dtype))
    base = indices < 0
    assert torch.equal(y[base], torch.ones_like(y[base]))  # exactly no delta
    assert torch.equal(y[:, sum(sizes):], torch.ones_like(y[:, sum(sizes):]))


@pytest.mark.parametrize(("weights", "activations"), [(torch.bfloat16, torch.float32),
                                                      (torch.float32, torch.bfloat16)])
def test_weights_and_activations_in_different_dtypes(op, weights, activations) -> None:
    indices = _indices(CASES["prefill and decode mixed"])
    a, b = _stacks(SLICES["q/k/v"], weights)
    x = torch.randn(len(indices), HIDDEN, generator=torch.Generator().manual_seed(3))
    x = x.to(activations)
    y = torch.zeros(len(indices), 88, dtype=activations)
    op.add_linear(y, x, a, b, indices, _ranks(True), 2.0, SLICES["q/k/v"])
    expected = loader.reference(x, a, b, indices, _ranks(True), 2.0, SLICES["q/k/v"])
    torch.testing.assert_close(y.double(), expected, **_tolerance(torch.bfloat16))


@pytest.mark.parametrize(("padded", "b_rows"), [(4, None), (64, None), (128, None), (16, 30)],
                         ids=["padded rank 4", "rank 64", "rank 128", "B shorter than slice"])
def test_rank_and_width_edges(op, padded, b_rows) -> None:
    """Ranks under 8 (no vector path), up to 64 (h in registers) and past it, and a B with
    fewer rows than its slice (only those columns change)."""
    ranks = {s: min(r * padded // 8, padded) for s, r in RANKS.items()}  # scaled to the padding
    indices = _indices(CASES["prefill and decode mixed"])
    a, b = _stacks((40,), torch.float32, padded=padded, b_rows=b_rows, ranks=ranks)
    x = torch.randn(len(indices), HIDDEN, generator=torch.Generator().manual_seed(4))
    y = torch.zeros(len(indices), 40)
    op.add_linear(y, x, a, b, indices, _ranks(True, ranks), 0.25, (40,))
    expected = loader.reference(x, a, b, indices, _ranks(True, ranks), 0.25, (40,))
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
    if b_rows:
        assert torch.count_nonzero(y[:, b_rows:]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_native_op_and_torch_ops_agree(op, case, dtype) -> None:
    """The same layer through the native op and through lora_linear.add_linear (the fallback)."""
    lora_groups.slots_changed()
    indices = _indices(CASES[case])
    a, b = _stacks(SLICES["q/k/v"], dtype)
    x = torch.randn(len(indices), HIDDEN, generator=torch.Generator().manual_seed(5)).to(dtype)
    native = torch.zeros(len(indices), 88, dtype=dtype)
    python = native.clone()
    op.add_linear(native, x, a, b, indices, _ranks(True), 0.5, SLICES["q/k/v"])
    groups = TokenGroups.build(indices, RANKS)
    lora_linear.add_linear(python, x, a, b, 0.5, list(SLICES["q/k/v"]), groups)
    torch.testing.assert_close(native, python, **_tolerance(dtype))


def test_the_op_checks_its_inputs(op) -> None:
    a, b = _stacks((40,), torch.float32)
    x, y = torch.randn(3, HIDDEN), torch.zeros(3, 40)
    with pytest.raises(RuntimeError, match="out of"):
        op.add_linear(y, x, a, b, torch.tensor([0, SLOTS, -1]), _ranks(True), 1.0, (40,))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        op.add_linear(y.half(), x.half(), a, b, torch.tensor([0, 1, -1]), _ranks(True), 1.0,
                      (40,))
    assert not op.takes(y, x, a, torch.tensor([0, 1]))  # a row without a slot: torch ops
    assert not op.takes(y.t(), x, a, torch.tensor([0, 1, 2]))  # strided columns: torch ops
    assert op.takes(y, x, a, torch.tensor([0, 1, 2]))


@pytest.fixture
def missing_library(tmp_path, monkeypatch):
    """The op as on a machine where the build failed: its library is not there."""
    monkeypatch.setattr(build, "library_path", lambda: tmp_path / "loramux_lora_missing.so")
    loader.load.cache_clear()
    yield
    loader.load.cache_clear()


def test_auto_falls_back_with_one_log_line(missing_library, caplog) -> None:
    with caplog.at_level(logging.INFO):
        assert loader.resolve("auto") is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "native LoRA op unavailable (not built" in lines[0]
    assert "running the Python LoRA ops" in lines[0]


def test_native_refuses_to_start_without_the_op(missing_library) -> None:
    with pytest.raises(SettingsError, match="--lora-ops native: the native LoRA op not built"):
        loader.resolve("native")


def test_python_never_loads_the_op(monkeypatch, caplog) -> None:
    def fail() -> str:
        raise AssertionError("lora_ops=python must not load the native op")

    monkeypatch.setattr(loader, "load", fail)
    with caplog.at_level(logging.INFO):
        assert loader.resolve("python") is None
    assert not caplog.records
    with pytest.raises(SettingsError):
        loader.resolve("fast")


def test_the_setting_reaches_the_engine_options(tmp_path) -> None:
    from loramux.server.settings import ServerSettings

    settings = ServerSettings.from_sources({"base": "m"}, {"LORAMUX_LORA_OPS": "python"})
    assert settings.lora_ops == "python"
    assert settings.vllm_options(tmp_path).lora_ops == "python"
    assert ServerSettings.from_sources({"base": "m", "lora_ops": "native"}, {}).lora_ops == \
        "native"
    with pytest.raises(SettingsError, match="--lora-ops"):
        ServerSettings.from_sources({"base": "m", "lora_ops": "fast"}, {})
