"""Scaling out with accelerate: DDP on CPU (gloo) against one process, and the GPU recipes.

The slow test trains the demo base twice on the same 32 records with the same seed and the
same global batch of 8: once in this process (batch 8), once as ``loramux train
--num-processes 2`` (accelerate launch, 2 ranks of 4). DDP averages the two half-batches'
gradients, with the loss normalised by the tokens of the whole global batch, so the run is the
same computation with floating-point sums in another order (and 1 thread per rank instead of
2, and each rank padding its half of the batch to its own width, so other matmul shapes and
bf16 roundings): the losses must be close, not equal. Tolerance: the first step's loss (same
weights, same 8 examples) within 0.05 % relative (measured 0.02 %; another split of the batch
is percents off), every later logged loss within 1 % relative, and the two adapters'
weights within 2 % (relative L2). Measured: losses 0.03-0.06 % apart at steps 3-4. Ranks that
do not average their gradients (each training on its own half) are 2-5 % apart by step 3 and
their adapters far apart: that is what an evaluate() before train() did to DDP (see
``loramux.trainer.distributed.rewrap_after_eval``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loramux.trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = REPO / "deploy" / "accelerate"
# eval_steps past max_steps: the eval data is measured before and after training only, the
# part under test (no evaluation between steps, which would only make the run longer).
SETTINGS = {"max_steps": 4, "learning_rate": 2e-3, "lora_dropout": 0.0, "max_seq_length": 128,
            "logging_steps": 1, "seed": 7, "eval_steps": 100}
FIRST_STEP_REL = 5e-4
LATER_STEPS_REL = 0.01
ADAPTER_REL = 0.02


def _losses(report: dict) -> list[float]:
    return [h["loss"] for h in report["log_history"] if "loss" in h]


def _adapter_gap(a: Path, b: Path) -> float:
    """||A - B|| / ||A|| over all LoRA weights of two saved adapters."""
    from safetensors.torch import load_file

    first = load_file(str(a / "adapter_model.safetensors"))
    second = load_file(str(b / "adapter_model.safetensors"))
    assert first.keys() == second.keys()
    diff = sum(float((first[k].double() - second[k].double()).pow(2).sum()) for k in first)
    norm = sum(float(first[k].double().pow(2).sum()) for k in first)
    return (diff / norm) ** 0.5


@pytest.mark.slow
def test_ddp_on_cpu_matches_one_process_and_publishes_once(demo_base: Path, demo_data,
                                                            tmp_path: Path) -> None:
    from loramux.trainer.api import train

    lines = (demo_data["codeword"] / "train.jsonl").read_text().splitlines()
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines[:32]) + "\n")
    evals = tmp_path / "eval8.jsonl"
    evals.write_text("\n".join(
        (demo_data["codeword"] / "eval.jsonl").read_text().splitlines()[:8]) + "\n")

    single = train({"base": str(demo_base), "data": str(data), "eval": str(evals),
                    "out": str(tmp_path / "one"), "batch_size": 8, "threads": 2,
                    "progress": False, **SETTINGS})

    registry = tmp_path / "registry"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    cmd = [sys.executable, "-m", "loramux.trainer", "train", "--base", str(demo_base),
           "--data", str(data), "--eval", str(evals), "--out", str(tmp_path / "ddp"),
           "--num-processes", "2", "--batch-size", "4", "--threads", "1", "--no-progress",
           "--name", "codeword-ddp", "--publish", "--force", "--alias", "staging",
           "--registry", str(registry), *flags]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # The main process alone saved, reported and published: one version, one push, one alias
    # move, one summary on the console.
    import loramux.registry as reg

    with reg.open(registry) as r:
        versions = r.list(name="codeword-ddp")
        actions = sorted(e.action for e in r.log(name="codeword-ddp"))
    assert [v.version for v in versions] == [1]
    assert actions == ["alias_set", "push"]
    assert run.stdout.count("published codeword-ddp@1") == 1, run.stdout
    assert run.stdout.count("training summary") == 1, run.stdout

    report = json.loads((tmp_path / "ddp" / "training_report.json").read_text())
    assert report["published"]["ref"] == "codeword-ddp@1"
    assert report["runtime"]["processes"] == 2 and report["runtime"]["device"] == "cpu"
    assert report["metrics"]["steps"] == single.metrics["steps"] == 4
    # every record seen once per epoch in both runs: the two ranks split, not duplicate, them
    assert report["metrics"]["tokens_seen_total"] == single.metrics["tokens_seen_total"]
    one, two = _losses(single.report), _losses(report)
    assert len(one) == len(two) == 4, (one, two)
    assert two[0] == pytest.approx(one[0], rel=FIRST_STEP_REL), (one, two)
    for a, b in zip(one[1:], two[1:], strict=True):
        assert b == pytest.approx(a, rel=LATER_STEPS_REL), (one, two)
    gap = _adapter_gap(tmp_path / "one", tmp_path / "ddp")
    print(f"losses one process {one}, two processes {two}; adapter gap {gap:.2e}")
    assert gap < ADAPTER_REL

    # exact match (generation) was measured by the main process, the eval loss by both
    verdict = report["verdict"]
    assert verdict["eval_loss_before"] is not None and verdict["eval_loss_after"] is not None
    assert verdict["exact_match_total"] == 8 and verdict["exact_match_after"] is not None
    assert (tmp_path / "ddp" / "adapter_model.safetensors").is_file()


# -- the configs and the option mapping (fast) ---------------------------------------------


def _launch_args(config_file: Path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "-m", "x"])
    _validate_launch_command(args)
    return args


def test_ddp_config_parses_as_multi_gpu() -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(ACCELERATE / "ddp.yaml"))
    assert config.distributed_type == DistributedType.MULTI_GPU and not config.use_cpu
    args = _launch_args(ACCELERATE / "ddp.yaml")
    assert args.multi_gpu and not args.use_fsdp and args.num_processes == 2


def test_fsdp_qlora_config_has_what_fsdp_qlora_needs() -> None:
    """PEFT's FSDP + QLoRA guide: use_orig_params false, cpu_ram_efficient_loading with
    sync_module_states; accelerate turns them into the environment transformers reads."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_multi_gpu_env

    config = load_config_from_file(str(ACCELERATE / "fsdp-qlora.yaml"))
    assert config.distributed_type == DistributedType.FSDP
    fsdp = config.fsdp_config
    assert fsdp["fsdp_use_orig_params"] is False
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
    assert fsdp["fsdp_sync_module_states"] is True
    env = prepare_multi_gpu_env(_launch_args(ACCELERATE / "fsdp-qlora.yaml"))
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert env["FSDP_USE_ORIG_PARAMS"] == "false"


