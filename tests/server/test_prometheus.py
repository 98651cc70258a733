"""A real Prometheus scrapes a running loramux server with the scrape config shipped in deploy/
(issue 14, item 2, "Real Prometheus").

Debian's `prometheus` binary runs on loopback in a temp folder with `deploy/prometheus/
prometheus.yml`, of which only the loramux job's target (the compose service `server:8000`)
and the scrape interval (1 s, for a short test) are rewritten; the compose-only self-scrape job
is left out. The server is the real app over real HTTP with a fake engine that takes a little
time per token; a load over three adapters (one through an alias) and more concurrent clients
than admission holds (so some get 429) runs across several scrapes. Then, through Prometheus'
HTTP API: the per-adapter series are there, the gateway's series carry the names clients sent,
and every PromQL query in the Grafana dashboard (deploy/grafana/dashboards/*.json) is accepted
and returns data; the per-adapter ones return a series for every adapter of the load.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import loramux.registry as reg
from loramux.server.engines.base import GenerationRequest
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter
from loramux.support.ports import listening_ports

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "deploy"))
from deploy_support import DEPLOY, require_tool
from fake_engine import FakeEngine, LiveServers, build_runtime

BASE = "fake-base"
SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
ADAPTERS = ["sql-helper", "chat-bot", "summ"]
MODELS = ["sql-helper:prod", "chat-bot", "summ@1"]  # what clients send
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))


class SlowEngine(FakeEngine):
    """Answers a token every 20 ms, so requests overlap and admission fills."""

    async def generate(self, request: GenerationRequest):
        async for delta in super().generate(request):
            await asyncio.sleep(0.02)
            yield delta


class Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        config = yaml.safe_load(SCRAPE_CONFIG.read_text())
        jobs = [job for job in config["scrape_configs"] if job["job_name"] == "loramux"]
        assert jobs, f"{SCRAPE_CONFIG} has no `loramux` job"
        for static in jobs[0]["static_configs"]:
            static["targets"] = [target]
        # The compose secret (an operator's key, for a server with --api-keys) as a local file.
        if "authorization" in jobs[0]:
            (tmp / "metrics-key").write_text("sk-prometheus-operator-key")
            jobs[0]["authorization"]["credentials_file"] = str(tmp / "metrics-key")
        config["scrape_configs"] = jobs
        config["global"] = {**config.get("global", {}), "scrape_interval": "1s",
                            "evaluation_interval": "1s"}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [require_tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", "--web.listen-address=127.0.0.1:0",
             "--log.level=warn"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            ports = listening_ports(self.proc.pid)
            if ports and httpx.get(f"http://127.0.0.1:{ports[0]}/-/ready").status_code == 200:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (tmp / "prometheus.log").read_text()[-2000:]
                raise RuntimeError(f"prometheus did not start: {tail}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{ports[0]}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result of an instant query; an error (bad PromQL, unknown function) fails."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (promql, body)
        return body["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def stack(tmp_path: Path):
    """(server url, Prometheus scraping it) with the adapters in the registry."""
    registry = reg.open(tmp_path / "registry")
    for i, name in enumerate(ADAPTERS):
        registry.push(write_adapter(tmp_path / name, SHAPES, rank=2, seed=i), name,
                      alias="prod" if name == "sql-helper" else None)
    registry.close()
    settings = ServerSettings.from_sources({"base": BASE, "max_pending": 4}, environ={})
    servers = LiveServers()
    url = servers.start(build_runtime(settings, tmp_path / "registry", tmp_path / "cache",
                                      SlowEngine()))
    prometheus = Prometheus(tmp_path, url.removeprefix("http://"))
    yield url, prometheus
    prometheus.stop()
    servers.close()


def run_load(url: str, seconds: float, clients: int = 6) -> list[int]:
    """`clients` threads sending streamed chats round the models for `seconds`."""
    statuses: list[int] = []
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = k
            while time.monotonic() < stop:
                body = {"model": MODELS[i % len(MODELS)], "max_tokens": 4, "stream": True,
                        "messages": [{"role": "user", "content": "hi"}]}
                with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    r.read()
                    statuses.append(r.status_code)
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def dashboard_queries() -> list[str]:
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in DASHBOARDS:
        walk(json.loads(path.read_text()))
    return exprs


def test_prometheus_scrapes_the_server_and_answers_every_dashboard_query(stack) -> None:
    url, prometheus = stack
    assert DASHBOARDS and dashboard_queries(), "the dashboard JSON has no queries"
    deadline = time.monotonic() + 30
    while not prometheus.query('up{job="loramux"} == 1'):
        assert time.monotonic() < deadline, "Prometheus never scraped the server"
        time.sleep(0.2)
    statuses = run_load(url, seconds=6)
    assert 200 in statuses and 429 in statuses, "some served, some refused by admission"
    time.sleep(2.5)  # two more scrapes see the load's final counts

    for name in ADAPTERS:
        series = prometheus.query(f'loramux_requests_total{{adapter="{name}",status="200"}}')
        assert series and float(series[0]["value"][1]) > 0, name
        assert prometheus.query(f'loramux_time_to_first_token_seconds_count{{adapter="{name}"}}')
    lora = prometheus.query("vllm:lora_requests_info")
    assert lora, "the gateway's LoRA gauge reached Prometheus"
    latest = max(lora, key=lambda series: float(series["value"][1]))  # as the picker does
    running = set(latest["metric"]["running_lora_adapters"].split(","))
    assert set(MODELS) <= running, running

    for expr in dashboard_queries():
        result = prometheus.query(expr)
        assert result, f"no data for the dashboard query {expr}"
        if "by (adapter" in expr:
            adapters = {series["metric"].get("adapter") for series in result}
            refused_only = 'status="429"' in expr  # refused before the adapter is known
            expected = {"__other__"} if refused_only else set(ADAPTERS)
            assert expected <= adapters, (expr, adapters)
