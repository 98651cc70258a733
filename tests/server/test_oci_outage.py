"""`loramux serve` reading through a registry whose blobs live in an OCI registry that goes down:
the request that needs the adapter's bytes is a 503 registry_unavailable (never remembered as
the adapter's failure), and the same server answers it once the OCI registry is back on the same
port, with no restart of either loramux process. Real parts: docker-registry, `loramux registry
serve --blobs oci://…`, `loramux serve` on the transformers reference engine."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

import loramux.registry as reg
from loramux.support.adapters import llama_shapes, write_adapter
from loramux.support.launch import RegistryProcess, ServerProcess
from loramux.support.oci_registry import OciRegistry

sys.path.append(str(Path(__file__).resolve().parents[1] / "support"))
from oci_registry import require_docker_registry

ADMIN = "sk-oci-admin"
HELLO = [{"role": "user", "content": "Hello!"}]


def test_oci_outage_is_503_registry_unavailable_and_recovers(demo_base: Path,
                                                             tmp_path: Path) -> None:
    require_docker_registry()
    oci = OciRegistry(tmp_path / "oci")
    oci.start()
    with reg.open(tmp_path / "registry", blobs=oci.location("serve/blobs")) as store:
        folder = write_adapter(tmp_path / "adapters" / "oci-a", llama_shapes(demo_base),
                               seed=901, b_std=0.5)
        store.push(folder, "oci-a", base_model=demo_base)
    (tmp_path / "keys.txt").write_text(f"{ADMIN} admin\n")
    # the registry root remembers its OCI blob store: no --blobs needed to serve it again
    registry = RegistryProcess(tmp_path / "registry", tmp_path / "registry.log",
                               ["--anonymous-read"])
    server = ServerProcess(
        ["--base", str(demo_base), "--engine", "transformers", "--quantization", "none",
         "--registry", registry.start(), "--api-keys", str(tmp_path / "keys.txt"),
         "--cache-dir", str(tmp_path / "cache"), "--max-model-len", "256",
         "--resolve-ttl-s", "3600", "--adapter-failure-ttl-s", "3600"], log=tmp_path / "s.log")
    try:
        http = httpx.Client(base_url=server.start(), timeout=120,
                            headers={"Authorization": f"Bearer {ADMIN}"})

        def chat() -> httpx.Response:
            return http.post("/v1/chat/completions", json={
                "model": "oci-a", "messages": HELLO, "max_tokens": 4, "temperature": 0})

        oci.stop()
        down = chat()
        assert down.status_code == 503, down.text
        error = down.json()["error"]
        assert (error["type"], error["code"]) == ("service_unavailable", "registry_unavailable")
        assert "registry" in error["message"] and int(down.headers["retry-after"]) > 0

        oci.start()  # the same port; neither loramux process restarts
        back = chat()
        assert back.status_code == 200, f"the outage was remembered: {back.text}"
        assert back.headers["x-loramux-adapter-ref"] == "oci-a@1"
        http.close()
    finally:
        server.stop()
        registry.stop()
        oci.stop()
