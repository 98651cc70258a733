"""The servers under test, each a child process on loopback: loramux, vLLM's own, the naive one.

All three get the same environment (KV cache size, thread settings), the same engine limits and
the same compute dtype, always passed as a concrete `--dtype` (vLLM's own `auto` means the
checkpoint's dtype, bf16 here, ~20x slower than fp32 on a CPU without bf16 instructions); each
is ready when its readiness route answers 200, and the time from spawn to ready is kept.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from loramux.support.launch import ChildServer, ServerProcess


@dataclass(frozen=True)
class EngineLimits:
    """What both vLLM-based servers are configured with, identically.

    `max_loras` is never passed to loramux (its default is what is measured); it is what
    loramux's default comes to (see `loramux_slots`), passed to vLLM's server so both have the
    same slots.
    """

    quantization: str = "bitsandbytes"  # or "none"
    max_loras: int = 64
    max_cpu_loras: int = 64
    max_lora_rank: int = 16
    max_model_len: int = 512
    max_num_seqs: int = 64
    kv_cache_gib: int = 1
    dtype: str = "auto"  # compute dtype; auto: loramux.hardware.fast_dtype("cpu")

    @property
    def compute_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        from loramux.hardware import fast_dtype

        return fast_dtype("cpu")


def bench_env(limits: EngineLimits) -> dict[str, str]:
    """Environment shared by every server in a run (set explicitly, never left to defaults)."""
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(limits.kv_cache_gib),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def loramux_server(model_dir: Path, registry_dir: Path, cache_dir: Path, limits: EngineLimits,
                   log: Path) -> ServerProcess:
    """`loramux serve` through the project's own launcher (the command a user runs)."""
    args = ["--base", str(model_dir), "--registry", str(registry_dir),
            "--quantization", limits.quantization, "--max-cpu-loras", str(limits.max_cpu_loras),
            "--max-lora-rank", str(limits.max_lora_rank),
            "--max-model-len", str(limits.max_model_len), "--cache-dir", str(cache_dir),
            "--max-num-seqs", str(limits.max_num_seqs), "--kv-cache-gib",
            str(limits.kv_cache_gib), "--max-pending", "4096", "--dtype", limits.compute_dtype]
    return ServerProcess(args, log=log, timeout_s=600, env=bench_env(limits))


def vllm_server(model_dir: Path, served_name: str, adapters: dict[str, Path],
                limits: EngineLimits, log: Path) -> ChildServer:
    """vLLM's own OpenAI server with every adapter as a static `--lora-modules` entry."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model_dir), "--served-model-name", served_name,
           "--host", "127.0.0.1", "--port", "0",
           "--enable-lora", "--max-loras", str(limits.max_loras),
           "--max-cpu-loras", str(limits.max_cpu_loras),
           "--max-lora-rank", str(limits.max_lora_rank),
           "--max-model-len", str(limits.max_model_len),
           "--max-num-seqs", str(limits.max_num_seqs),
           "--dtype", limits.compute_dtype, "--seed", "0", "--disable-log-stats"]
    if limits.quantization != "none":
        cmd += ["--quantization", limits.quantization]
    if adapters:
        cmd += ["--lora-modules", *[f"{name}={path}" for name, path in adapters.items()]]
    return ChildServer(cmd, log, None, "/health", bench_env(limits), 600, "vLLM server")


def naive_server(model_dir: Path, served_name: str, adapters: dict[str, Path],
                 limits: EngineLimits, log: Path) -> ChildServer:
    cmd = [sys.executable, "-m", "loramux.bench.naive_server", "--model", str(model_dir),
           "--served-name", served_name, "--quantization", limits.quantization,
           "--dtype", limits.compute_dtype, "--port", "0",
           *[f"--adapter={name}={path}" for name, path in adapters.items()]]
    return ChildServer(cmd, log, None, "/health", bench_env(limits), 600, "naive server")


def loramux_slots(max_cpu_loras: int) -> int:
    """The `--max-loras` loramux's engine uses when the flag is omitted, by its own rule."""
    from loramux.server.engines.vllm_engine import VllmOptions, slot_count

    return slot_count(VllmOptions(model="", max_loras=None, max_cpu_loras=max_cpu_loras))


_SLOTS_LOGGED = re.compile(r"LoRA slots: ([0-9]+)")  # loramux's start-up line
_ENGINE_LOADED = re.compile(r"vLLM engine loaded .* in ([0-9.]+)s")


def _logged(log: Path, pattern: re.Pattern[str]) -> str | None:
    """The first group of ``pattern``'s first match in a server's log, if any."""
    try:
        match = pattern.search(log.read_text(errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None


def logged_slots(log: Path) -> int | None:
    """The `max_loras` a loramux server's log states, if it states one."""
    value = _logged(log, _SLOTS_LOGGED)
    return int(value) if value is not None else None


def engine_seconds(log: Path) -> float | None:
    """The engine construction time loramux logs at startup (base load, profiling, KV cache)."""
    value = _logged(log, _ENGINE_LOADED)
    return float(value) if value is not None else None
