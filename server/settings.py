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

from pydantic import BaseModel, Field, FilePath, ValidationError

from loramux.server.errors import SettingsError

if TYPE_CHECKING:
    from loramux.server.engines.vllm_engine import VllmOptions

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
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port (0: any free one).")
    api_keys: FilePath | None = Field(
        default=None, description="File of API keys, one a line; `KEY admin` for admin.")
    pin: list[str] = Field(default_factory=list,
                           description="Adapter ref kept resident (repeatable).")
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
    resolve_ttl_s: float = Field(default=2.0, ge=0,
                                 description="Seconds an alias or name stays resolved.")
    max_adapter_labels: int = Field(default=100, ge=1,
                                    description="Adapters with their own metric labels.")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error|critical)$",
                           description="debug also shows third-party libraries' logs.")

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
            problems = "; ".join(f"{flag_name(str(e['loc'][0])) if e['loc'] else 'settings'}: "
                                 f"{e['msg']}" for e in exc.errors())
            raise SettingsError(problems) from None

    def vllm_options(self, model_dir: Path) -> VllmOptions:
        """vLLM's options: every setting whose name is a VllmOptions field, by name."""
        from loramux.server.engines.vllm_engine import VllmOptions

        shared = {f.name for f in fields(VllmOptions)} & set(type(self).model_fields)
        return VllmOptions(model=str(model_dir),
                           **{name: getattr(self, name) for name in shared - {"model"}})


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


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
