"""The server's settings, built once from flags (and the environment) at the edge."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class ServerSettings(BaseModel):
    base: str
    registry: str | None = None
    served_name: str | None = None
    engine: str = Field(default="vllm", pattern="^(vllm|transformers)$")
    quantization: str = "bitsandbytes"
    # Adapters one batch may hold (vLLM `max_loras`). None: on CPU every resident adapter gets
    # a slot (max_cpu_loras), since loramux's CPU ops cost nothing for an idle slot; on CUDA
    # vLLM's default of 8.
    max_loras: int | None = Field(default=None, ge=1)
    max_cpu_loras: int = Field(default=64, ge=1)
    max_lora_rank: int = Field(default=64, ge=1)
    max_model_len: int | None = Field(default=None, ge=16)
    max_num_seqs: int = Field(default=64, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: Path | None = None
    pin: list[str] = Field(default_factory=list)
    cache_dir: Path = Path.home() / ".cache" / "loramux" / "adapters"
    max_cache_bytes: int = Field(default=8 * 2**30, ge=1)
    max_pending: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024)
    resolve_ttl_s: float = Field(default=2.0, ge=0)
    max_adapter_labels: int = Field(default=100, ge=1)
    kv_cache_gib: float = Field(default=1.0, gt=0)

    @property
    def name(self) -> str:
        """The `model` value that means "no adapter"."""
        return self.served_name or Path(self.base.rstrip("/")).name


def read_api_keys(path: Path | None) -> dict[str, set[str]]:
    """`KEY` or `KEY admin` per line (# comments allowed) → key → scopes."""
    if path is None:
        return {}
    keys: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, *scopes = line.replace(":", " ").split()
        keys[key] = {"user", *scopes}
    if not keys:
        raise ValueError(f"{path} holds no API keys")
    return keys
