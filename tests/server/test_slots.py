"""LoRA slots on CPU: a slot for every resident adapter by default, its memory logged, and a
count that cannot fit refused with the numbers (before vLLM allocates anything)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

try:  # vLLM is installed with the project (.[cpu] or .[gpu]): missing is a failure, not a skip
    import vllm  # noqa: F401
except ImportError as exc:
    pytest.fail(f"vLLM cannot be imported ({exc}): the vLLM engine's slot sizing is untested; "
                "install the project with its engine (make install: .[cpu])", pytrace=False)

from loramux.server.engines.vllm_engine import (
    VllmOptions,
    check_slot_memory,
    slot_bytes,
    slot_count,
)
from loramux.server.errors import SettingsError


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 768, "intermediate_size": 2048, "num_attention_heads": 12,
        "num_key_value_heads": 4, "num_hidden_layers": 12}))
    return tmp_path


def test_every_resident_adapter_gets_a_slot_on_cpu_unless_set() -> None:
    assert slot_count(VllmOptions(model="m", max_cpu_loras=64)) == 64
    assert slot_count(VllmOptions(model="m", max_cpu_loras=64, max_loras=8)) == 8


def test_slot_bytes_counts_every_linear_layer_at_the_padded_rank(model_dir: Path) -> None:
    # q/k/v A: 3 x 768, B: 768 + 2 x 256; o: 768 + 768; gate/up: 2 x 768 + 2 x 2048;
    # down: 2048 + 768 -> 13,568 values per rank per layer.
    assert slot_bytes(model_dir, 16, "bfloat16") == 16 * 13_568 * 12 * 2
    assert slot_bytes(model_dir, 64, "float32") == 64 * 13_568 * 12 * 4
    assert slot_bytes(model_dir.parent / "missing", 16, "bfloat16") is None


def test_slots_that_do_not_fit_are_refused_with_the_numbers(model_dir: Path,
                                                            caplog) -> None:
    options = VllmOptions(model=str(model_dir), max_lora_rank=64, kv_cache_gib=1)
    with caplog.at_level(logging.INFO):
        check_slot_memory(options, 64)  # 1.2 GiB: fits on any machine that runs the tests
    # On CPU vLLM's copy of each loaded adapter and the LoRA ops' laid-out copies count too:
    # 64 loaded (1.24 GiB) and 2 sets of 64 adapters, or of 32 in fp32 (2.48 GiB).
    assert ("LoRA slots: 64 x 19.9 MiB (rank 64, bfloat16) = 1.24 GiB; with up to 1.24 GiB of "
            "loaded adapters and 2.48 GiB of laid-out copies for a batch's adapters, 4.97 GiB"
            in caplog.text)
    with pytest.raises(SettingsError) as err:
        check_slot_memory(options, 100_000)
    message = str(err.value)
    assert "100000 LoRA slots x 19.9 MiB (rank 64, bfloat16)" in message
    assert "of laid-out copies" in message
    assert "--max-loras" in message
