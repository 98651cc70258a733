"""The shared test/bench helpers: race-free child servers and random adapters peft can load."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest

from loramux.support.adapters import filler_shapes, llama_shapes, write_adapter
from loramux.support.launch import ChildServer, RegistryProcess
from loramux.support.ports import listening_ports

TOKENS = {"LORAMUX_REGISTRY_TOKENS": "tok-write-token:write"}


def test_parallel_children_get_their_own_ports(tmp_path: Path) -> None:
    """Four registry servers started at once: four ports, each answered by its own child."""
    servers = [RegistryProcess(tmp_path / f"r{i}", tmp_path / f"r{i}.log", env=TOKENS)
               for i in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            urls = list(pool.map(lambda s: s.start(), servers))
        assert len(set(urls)) == 4
        for server in servers:
            assert listening_ports(server.proc.pid) == [server.port]
            assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    finally:
        for server in servers:
            server.stop()


class _Stranger(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_port_held_by_someone_else_is_never_taken_for_the_child(tmp_path: Path) -> None:
    """The old race: the port handed to the child was taken meanwhile by a server that answers
    200. The launcher must not call the child ready; the child fails to bind and that is said."""
    stranger = HTTPServer(("127.0.0.1", 0), _Stranger)
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    port = stranger.server_address[1]
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        child = ChildServer([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                             str(port)], tmp_path / "child.log", port, timeout_s=30)
        with pytest.raises(RuntimeError, match="exited"):
            child.start()
    finally:
        stranger.shutdown()


_PARENT = """
import sys, time
from pathlib import Path
from loramux.support.launch import ChildServer
child = ChildServer([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
                    Path(sys.argv[1]), ready_path="/", timeout_s=60)
with child:
    print(child.proc.pid, flush=True)
    time.sleep(600)
"""


def test_sigterm_to_the_parent_stops_its_servers(tmp_path: Path) -> None:
    """A benchmark or demo ended by SIGTERM (a CI timeout, `kill PID`) stops the servers it
    started instead of leaving them running (it used to: SIGTERM's default skips every `with`)."""
    import psutil

    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "child.log")],
                              stdout=subprocess.PIPE, text=True)
    server = None
    try:
        server = psutil.Process(int(parent.stdout.readline()))
        assert server.is_running()
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) != 0
        psutil.wait_procs([server], timeout=30)
        assert not server.is_running(), "the server outlived the process that started it"
    finally:
        parent.kill()
        if server is not None and server.is_running():
            server.kill()


def test_child_that_never_listens_times_out(tmp_path: Path) -> None:
    child = ChildServer([sys.executable, "-c", "import time; time.sleep(60)"],
                        tmp_path / "sleep.log", timeout_s=2, name="sleeper")
    with pytest.raises(RuntimeError, match="sleeper not ready after 2s"):
        child.start()
    assert child.proc is not None and child.proc.poll() is not None


def test_listening_ports_of_this_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert s.getsockname()[1] in listening_ports(__import__("os").getpid())


def test_random_adapter_loads_in_peft_with_every_weight(tmp_path: Path) -> None:
    """Keys and shapes are exactly peft's: loading reports nothing missing or unexpected, and
    the loaded weights are the written ones."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2}
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, **cfg))
    folder = write_adapter(tmp_path / "a", llama_shapes(cfg), rank=4, seed=3, dtype="bfloat16")
    written = load_file(folder / "adapter_model.safetensors")
    assert len(written) == 2 * 7 * 2
    assert all(t.dtype == torch.bfloat16 for t in written.values())
    peft_model = PeftModel.from_pretrained(model, folder)
    loaded = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(written)
    for key, tensor in written.items():
        module, kind = key.rsplit(".lora_", 1)
        got = loaded[f"{module}.lora_{kind.replace('.weight', '.default.weight')}"]
        assert torch.equal(got.to(torch.bfloat16), tensor)
    other = load_file(write_adapter(tmp_path / "b", llama_shapes(cfg), rank=4, seed=4)
                      / "adapter_model.safetensors")
    assert not torch.equal(other[next(iter(other))], written[next(iter(other))].float())


def test_filler_adapter_has_the_asked_size_and_pushes(tmp_path: Path) -> None:
    import loramux.registry as reg

    folder = write_adapter(tmp_path / "big", filler_shapes(4, rank=64), rank=64)
    size = (folder / "adapter_model.safetensors").stat().st_size
    assert 3.5 * 2**20 < size < 4.5 * 2**20
    registry = reg.open(tmp_path / "registry")
    try:
        assert registry.push(folder, "big").version == 1
    finally:
        registry.close()
