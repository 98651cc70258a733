"""The server's settings: one field each, with its default and help text, read from flags and
the environment here and nowhere else.

`loramux serve` generates one flag per field (`max_num_seqs` → `--max-num-seqs`), and every
field can also come from the environment as `LORAMUX_<FIELD>` (`LORAMUX_MAX_NUM_SEQS=32`;
lists comma-separated). A flag beats the environment, which beats the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, FilePath, ValidationError, model_validator

from loramux.server.errors import SettingsError
from loramux.wire import (
    FORWARDED_ALLOW_IPS,
    FORWARDED_HELP,
    HEADER_TIMEOUT_HELP,
    HEADER_TIMEOUT_S,
    KEEP_ALIVE_HELP,
    KEEP_ALIVE_S,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_HELP,
)

if TYPE_CHECKING:
    from loramux.server.engines.vllm_engine import VllmOptions
    from loramux.web.serving import ConnectionLimits

ENV_PREFIX = "LORAMUX_"


class ServerSettings(BaseModel):
    base: str = Field(description="Base model: a local folder or a Hub id.")
    registry: str | None = Field(
        default=None, description="Registry path or http(s) URL (default: ~/.loramux/registry).")
    served_name: str | None = Field(
        default=None, description="`model` value meaning the base (default: its folder name).")
    engine: str = Field(default="vllm", pattern="^(vllm|transformers)$",
                        description="vllm, or transformers (the reference engine).")
    quantization: str = Field(default="bitsandbytes",
                              description="bitsandbytes (NF4), none, or a vLLM method.")
    dtype: str = Field(default="auto", pattern="^(auto|bfloat16|float16|float32)$",
                       description="Compute dtype: auto is bfloat16 where the hardware has it "
                       "(GPUs, CPUs with AVX-512 BF16 or AMX), else float32 on CPU.")
    # None: on CPU every resident adapter gets a slot (max_cpu_loras), since loramux's CPU ops
    # cost nothing for an idle slot; on CUDA vLLM's default of 8.
    max_loras: int | None = Field(
        default=None, ge=1, description="Adapters in one batch (default: max-cpu-loras on CPU, "
        "8 on CUDA).")
    max_cpu_loras: int = Field(default=64, ge=1, description="Adapters kept in the engine.")
    max_lora_rank: int = Field(default=64, ge=1, description="Largest LoRA rank accepted.")
    max_model_len: int | None = Field(default=None, ge=16,
                                      description="Context length (default: the model's).")
    max_num_seqs: int = Field(default=64, ge=1, description="Sequences in one engine step.")
    kv_cache_gib: float = Field(default=1.0, gt=0, description="KV cache size on CPU, GiB.")
    lora_ops: str = Field(
        default="auto", pattern="^(auto|native|python)$",
        description="CPU LoRA ops: native (the C++ op `make install` builds; refuse to start "
        "without it), python (the torch ops), or auto: native where it loads, else python with "
        "one log line.")
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port (0: any free one).")
    # Why longer than uvicorn's 5 s: see loramux.wire.KEEP_ALIVE_S.
    keep_alive_s: int = Field(default=KEEP_ALIVE_S, ge=1, description=KEEP_ALIVE_HELP)
    header_timeout_s: float = Field(default=HEADER_TIMEOUT_S, gt=0,
                                    description=HEADER_TIMEOUT_HELP)
    max_connections: int = Field(default=MAX_CONNECTIONS, ge=1, description=MAX_CONNECTIONS_HELP)
    forwarded_allow_ips: str = Field(default=FORWARDED_ALLOW_IPS, description=FORWARDED_HELP)
    api_keys: FilePath | None = Field(
        default=None, description="File of API keys, one a line: KEY, then optionally "
        "admin, adapters=a-*,b, rpm=N, tpm=N, concurrency=N; re-read when it changes. "
        "Without it the server is open: loopback --host only.")
    insecure_no_auth: bool = Field(
        default=False, description="Allow a non-loopback --host without --api-keys: anyone "
        "who reaches the port is admin.")
    protect_metrics: bool = Field(
        default=False, description="/docs and /openapi.json (and an --open-metrics "
        "/metrics) need a key too.")
    open_metrics: bool = Field(
        default=False, description="Serve /metrics to anyone who reaches the port. Without "
        "it, a server with --api-keys answers /metrics only to an admin key without adapters= "
        "(Prometheus: a bearer token), since it names every tenant's adapters.")
    pin: list[str] = Field(default_factory=list,
                           description="Adapter ref kept resident (repeatable).")
    hub_allow: list[str] = Field(
        default_factory=list, description="Hugging Face Hub repos (ORG/*, ORG/REPO; "
        "repeatable) whose adapters a request may name as hf://ORG/REPO[@REV]: imported into "
        "the registry on first use. Without it hf:// models are 404.")
    cache_dir: Path = Field(default=Path.home() / ".cache" / "loramux" / "adapters",
                            description="Local adapter cache, by digest.")
    max_cache_bytes: int = Field(default=8 * 2**30, ge=1,
                                 description="Bound of the local adapter cache.")
    adapter_failure_ttl_s: float = Field(
        default=60.0, ge=0, description="Seconds a failed adapter fetch/load is answered from "
        "memory before it is tried again.")
    max_pending: int = Field(default=256, ge=1,
                             description="Running plus queued requests before 429.")
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024,
                                description="Largest request body; larger gets 413.")
    max_prompt_chars: int = Field(
        default=1_000_000, ge=1, description="Most characters in a prompt (all messages "
        "together); more gets 400 before any tokenization.")
    resolve_ttl_s: float = Field(default=2.0, ge=0,
                                 description="Seconds an alias or name stays resolved.")
    max_adapter_labels: int = Field(default=100, ge=1,
                                    description="Adapters with their own metric labels.")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error|critical)$",
                           description="debug also shows third-party libraries' logs.")

    @model_validator(mode="after")
    def _not_open_to_the_network(self) -> ServerSettings:
        """Without keys every caller is admin: allowed on loopback, elsewhere only when asked."""
        from loramux.server.auth import is_loopback

        if self.api_keys is None and not self.insecure_no_auth and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} without API keys: give --api-keys FILE "
                "(or LORAMUX_API_KEYS), or --insecure-no-auth to serve it open to anyone")
        return self

    @property
    def name(self) -> str:
        """The `model` value that means "no adapter"."""
        return self.served_name or Path(self.base.rstrip("/")).name

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any],
                     environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Settings from flags (None or [] = not given), then `LORAMUX_<FIELD>`, then defaults.

        Raises SettingsError with one line per bad value, named as the flag a user would fix.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            given = flags.get(name)
            if given is not None and given != []:
                values[name] = given
            elif (raw := environ.get(env_name(name))) not in (None, ""):
                values[name] = ([p.strip() for p in raw.split(",") if p.strip()]
                                if info.annotation == list[str] else raw)
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{flag_name(str(e['loc'][0]))}: {e['msg']}" if e["loc"]
                                 else str(e["msg"]).removeprefix("Value error, ")
                                 for e in exc.errors())
            raise SettingsError(problems) from None

    def connection_limits(self) -> ConnectionLimits:
        """The uvicorn limits (loramux.web.serving) these settings ask for."""
        from loramux.web.serving import ConnectionLimits

        return ConnectionLimits(self.keep_alive_s, self.header_timeout_s, self.max_connections,
                                self.forwarded_allow_ips)

    def compute_dtype(self) -> str:
        """``dtype`` with ``auto`` resolved for this machine (loramux.hardware decides)."""
        from loramux.hardware import resolve_dtype

        return resolve_dtype(self.dtype)

    def vllm_options(self, model_dir: Path) -> VllmOptions:
        """vLLM's options: every setting whose name is a VllmOptions field, by name."""
        from loramux.server.engines.vllm_engine import VllmOptions

        shared = {f.name for f in fields(VllmOptions)} & set(type(self).model_fields)
        values = {name: getattr(self, name) for name in shared - {"model"}}
        return VllmOptions(model=str(model_dir), **values | {"dtype": self.compute_dtype()})


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")
