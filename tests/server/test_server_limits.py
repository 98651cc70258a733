"""Limits a user sets on `loramux serve`, through a real server of their own: the per-adapter
metric label cap (`--max-adapter-labels`), `--pin` and `--max-cpu-loras` (what stays resident),
and the 503 once the engine is dead.

One server for the whole module (about a minute to start); the dead-engine tests kill its engine
and therefore run last (pytest keeps file order).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from loramux.support.launch import ServerProcess

pytestmark = pytest.mark.slow
HELLO = [{"role": "user", "content": "Hello!"}]
LABEL_CAP, MAX_CPU_LORAS = 2, 3
OTHERS = [f"lim-{i}" for i in range(MAX_CPU_LORAS + 2)]  # more than fit next to the pin


class Limited:
    def __init__(self, url: str, proc) -> None:
        self.url, self.proc = url, proc

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0,
                             timeout=120)

    def ask(self, model: str) -> str:
        """The finish reason of one short answer (a random adapter may answer nothing but the
        end of its turn: "stop" with empty text is served too)."""
        r = self.openai().chat.completions.create(model=model, messages=HELLO, max_tokens=3,
                                                  temperature=0)
        return r.choices[0].finish_reason

    def resident(self) -> dict[str, bool]:
        return {m.id: m.model_dump()["resident"] for m in self.openai().models.list().data}

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


@pytest.fixture(scope="module")
def limited(demo_base: Path, make_adapter, tmp_path_factory) -> Limited:
    import loramux.registry as reg

    root = tmp_path_factory.mktemp("limited")
    registry = reg.open(root / "registry")
    for i, name in enumerate(["pinned", *OTHERS]):
        registry.push(make_adapter(demo_base, root / "adapters" / name, seed=300 + i), name,
                      base_model=demo_base)
    registry.close()
    process = ServerProcess(
        ["--base", str(demo_base), "--registry", str(root / "registry"),
         "--cache-dir", str(root / "cache"), "--max-model-len", "256",
         "--max-cpu-loras", str(MAX_CPU_LORAS), "--pin", "pinned",
         "--max-adapter-labels", str(LABEL_CAP)],
        log=root / "server.log")
    url = process.start()
    yield Limited(url, process.proc)
    process.stop()


def test_pin_stays_resident_and_max_cpu_loras_evicts_the_rest(limited: Limited) -> None:
    assert limited.resident()["pinned@1"] is True, "--pin loads the adapter at start"
    for name in OTHERS:  # one at a time: each is idle by the time the next one needs room
        assert limited.ask(name) in ("stop", "length")
    resident = limited.resident()
    assert resident["pinned@1"] is True, f"the pinned adapter was evicted: {resident}"
    kept = [name for name in OTHERS if resident[f"{name}@1"]]
    # The pin holds one of the MAX_CPU_LORAS places; the most recently used others hold the rest.
    assert kept == OTHERS[-(MAX_CPU_LORAS - 1):], resident
    assert limited.ask("pinned") and limited.resident()["pinned@1"] is True
    gauge = re.search(r"^loramux_adapters_resident (\S+)$", limited.metrics(), re.M)
    assert gauge and float(gauge[1]) == MAX_CPU_LORAS


def _adapter_labels(text: str, metric: str) -> dict[str, float]:
    """adapter label value -> summed sample value of one metric family."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(metric + "{") and (m := re.search(r'adapter="([^"]*)"', line)):
            out[m[1]] = out.get(m[1], 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_adapter_labels_are_capped_on_the_live_server(limited: Limited) -> None:
    for name in OTHERS:  # more adapter names than the cap, whatever ran before
        assert limited.ask(name) in ("stop", "length")
    text = limited.metrics()
    for metric in ("loramux_requests_total", "loramux_completion_tokens_total",
                   "loramux_adapter_loads_total"):
        labels = _adapter_labels(text, metric)
        named = set(labels) - {"__base__", "__other__"}
        assert len(named) <= LABEL_CAP, f"{metric}: {sorted(named)} past a cap of {LABEL_CAP}"
        assert labels.get("__other__", 0) > 0, f"{metric}: no __other__ series: {labels}"
    requests = _adapter_labels(text, "loramux_requests_total")
    # Every adapter request is counted once: under its own name or under __other__.
    assert sum(v for k, v in requests.items() if k != "__base__") >= len(OTHERS)


def _engine_core(limited: Limited) -> psutil.Process:
    """vLLM's engine-core process, as the server reports it (checked to be its own child)."""
    pid = httpx.get(f"{limited.url}/v1/admin/engine", timeout=30).json()["engine_pid"]
    assert pid is not None, "the vLLM engine runs its core in a process of its own"
    core = psutil.Process(pid)
    assert core in psutil.Process(limited.proc.pid).children(recursive=True)
    return core


def test_dead_engine_health_answers_503(limited: Limited) -> None:
    """Kills this module's engine: the tests after it see a dead engine."""
    assert httpx.get(f"{limited.url}/health", timeout=10).status_code == 200
    _engine_core(limited).kill()
    deadline = time.monotonic() + 60
    while (health := httpx.get(f"{limited.url}/health", timeout=10)).status_code == 200:
        assert time.monotonic() < deadline, "/health still 200 a minute after the engine died"
        time.sleep(0.5)
    assert health.status_code == 503, health.text
    assert health.json()["error"]["type"] == "service_unavailable"
    assert httpx.get(f"{limited.url}/ready", timeout=10).status_code == 503
    assert limited.proc.poll() is None, "the server itself stays up to answer 503"


# Found by this test: vLLM's EngineDeadError used to reach the client as a plain-text 500.
def test_dead_engine_requests_answer_503(limited: Limited) -> None:
    """Runs after the test above (file order): the engine is dead by now."""
    assert httpx.get(f"{limited.url}/health", timeout=10).status_code == 503
    for model in ("demo-base", OTHERS[-1]):
        r = httpx.post(f"{limited.url}/v1/chat/completions", timeout=30,
                       json={"model": model, "messages": HELLO, "max_tokens": 2})
        assert r.status_code == 503, (model, r.status_code, r.text)
        error = r.json()["error"]
        assert error["type"] == "service_unavailable" and error["message"], error
    with pytest.raises(openai.InternalServerError) as info:
        limited.openai().completions.create(model="demo-base", prompt="Hi", max_tokens=2)
    assert info.value.status_code == 503
