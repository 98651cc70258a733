"""`loramux serve` behind a registry that lies (tests/registry/lying_registry.py): a real
`loramux registry serve`, a real proxy that asks it for pets@2 whatever the server asked, and
`loramux serve` on the transformers reference engine reading through the proxy. A pinned
reference answered with another version is a 502 `registry_answer_refused` that says what came
back, and nothing is served for it; a moving reference is the store's to point and is served."""

from __future__ import annotations

from pathlib import Path

import httpx
from lying_registry import lying_in_front_of

import loramux.registry as reg
from loramux.support.adapters import llama_shapes, write_adapter
from loramux.support.launch import ServerProcess
from loramux.wire import REF_HEADER

HELLO = [{"role": "user", "content": "Hello!"}]


def test_a_pinned_reference_answered_with_another_version_is_502(demo_base: Path,
                                                                 tmp_path: Path) -> None:
    shapes = llama_shapes(demo_base)
    with reg.open(tmp_path / "registry") as store:
        v1 = store.push(write_adapter(tmp_path / "a1", shapes, seed=11, b_std=0.5), "pets",
                        base_model=demo_base)
        store.push(write_adapter(tmp_path / "a2", shapes, seed=12, b_std=0.5), "pets",
                   base_model=demo_base)
    with lying_in_front_of(tmp_path / "registry", tmp_path / "registry.log") as proxy:
        proxy.ask_instead = lambda ref: "pets@2"
        server = ServerProcess(
            ["--base", str(demo_base), "--engine", "transformers", "--quantization", "none",
             "--registry", proxy.url, "--cache-dir", str(tmp_path / "cache"),
             "--max-model-len", "256"], log=tmp_path / "serve.log")
        with server as url, httpx.Client(base_url=url, timeout=120) as http:
            def chat(model: str) -> httpx.Response:
                return http.post("/v1/chat/completions", json={
                    "model": model, "messages": HELLO, "max_tokens": 2, "temperature": 0})

            for pinned in ("pets@1", f"pets@{v1.digest[:19]}"):
                refused = chat(pinned)
                assert refused.status_code == 502, refused.text
                error = refused.json()["error"]
                assert (error["type"], error["code"]) == ("bad_gateway",
                                                          "registry_answer_refused")
                assert f"`{pinned}`" in error["message"], error["message"]
                assert "answered pets@2" in error["message"], error["message"]
            moving = chat("pets")
            assert moving.status_code == 200, moving.text
            assert moving.headers[REF_HEADER] == "pets@2"
    assert proxy.asked[:2] == ["pets@1", f"pets@{v1.digest[:19]}"]
    assert v1.digest.removeprefix("sha256:") not in {
        p.name for p in (tmp_path / "cache").rglob("*")}, "pets@1's answer was fetched"
