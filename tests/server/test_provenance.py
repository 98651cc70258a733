"""Provenance (issue 12): every completion, JSON or streamed, names the adapter digest that
produced it in `x-loramux-adapter-digest` (`base` when no adapter did) and the version its
`model` resolved to in `x-loramux-adapter-ref`, and the access log records both.

A mixed, concurrent load over several adapters runs while an alias moves between versions; each
response's digest must be what its `model` resolved to during the request (the alias's history
is recorded by the test, around each move) and what the engine really ran. With a fake engine
that answers with the digest it was given (fast, every run), and with the real vLLM engine,
where each version's greedy answer identifies the weights (slow).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import loramux.registry as reg
from loramux.server.app import create_app
from loramux.server.engines.base import Delta
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import FakeEngine, LiveServer, build_runtime

BASE = "fake-base"
SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
HELLO = [{"role": "user", "content": "Hello!"}]


@dataclass
class Answer:
    model: str
    started: float
    ended: float
    digest: str
    ref: str
    text: str


class AliasMover:
    """Moves `name:alias` round the given versions in a thread, recording each move as
    (began, done, version), so a test can tell which versions the alias held in any window."""

    def __init__(self, registry_dir: Path, name: str, alias: str, versions: list[int],
                 pause_s: float) -> None:
        self.registry_dir, self.name, self.alias = registry_dir, name, alias
        self.versions, self.pause_s = versions, pause_s
        self.history: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        registry = reg.open(self.registry_dir)
        i = 0
        while not self._stop.wait(self.pause_s):
            version = self.versions[i % len(self.versions)]
            began = time.monotonic()
            registry.alias_set(self.name, self.alias, version)
            self.history.append((began, time.monotonic(), version))
            i += 1
        registry.close()

    def __enter__(self) -> AliasMover:
        registry = reg.open(self.registry_dir)
        registry.alias_set(self.name, self.alias, self.versions[0])
        registry.close()
        self.history.append((0.0, time.monotonic(), self.versions[0]))
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def held(self, start: float, end: float) -> set[int]:
        """Versions the alias may have pointed to at some moment in [start, end]."""
        before = [v for began, done, v in self.history if done <= start]
        during = {v for began, done, v in self.history if began <= end and done >= start}
        return set(before[-1:]) | during


async def _ask(http: httpx.AsyncClient, model: str, stream: bool, **kw: Any) -> Answer:
    body = {"model": model, "messages": HELLO, "max_tokens": 6, "temperature": 0,
            "stream": stream} | kw
    started = time.monotonic()
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        raw = (await r.aread()).decode()
    assert r.status_code == 200, raw
    if stream:
        events = [json.loads(line[6:]) for line in raw.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    else:
        text = json.loads(raw)["choices"][0]["message"]["content"]
    return Answer(model, started, time.monotonic(), r.headers["x-loramux-adapter-digest"],
                  r.headers["x-loramux-adapter-ref"], text)


async def _load(url: str, models: list[str], rounds: int, headers: dict[str, str] | None = None,
                concurrency: int = 16) -> list[Answer]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers) as http:
        async def one(i: int) -> Answer:
            async with limit:
                return await _ask(http, models[i % len(models)], stream=i % 2 == 1)

        return list(await asyncio.gather(*(one(i) for i in range(rounds * len(models)))))


def _common(a: str, b: str) -> int:
    """Length of the common prefix."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _access_digests(caplog) -> Counter:
    return Counter(record.getMessage().rsplit("digest=", 1)[1] for record in caplog.records
                   if record.name == "loramux.access"
                   and '"POST /v1/chat/completions"' in record.getMessage())


class EchoEngine(FakeEngine):
    """Answers with the digest of the adapter it ran (or `base`): what the engine really got."""

    async def generate(self, request):
        await asyncio.sleep(0.005)  # let requests overlap
        yield Delta(0, request.adapter.digest if request.adapter else "base", [1], "stop")


