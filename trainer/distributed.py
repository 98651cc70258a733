"""Data-parallel training through accelerate: the launch, and who does what once launched.

``loramux train --num-processes N`` (or ``--accelerate-config FILE``) checks the options and the
data once, writes the resolved config to a file and runs ``accelerate launch -m loramux.trainer
--config FILE``; ``accelerate launch ... -m loramux.trainer ...`` by hand works the same way.
In the launched processes TRL's trainer reads accelerate's state (DDP, FSDP), so every rank
trains on its shard of each global batch (the same seeded order everywhere) and gradients are
averaged. Evaluation losses are computed by every rank together; exact match (generation), the
verdict, the saved adapter, the report and the publish are the main process's alone, and the
others wait for it at a barrier.

On a machine without CUDA the processes use the gloo backend on CPU (accelerate's
``--multi_gpu`` launcher is torchrun; ``use_cpu`` picks MULTI_CPU), which is what the tests run.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from loramux.trainer.config import TrainConfig

log = logging.getLogger(__name__)

LAUNCHED_CONFIG = ".launch_config.yaml"


def launched() -> bool:
    """True inside a process that torchrun/accelerate started as one of several."""
    return env_world_size() > 1 or "LOCAL_RANK" in os.environ


def fsdp_requested() -> bool:
    """accelerate launch sets this from an FSDP config (distributed_type: FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def env_world_size() -> int:
    """The process count torchrun announced (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """The process that evaluates for the verdict, saves, reports and publishes."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def init_state(device: str) -> None:
    """Join the process group before the model loads (TrainingArguments would, later).

    Under FSDP, transformers then loads the weights on rank 0 only (cpu_ram_efficient_loading)
    and bitsandbytes quantizes onto each rank's own GPU (accelerate sets it), not all onto GPU 0.
    """
    if launched():
        from accelerate import PartialState

        PartialState(cpu=device == "cpu")


def rewrap_after_eval(trainer) -> None:
    """Let ``trainer.train()`` wrap the model in DDP after an ``evaluate()`` before it.

    transformers' evaluate() before train() prepares the model in evaluation mode: not wrapped
    in DDP, yet marked as prepared, so accelerate then hands it to training unwrapped and each
    rank silently trains on its own shard with no gradient averaging (the ranks' weights drift
    apart from the second step on). Measuring the base first is what issue 16 asks for, so the
    mark is taken off again. FSDP is not affected (transformers prepares it fully there).
    """
    model = trainer.model
    if world_size() < 2 or not getattr(model, "_is_accelerate_prepared", False):
        return
    del model._is_accelerate_prepared
    models = trainer.accelerator._models
    models[:] = [m for m in models if m is not model]


def needs_launch(config: TrainConfig) -> bool:
    """Whether ``loramux train`` must re-run itself under accelerate launch."""
    return not launched() and (config.num_processes > 1 or config.accelerate_config is not None)


def launch_command(config_file: Path, config: TrainConfig, *, cuda: bool) -> list[str]:
    """``accelerate launch`` for ``python -m loramux.trainer --config config_file``.

    Without an accelerate config, several processes on CUDA or CPU use the multi-GPU launcher
    (torchrun): on CPU the trainer's ``use_cpu`` makes them MULTI_CPU with gloo. accelerate's
    plain launcher would start a single process there.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config.accelerate_config is not None:
        cmd += ["--config_file", str(config.accelerate_config)]
        if config.num_processes > 1:
            cmd += ["--num_processes", str(config.num_processes)]
    else:
        cmd += ["--multi_gpu", "--num_processes", str(config.num_processes), "--num_machines",
                "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if not cuda:
            threads = config.threads or max(1, (os.cpu_count() or 1) // config.num_processes)
            cmd += ["--num_cpu_threads_per_process", str(threads)]
    return [*cmd, "-m", "loramux.trainer", "--config", str(config_file)]


# torchrun's own report once a rank failed: its log lines, then a traceback of the launcher.
_LAUNCHER_NOISE = re.compile(r"^[WEI]\d{4} .*torch/distributed/elastic/")
_ROOT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def relay(lines: Iterable[str], sink: TextIO) -> tuple[int | None, bool]:
    """Copy the processes' stderr to ``sink`` until torchrun starts reporting a failure, and
    keep that report out: the failing rank already said why in one line. Returns (the first
    failed rank's exit code, or None; whether an ``error:`` line went through)."""
    noise, codes, said = False, [], False
    for line in lines:
        noise = noise or bool(_LAUNCHER_NOISE.match(line))
        if not noise:
            said = said or line.startswith("error: ")
            sink.write(line)
            sink.flush()
        elif match := _ROOT_EXIT.match(line):
            codes.append(int(match.group(1)))
    return (codes[-1] if codes else None), said  # the last one listed is the root cause


def launch(config: TrainConfig, sink: TextIO) -> int:
    """Run the training in ``config.num_processes`` processes; their stderr goes to ``sink``.

    The config handed over is the resolved one (absolute paths), so every rank sees the same
    options whatever its working folder. Returns the exit code of the rank that failed first
    (2 for bad options, 3 for a refused publish, ...), else accelerate's.
    """
    import torch

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=LAUNCHED_CONFIG, dir=out,
                                     delete=False, encoding="utf-8") as handle:
        handle.write(config.to_yaml())
    try:
        cmd = launch_command(Path(handle.name), config, cuda=torch.cuda.is_available())
        log.info("launching: %s", " ".join(cmd))
        with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1) as proc:
            assert proc.stderr is not None
            failed, said = relay(proc.stderr, sink)
            code = proc.wait()
    finally:
        Path(handle.name).unlink(missing_ok=True)
    if code and failed is not None and failed > 0:
        code = failed
    if code and not said:
        sink.write(f"error: a training process failed (exit code {code}); see above\n")
    return code