def _config(**kw) -> TrainConfig:
    return TrainConfig(base="b", data=Path("d.jsonl"), out=Path("o"), **kw)


def test_fsdp_stores_4bit_weights_in_the_compute_dtype() -> None:
    import torch

    from loramux.trainer.model import quant_storage_for, quantization_config

    assert quant_storage_for(_config(), fsdp=True) == "bfloat16"
    assert quant_storage_for(_config(compute_dtype="float16"), fsdp=True) == "float16"
    assert quant_storage_for(_config(), fsdp=False) is None  # bitsandbytes' uint8
    assert quant_storage_for(_config(quantize=False), fsdp=True) is None
    fsdp = quantization_config("nf4", True, "bfloat16", quant_storage_for(_config(), True))
    assert fsdp.bnb_4bit_quant_storage == torch.bfloat16
    assert fsdp.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config().bnb_4bit_quant_storage == torch.uint8


def test_fsdp_runtime_refuses_cpu_and_picks_a_checkpointable_optimizer() -> None:
    from loramux.trainer.errors import ConfigError
    from loramux.trainer.model import auto_optimizer, runtime_for

    with pytest.raises(ConfigError, match=r"FSDP .* needs CUDA; on CPU use --num-processes"):
        runtime_for(_config(device="cpu"), fsdp=True)
    ddp = runtime_for(_config(device="cpu"), fsdp=False, processes=2)
    assert (ddp.processes, ddp.fsdp, ddp.quant_storage) == (2, False, None)
    assert auto_optimizer("cuda", fsdp=False) == "paged_adamw_8bit"
    assert auto_optimizer("cuda", fsdp=True) == "adamw_torch"


def test_launch_command(tmp_path: Path) -> None:
    from loramux.trainer.distributed import launch_command, needs_launch

    cfg = _config(num_processes=2, threads=1)
    cmd = launch_command(tmp_path / "c.yaml", cfg, cuda=False)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[-4:] == ["-m", "loramux.trainer", "--config", str(tmp_path / "c.yaml")]
    with_file = launch_command(tmp_path / "c.yaml", _config(
        accelerate_config=ACCELERATE / "fsdp-qlora.yaml"), cuda=True)
    assert with_file[3:5] == ["--config_file", str(ACCELERATE / "fsdp-qlora.yaml")]
    assert "--multi_gpu" not in with_file
    assert needs_launch(cfg) and not needs_launch(_config())


def test_a_failed_rank_is_one_error_line_and_its_exit_code() -> None:
    """torchrun's report of a failed rank (its log lines and the launcher's traceback, as
    seen when a bad --base made rank 0 exit 2) is kept out; the rank's own line and exit code
    are what the user gets."""
    import io

    from loramux.trainer.distributed import relay

    lines = [
        "error: cannot load the base model '/x': it is not a local folder\n",
        "W1130 08:22:37.758000 307 torch/distributed/elastic/multiprocessing/api.py:1028] "
        "Sending process 312 closing signal SIGTERM\n",
        "Traceback (most recent call last):\n",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n",
        "Failures:\n", "[1]:\n", "  exitcode  : -15 (pid: 312)\n",
        "Root Cause (first observed failure):\n", "[0]:\n", "  exitcode  : 2 (pid: 311)\n",
    ]
    sink = io.StringIO()
    assert relay(lines, sink) == (2, True)
    assert sink.getvalue() == lines[0]
    sink = io.StringIO()
    assert relay(["a warning\n"], sink) == (None, False) and sink.getvalue() == "a warning\n"