def test_each_response_names_the_digest_that_served_it(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="loramux.access")
    registry = reg.open(tmp_path / "registry")
    pinned = {f"p{i}@1": registry.push(write_adapter(tmp_path / f"p{i}", SHAPES, rank=2, seed=i),
                                       f"p{i}").digest for i in range(3)}
    versions = [registry.push(write_adapter(tmp_path / f"m{v}", SHAPES, rank=2, seed=10 + v),
                              "moving") for v in range(3)]
    moving = {m.version: m.digest for m in versions}
    registry.close()
    settings = ServerSettings.from_sources({"base": BASE, "resolve_ttl_s": 0}, environ={})
    runtime = build_runtime(settings, tmp_path / "registry", tmp_path / "cache", EchoEngine())
    models = [*pinned, "moving:live", BASE, "moving:live"]
    with LiveServer(create_app(runtime)) as url, \
            AliasMover(tmp_path / "registry", "moving", "live", [1, 2, 3], 0.01) as mover:
        answers = asyncio.run(_load(url, models, rounds=15))
    served_versions = set()
    for a in answers:
        assert a.digest == a.text, f"{a.model}: header {a.digest}, engine ran {a.text}"
        if a.model == BASE:
            assert (a.digest, a.ref) == ("base", BASE)
        elif a.model in pinned:
            assert (a.ref, a.digest) == (a.model, pinned[a.model])
        else:
            version = int(a.ref.removeprefix("moving@"))
            assert a.digest == moving[version], a
            assert version in mover.held(a.started, a.ended), (a, mover.history)
            served_versions.add(version)
    assert len(mover.history) > 3 and len(served_versions) >= 2, "the alias moved mid-run"
    assert _access_digests(caplog) == Counter(a.digest for a in answers)
    lines = [r.getMessage() for r in caplog.records if r.name == "loramux.access"]
    assert lines and all(" key=anonymous " in line for line in lines), lines[:2]  # no keys set


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_digests_match_the_weights_on_vllm(server, make_adapter, tmp_path: Path) -> None:
    """On the real engine each version's greedy answer (asked alone, by pinned ref) identifies
    its weights; under a concurrent mixed load with the alias moving, every answer must be
    nearest to the one of the digest its header names."""
    from conftest import USER_KEY

    auth = {"Authorization": f"Bearer {USER_KEY}"}
    registry = server.registry()
    for v in range(3):
        registry.push(make_adapter(server.base, tmp_path / f"prov{v}", seed=300 + v), "prov",
                      base_model=server.base)
    registry.close()
    refs = ["rand-0@1", "rand-1@1", "prov@1", "prov@2", "prov@3", "demo-base"]

    async def alone() -> dict[str, Answer]:
        async with httpx.AsyncClient(base_url=server.url, timeout=600, headers=auth) as http:
            return {ref: await _ask(http, ref, stream=False) for ref in refs}

    expected = asyncio.run(alone())
    by_digest = {a.digest: a.text for a in expected.values()}
    assert len(set(by_digest.values())) == len(refs), "each version answers differently"
    ttl = 2.5  # the session server's resolve TTL (2 s), plus slack
    models = ["rand-0@1", "prov:live", "demo-base", "rand-1@1", "prov:live"]
    answers: list[Answer] = []
    with AliasMover(server.registry_dir, "prov", "live", [1, 2, 3], 0.7) as mover:
        deadline = time.monotonic() + 120
        while len({a.ref for a in answers if a.model == "prov:live"}) < 2:  # until it moved
            assert time.monotonic() < deadline, "the alias move never showed"
            answers += asyncio.run(_load(server.url, models, rounds=4, headers=auth,
                                         concurrency=8))
    for a in answers:
        if a.model == "prov:live":
            assert int(a.ref.removeprefix("prov@")) in mover.held(a.started - ttl, a.ended), a
        else:
            assert a.digest == expected[a.model].digest, a
        nearest = max(by_digest, key=lambda d: (_common(by_digest[d], a.text), d == a.digest))
        assert nearest == a.digest, (a, by_digest)
