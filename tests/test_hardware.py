"""The one dtype decision (loramux.hardware) and the parts that follow it."""

from __future__ import annotations

import torch

from loramux.hardware import cpu_has_fast_bf16, describe, fast_dtype


def test_cpu_dtype_follows_the_instructions_torch_sees() -> None:
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if native:
        assert cpu_has_fast_bf16() and fast_dtype("cpu") == "bfloat16"
    elif not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert not cpu_has_fast_bf16() and fast_dtype("cpu") == "float32"
        assert "no bf16 instructions" in describe("cpu")


def test_trainer_and_server_resolve_auto_the_same_way(tmp_path) -> None:
    from loramux.server.settings import ServerSettings
    from loramux.trainer.config import build_config
    from loramux.trainer.model import runtime_for

    config = build_config(None, {"base": "b", "data": "d.jsonl", "out": str(tmp_path / "o"),
                                 "device": "cpu"})
    assert config.compute_dtype == "auto"
    assert runtime_for(config).dtype == fast_dtype("cpu")
    settings = ServerSettings(base="b")
    assert settings.dtype == "auto" and settings.compute_dtype() == fast_dtype("cpu")
    assert settings.vllm_options(tmp_path).dtype == fast_dtype("cpu")
    assert ServerSettings(base="b", dtype="float32").compute_dtype() == "float32"


def test_nf4_packs_two_values_a_byte_whatever_the_model_dtype() -> None:
    """vllm-bnb-plugin sized a float32 model's NF4 buffers for 4 values a byte (a load crash)."""
    from vllm_bnb_plugin.quantization import linear

    from loramux.server.engines.bnb_fp32 import register

    register()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert linear.calculate_quant_ratio(dtype) == 2
