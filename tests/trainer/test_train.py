"""A few training steps on the demo base: NF4 QLoRA, plain LoRA, interrupt + resume + publish,
packing with early stopping. Each run is a handful of steps; the quality checks live in
test_exact_match.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import TrainerCallback

from loramux.hardware import fast_dtype
from loramux.trainer.api import TrainResult, train
from loramux.trainer.config import build_config
from loramux.trainer.data import file_digest
from loramux.trainer.errors import ConfigError, DataError, TrainingInterrupted

pytestmark = pytest.mark.slow

FEW = {"batch_size": 8, "learning_rate": 2e-3, "logging_steps": 1, "progress": False,
       "max_seq_length": 128, "lora_dropout": 0.0, "threads": 2}
ALL_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


class _LayerProbe(TrainerCallback):
    """Looks at the model the trainer is training, after its first step: for every linear
    layer of the base, its class and how its frozen weight is stored."""

    def __init__(self) -> None:
        self.layers: dict[str, dict[str, object]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != 1:
            return
        import bitsandbytes as bnb
        import torch

        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or "lora_" in name or "lm_head" in name:
                continue
            weight = module.weight
            quant = getattr(weight, "quant_state", None)
            self.layers[name] = {
                "linear4bit": isinstance(module, bnb.nn.Linear4bit),
                "packed_uint8": weight.dtype == torch.uint8,
                "quant_type": getattr(quant, "quant_type", None),
                "double_quant": bool(getattr(quant, "nested", False))
                and getattr(quant, "state2", None) is not None
                and bool(getattr(weight, "compress_statistics", False)),
                "trainable": weight.requires_grad,
            }


@pytest.fixture(scope="module")
def nf4_probe() -> _LayerProbe:
    return _LayerProbe()


@pytest.fixture(scope="module")
def nf4_run(demo_base: Path, small_chat: Path, tmp_path_factory,
            nf4_probe: _LayerProbe) -> TrainResult:
    out = tmp_path_factory.mktemp("nf4") / "adapter"
    return train({"base": str(demo_base), "data": small_chat, "out": out, "max_steps": 3, **FEW},
                 callbacks=[nf4_probe])


def test_nf4_run_trains_on_a_4bit_double_quantized_base(nf4_run: TrainResult,
                                                        nf4_probe: _LayerProbe) -> None:
    """QLoRA as promised, seen on the model being trained (not on the options asking for it):
    every linear layer of the base is a bitsandbytes Linear4bit holding packed NF4 weights whose
    quantization constants are quantized again, and frozen."""
    layers = nf4_probe.layers
    assert {name.rsplit(".", 2)[-2] if name.endswith("base_layer") else name.rsplit(".", 1)[-1]
            for name in layers} == ALL_LINEAR
    for name, facts in layers.items():
        assert facts == {"linear4bit": True, "packed_uint8": True, "quant_type": "nf4",
                         "double_quant": True, "trainable": False}, name


def test_nf4_run_writes_adapter_and_reports(nf4_run: TrainResult) -> None:
    out = nf4_run.adapter_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "train_config.yaml",
                 "training_report.json", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")), "nothing pickled next to the adapter"
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"

    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and set(adapter["target_modules"]) == ALL_LINEAR

    report = json.loads((out / "training_report.json").read_text())
    assert report["runtime"]["optimizer"] == "adamw_torch"  # paged_adamw_8bit is CUDA-only
    # compute_dtype auto: bf16 where this CPU has bf16 instructions, else fp32
    assert report["runtime"]["dtype"] == fast_dtype("cpu")
    assert report["runtime"]["bf16"] is (fast_dtype("cpu") == "bfloat16")
    m = report["metrics"]
    assert m["steps"] == 3 and m["tokens_seen"] > 0 and m["tokens_per_second"] > 0
    assert m["peak_memory_bytes"] > 10 << 20 and math.isfinite(m["train_loss"])
    assert report["data"]["train_digest"] == file_digest(nf4_run.config.data)
    # The saved configuration reproduces the run's configuration.
    assert build_config(out / "train_config.yaml") == nf4_run.config


def test_adapter_loads_in_peft_and_changes_the_output(nf4_run: TrainResult,
                                                      demo_base: Path) -> None:
    import torch
    from peft import PeftModel

    from loramux.demo.tasks import load_generator

    model, tokenizer = load_generator(demo_base, None, quantize=True)
    # The frozen base really is 4-bit NF4 with double quantization.
    q = model.config.quantization_config
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert "Linear4bit" in type(model.model.layers[0].self_attn.q_proj).__name__

    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Code word for the fox?"}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    with torch.no_grad():
        before = model(**ids).logits.float()
        peft_model = PeftModel.from_pretrained(model, str(nf4_run.adapter_dir))
        after = peft_model(**ids).logits.float()
    assert (after - before).abs().max().item() > 1e-2


def test_plain_lora_on_alpaca_with_prompt_template(demo_base: Path, tmp_path: Path) -> None:
    data = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": f"Name the color of thing {i}.", "input": "", "output": "red"}
            for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = train({"base": str(demo_base), "data": data, "out": tmp_path / "out",
                    "quantize": False, "max_steps": 2,
                    "prompt_template": "### Instruction:\n{instruction}\n{input}\n### Answer:\n",
                    **FEW})
    assert result.report["runtime"]["quantization"] == "none"
    assert result.report["data"]["kind"] == "prompt_completion"
    assert result.metrics["steps"] == 2
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


class _InterruptAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_interrupt_publishes_nothing_then_resume_and_publish(demo_base: Path, small_chat: Path,
                                                             tmp_path: Path) -> None:
    import loramux.registry as reg
    from loramux.registry.fingerprint import base_fingerprint

    registry = tmp_path / "registry"
    cfg = {"base": str(demo_base), "data": small_chat, "out": tmp_path / "out",
           "max_steps": 4, "save_steps": 2, "publish": True, "name": "resumed",
           "alias": "staging", "registry": str(registry), "labels": {"task": "codeword"},
           "force": True, **FEW}  # 4 steps do not learn; the gate is test_verdict.py's

    with pytest.raises(TrainingInterrupted, match="interrupted at step 3"):
        train(cfg, callbacks=[_InterruptAt(3)])
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert reg.open(registry).list() == []
    assert (tmp_path / "out.checkpoints" / "checkpoint-2").is_dir()  # beside the adapter
    assert not (tmp_path / "out" / "checkpoints").exists()

    # Starting over in the same folder needs --resume or --overwrite.
    with pytest.raises(ConfigError, match="pass --resume"):
        train(cfg)

    result = train({**cfg, "resume": True})
    assert result.metrics["steps"] == 4 and result.metrics["resumed_at_step"] == 2
    assert result.reference == "resumed@1"
    assert not (tmp_path / "out.checkpoints").exists(), "a finished run removes them"

    with reg.open(registry) as r:
        manifest = r.resolve("resumed:staging")
        assert manifest.version == 1 and manifest.labels == {"task": "codeword"}
        assert manifest.base_fingerprint == base_fingerprint(demo_base)
        assert manifest.quantization is not None
        assert str(manifest.quantization) == f"nf4+dq+{fast_dtype('cpu')}"  # as trained
        lineage = manifest.lineage
        assert lineage.dataset_digest == file_digest(small_chat)
        assert lineage.hyperparameters["r"] == 16
        assert lineage.hyperparameters["max_steps"] == 4
        assert lineage.metrics["steps"] == 4
        assert {"torch", "transformers", "peft", "trl", "bitsandbytes"} <= set(
            lineage.library_versions)
        files = {f.path for f in manifest.files}
        assert {"adapter_config.json", "adapter_model.safetensors", "train_config.yaml",
                "training_report.json", "loss_curve.png"} <= files
        assert not any(p.startswith("checkpoints") for p in files)


def test_failed_runs_publish_nothing(demo_base: Path, small_chat: Path, tmp_path: Path) -> None:
    import loramux.registry as reg

    registry = tmp_path / "registry"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    common = {"base": str(demo_base), "max_steps": 2, "publish": True, "name": "never",
              "registry": str(registry), **FEW}
    with pytest.raises(DataError, match=r"bad\.jsonl:1: empty messages"):
        train({**common, "data": bad, "out": tmp_path / "a"})
    with pytest.raises(ConfigError, match="target_modules: nope_proj not in the base model"):
        train({**common, "data": small_chat, "out": tmp_path / "b",
               "target_modules": ["q_proj", "nope_proj"]})
    with pytest.raises(DataError, match="longer than max_seq_length 16"):
        train({**common, "data": small_chat, "out": tmp_path / "c", "max_seq_length": 16})
    assert reg.open(registry).list() == []


def test_packing_eval_split_and_early_stopping(demo_base: Path, small_chat: Path,
                                               tmp_path: Path) -> None:
    # A threshold no eval can beat: the second evaluation counts as "no improvement".
    result = train({"base": str(demo_base), "data": small_chat, "out": tmp_path / "out",
                    "packing": True, "eval_split": 0.25, "eval_steps": 1,
                    "early_stopping_patience": 1, "early_stopping_threshold": 100.0,
                    "max_steps": 10, **FEW})
    assert result.metrics["steps"] == 2 and result.metrics["stopped_early"]
    assert result.metrics["eval_loss"] is not None
    assert result.report["data"]["eval_examples"] == 8
