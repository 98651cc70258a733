"""A fast fake engine behind the real server: real app, real HTTP on loopback, real registry and
adapter manager; only the engine and the tokenizer are fakes.

For tests of what the server decides around the engine (keys, scopes, budgets, admission,
errors), where the real vLLM engine would spend minutes starting and add nothing. The engine
answers `max_tokens` words per choice at once, or holds every request at a gate until the test
opens it, so "N requests are in flight" is a fact the test waits for, never a sleep.

    runtime = build_runtime(settings, registry_dir, tmp_path / "cache")
    with LiveServer(create_app(runtime)) as url: ...
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import loramux.registry as reg
from loramux.server import compat
from loramux.server.adapters import AdapterManager, AdapterManagerOptions
from loramux.server.admission import Admission
from loramux.server.auth import KeyStore
from loramux.server.engines.base import AdapterHandle, Delta, EngineInfo, GenerationRequest
from loramux.server.handlers import Handlers
from loramux.server.hub_refs import HubReferences
from loramux.server.metrics import Metrics
from loramux.server.models import ServingModels
from loramux.server.resolver import Resolver
from loramux.server.settings import ServerSettings
from loramux.support.ports import InProcessServer

WORD = " tok"


class FakeTokenizer:
    """One token per character: prompt lengths a test can compute by hand."""

    def apply_chat_template(self, messages, **_: Any) -> list[int]:
        return [ord(c) for m in messages for c in f"<{m['role']}>{m['content']}"]

    def __call__(self, text: str, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


class FakeEngine:
    """Answers `max_tokens` tokens per choice (at most `answer_tokens`, when set: an answer that
    ends early). `hold()` makes requests wait at a gate (a threading.Event, so a test thread can
    open it) until `release()`; `wait_held(n)` returns once n requests are waiting there."""

    def __init__(self, max_model_len: int = 4096, answer_tokens: int | None = None) -> None:
        self.info = EngineInfo("fake", "fake-base", "none", max_model_len, 8, 64, 1)
        self.answer_tokens = answer_tokens
        self._gate = threading.Event()
        self._gate.set()
        self._held = 0
        self._cond = threading.Condition()
        self.served: list[str | None] = []  # the adapter digest of each request, in order
        self.loaded: dict[int, AdapterHandle] = {}
        # Set by a test: `load_adapter` takes the slot, then raises this (a partial load), and
        # `check_health` raises `health_error`.
        self.load_error: Exception | None = None
        self.health_error: Exception | None = None
        self.load_attempts = 0

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def wait_held(self, n: int, timeout: float = 30) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._held >= n, timeout):
                raise TimeoutError(f"{self._held} requests held, expected {n}")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.served.append(request.adapter.digest if request.adapter else None)
        if not self._gate.is_set():
            with self._cond:
                self._held += 1
                self._cond.notify_all()
            try:
                await asyncio.to_thread(self._gate.wait)
            finally:
                with self._cond:
                    self._held -= 1
        limit = request.sampling.max_tokens
        tokens = min(limit, self.answer_tokens) if self.answer_tokens is not None else limit
        for i in range(request.sampling.n):
            for t in range(tokens):
                last = t == tokens - 1
                yield Delta(i, WORD, [t + 1], ("length" if tokens == limit else "stop")
                            if last else None)

    async def abort(self, request_id: str) -> None:
        pass

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        self.load_attempts += 1
        self.loaded[adapter.lora_id] = adapter
        if self.load_error is not None:
            raise self.load_error

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        self.loaded.pop(adapter.lora_id, None)

    async def check_health(self) -> None:
        if self.health_error is not None:
            raise self.health_error

    async def restart(self) -> None:
        pass

    def shutdown(self) -> None:
        self.release()


class FakeRuntime:
    """What `create_app` needs of `runtime.Runtime`, built around a fake engine and tokenizer
    (the real Runtime loads a real base model)."""

    def __init__(self, settings: ServerSettings, engine: FakeEngine, registry_dir: Path,
                 cache_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.keys = KeyStore(settings.api_keys, clock=clock)
        self.engine = engine
        self.metrics = Metrics(settings.max_adapter_labels)
        self.registry = reg.open(registry_dir)
        self.adapters = AdapterManager(engine, self.registry, self.metrics,
                                       AdapterManagerOptions(cache_dir=cache_dir))
        resolver = Resolver(self.registry, settings.name, ttl_s=settings.resolve_ttl_s,
                            hub=HubReferences.from_patterns(settings.hub_allow, None))
        self.models = ServingModels(self.registry, resolver, self.adapters,
                                    compat.ServedBase(None, "none", settings.max_lora_rank),
                                    self.metrics, settings.base)
        self.handlers = Handlers(engine, FakeTokenizer(), self.models, self.metrics,
                                 Admission(settings.max_pending, self.metrics),
                                 max_prompt_chars=settings.max_prompt_chars)

    async def engine_health(self) -> None:
        await self.engine.check_health()

    def engine_state(self) -> dict[str, object]:
        return {"engine": "fake", "server_pid": os.getpid(), "engine_pid": None,
                "base_model_loads": 1}

    async def restart_engine(self) -> dict[str, object]:
        return self.engine_state()

    def close(self) -> None:
        self.engine.shutdown()
        self.registry.close()


def build_runtime(settings: ServerSettings, registry_dir: Path, cache_dir: Path,
                  engine: FakeEngine | None = None,
                  clock: Callable[[], float] = time.monotonic) -> FakeRuntime:
    return FakeRuntime(settings, engine or FakeEngine(), registry_dir, cache_dir, clock)


class LiveServer:
    """uvicorn serving `app` in a thread on a free loopback port: real HTTP, in this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                     lifespan="on")
        self.running: InProcessServer | None = None
        self.url = ""

    def __enter__(self) -> str:
        self.running = InProcessServer(self.config)
        self.url = self.running.url
        return self.url

    def __exit__(self, *_: object) -> None:
        if self.running is not None:
            self.running.stop()


class LiveServers:
    """The live servers one test starts (a fixture yields a starter and calls `close` after)."""

    def __init__(self) -> None:
        self._running: list[LiveServer] = []

    def start(self, runtime: FakeRuntime) -> str:
        """Serve `runtime`'s app; its URL."""
        from loramux.server.app import create_app

        server = LiveServer(create_app(runtime))
        url = server.__enter__()
        self._running.append(server)
        return url

    def close(self) -> None:
        for server in self._running:
            server.__exit__()
