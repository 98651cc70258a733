"""Faults a server holding many tenants' adapters must survive, injected into real parts: a real
registry process (`loramux registry serve`) killed and restarted, a cache disk that is really
full (a small tmpfs: mounted here as root, else in the server's own user and mount namespace,
which needs no privileges), a cache file really damaged on disk, an adapter with NaN weights, a
client that hangs up mid-stream, and a server killed with SIGKILL under load.

The registry, disk and damage faults are the server's own logic around the engine, so they run
against a server on the transformers reference engine (it starts in seconds); the faults that
reach the engine (NaN weights, a stream cut mid-token, SIGKILL with vLLM's engine core running)
use vLLM: the shared session server where it can, a server of their own where it is killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

import loramux.registry as reg
from loramux.server.adapter_files import folder_damage
from loramux.support.adapters import llama_shapes, write_adapter
from loramux.support.launch import RegistryProcess, ServerProcess
from loramux.support.scrape import metric_sum

sys.path.append(str(Path(__file__).resolve().parents[1] / "support"))
import services  # tests/support/services.py: lookups, skip or fail

ADMIN = "sk-faults-admin"
USER_KEY = "sk-user-test"  # the session server's user key (tests/server/conftest.py)
HELLO = [{"role": "user", "content": "Hello!"}]
NAMES = ("fa-registry", "fa-disk", "fa-damaged", "fa-nan", "fa-ok")


def push_adapters(root: Path, base: Path, names=NAMES, seed: int = 700) -> Path:
    """A local registry with one random adapter per name; `fa-nan`'s weights hold NaNs."""
    store = reg.open(root / "registry")
    shapes = llama_shapes(base)
    for i, name in enumerate(names):
        folder = write_adapter(root / "adapters" / name, shapes, seed=seed + i, b_std=0.5)
        if name.endswith("-nan"):
            poison_with_nan(folder)
        store.push(folder, name, base_model=base)
    store.close()
    return root / "registry"


def poison_with_nan(folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    first = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[first][0, 0] = float("nan")
    save_file(tensors, str(path))


# Run by `unshare -Urm`: mount a tmpfs of SIZE on FOLDER in the new mount namespace, then exec
# the command (the server keeps its pid, so its /proc/PID/root shows the tmpfs to the test).
IN_NAMESPACE = 'mount -t tmpfs -o "size=$0" tmpfs "$1" && shift && exec "$@"'


def small_disk(folder: Path, size: str) -> tuple[str | None, list[str], str]:
    """A small real file system (tmpfs) as the cache disk: ``("mount", [], "")`` where mounting
    here works (root); else ``("userns", PREFIX, "")``, PREFIX making the server mount it in a
    user and mount namespace of its own (no privileges needed, where the kernel allows
    unprivileged user namespaces); else ``(None, [], why)``."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True, text=True, timeout=30)
        if done.returncode == 0:
            return "mount", [], ""
        why = " ".join(done.stderr.split()) or f"mount exited {done.returncode}"
    except OSError as exc:
        why = f"mount: {exc}"
    unshare = services.find("unshare")
    if unshare is None:
        return None, [], f"{why}; {services.describe('unshare')} (util-linux)"
    prefix = [unshare, "-Urm", "sh", "-c", IN_NAMESPACE, size, str(folder)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode == 0:
        return "userns", prefix, ""
    return None, [], f"{why}; unshare -Urm (user namespace): {' '.join(probe.stderr.split())}"


class Faulty:
    """A reference-engine server whose registry runs as a process of its own."""

    def __init__(self, root: Path, registry: RegistryProcess, server: ServerProcess,
                 disk: str | None, disk_problem: str) -> None:
        self.root, self.registry, self.server = root, registry, server
        self.disk, self.disk_problem = disk, disk_problem  # small_disk's answer
        self.cache = root / "cache"
        if disk == "userns":  # the tmpfs is in the server's mount namespace: seen through it
            self.cache = Path(f"/proc/{server.proc.pid}/root") / self.cache.relative_to("/")
        self.http = httpx.Client(base_url=server.url, timeout=120,
                                 headers={"Authorization": f"Bearer {ADMIN}"})

    def chat(self, model: str, **extra) -> httpx.Response:
        return self.http.post("/v1/chat/completions", json={
            "model": model, "messages": HELLO, "max_tokens": 6, "temperature": 0, **extra})

    def metric(self, name: str) -> float:
        return metric_sum(self.http.get("/metrics").text, name)

    def manifest(self, name: str):
        with reg.open(self.root / "registry") as store:
            return store.resolve(name)

    def folders(self) -> list[str]:
        """What is in the cache's adapter folder, hidden (partial) entries included."""
        return sorted(p.name for p in (self.cache / "sha256").iterdir())


@pytest.fixture(scope="module")
def faulty(demo_base: Path, tmp_path_factory) -> Faulty:
    root = tmp_path_factory.mktemp("faults")
    registry_dir = push_adapters(root, demo_base)
    disk, in_namespace, disk_problem = small_disk(root / "cache", "16m")
    (root / "keys.txt").write_text(f"{ADMIN} admin\n")
    registry = RegistryProcess(registry_dir, root / "registry.log", ["--anonymous-read"])
    registry_url = registry.start()
    # --resolve-ttl-s: references stay resolved, so a fault meets the fetch, not the lookup;
    # --adapter-failure-ttl-s: a failure that were remembered would still be answered at the end.
    server = ServerProcess(
        ["--base", str(demo_base), "--engine", "transformers", "--quantization", "none",
         "--registry", registry_url, "--api-keys", str(root / "keys.txt"),
         "--cache-dir", str(root / "cache"), "--max-model-len", "256",
         "--resolve-ttl-s", "3600", "--adapter-failure-ttl-s", "3600"], log=root / "server.log")
    server.cmd = [*in_namespace, *server.cmd]
    faulty: Faulty | None = None
    try:
        server.start()
        faulty = Faulty(root, registry, server, disk, disk_problem)
        yield faulty
    finally:
        server.stop()
        if faulty is not None:
            faulty.registry.stop()  # a test may have replaced it (a restart on the same port)
        registry.stop()
        if disk == "mount":  # a namespace's tmpfs goes with the server
            subprocess.run(["umount", "-l", str(root / "cache")], check=False)


def assert_503(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", code), error
    assert int(response.headers["retry-after"]) > 0


def test_registry_down_mid_fetch_is_503_and_recovers_without_restart(faulty: Faulty) -> None:
    resolved = faulty.http.post("/v1/adapters/unload", json={"model": "fa-registry"})
    assert resolved.status_code == 200, resolved.text  # resolved now, not fetched yet
    misses = faulty.metric("loramux_adapter_cache_misses_total")
    faulty.registry.proc.kill()
    faulty.registry.proc.wait()

    assert_503(faulty.chat("fa-registry"), "registry_unavailable")
    assert faulty.metric("loramux_adapter_cache_misses_total") == misses + 1, \
        "the outage must meet the fetch (the reference stayed resolved)"
    assert faulty.chat("demo-base").status_code == 200, "the base does not need the registry"

    port = faulty.registry.port
    faulty.registry = RegistryProcess(faulty.root / "registry", faulty.root / "registry-2.log",
                                      ["--anonymous-read"], port=port)
    faulty.registry.start()
    answer = faulty.chat("fa-registry")
    assert answer.status_code == 200, f"an outage was remembered like a bad adapter: {answer.text}"


def test_full_cache_disk_is_503_leaves_nothing_half_written_and_recovers(faulty: Faulty) -> None:
    if faulty.disk is None:  # neither root nor unprivileged user namespaces: root cannot fix it
        services.unavailable("tmpfs", f"a small tmpfs as the cache disk: {faulty.disk_problem}",
                             root_can_fix=False)
    assert os.statvfs(faulty.cache).f_blocks * os.statvfs(faulty.cache).f_frsize <= 16 << 20, \
        f"the cache disk is not the small tmpfs ({faulty.disk}): the filler would fill a real disk"
    free = os.statvfs(faulty.cache).f_bavail * os.statvfs(faulty.cache).f_frsize
    filler = faulty.cache / "filler"
    with filler.open("wb") as out:  # leave less room than the adapter needs
        out.write(b"\0" * max(0, free - 32 * 1024))
    before = faulty.folders()
    try:
        assert_503(faulty.chat("fa-disk"), "adapter_cache_full")
        assert faulty.folders() == before, "a half-written adapter folder was left behind"
    finally:
        filler.unlink()
    answer = faulty.chat("fa-disk")
    assert answer.status_code == 200, f"a full disk was remembered: {answer.text}"
    digest = faulty.manifest("fa-disk").digest
    assert digest.split(":")[1] in faulty.folders()


def test_a_file_size_limit_is_a_full_cache_not_a_registry_failure(demo_base: Path,
                                                                  tmp_path: Path) -> None:
    """EFBIG (the server's RLIMIT_FSIZE here; also a file system's largest file) is the cache
    disk refusing a write, as ENOSPC and EDQUOT are: 503 adapter_cache_full, never blamed on
    the registry (it was a 503 registry_unavailable before server.adapter_cache.DISK_FULL)."""
    prlimit = shutil.which("prlimit")
    assert prlimit is not None, "prlimit (util-linux) is missing"
    registry_dir = push_adapters(tmp_path, demo_base, names=("fa-big",))
    weights = tmp_path / "adapters" / "fa-big" / "adapter_model.safetensors"
    limit = 256 << 10  # above the server's log and everything it writes at start
    assert weights.stat().st_size > 2 * limit
    (tmp_path / "keys.txt").write_text(f"{ADMIN} admin\n")
    with RegistryProcess(registry_dir, tmp_path / "registry.log", ["--anonymous-read"]) as url:
        server = ServerProcess(
            ["--base", str(demo_base), "--engine", "transformers", "--quantization", "none",
             "--registry", url, "--api-keys", str(tmp_path / "keys.txt"),
             "--cache-dir", str(tmp_path / "cache"), "--max-model-len", "256"],
            log=tmp_path / "server.log")
        server.cmd = [prlimit, f"--fsize={limit}", "--", *server.cmd]
        with server as served, httpx.Client(base_url=served, timeout=120, headers={
                "Authorization": f"Bearer {ADMIN}"}) as http:
            answer = http.post("/v1/chat/completions", json={
                "model": "fa-big", "messages": HELLO, "max_tokens": 2, "temperature": 0})
            assert_503(answer, "adapter_cache_full")
            assert http.get("/health").status_code == 200


def test_damaged_cache_file_is_fetched_again_never_loaded(faulty: Faulty) -> None:
    first = faulty.chat("fa-damaged")
    assert first.status_code == 200, first.text
    unloaded = faulty.http.post("/v1/adapters/unload", json={"model": "fa-damaged"})
    assert unloaded.json()["unloaded"] is True, unloaded.text  # its folder stays on disk
    manifest = faulty.manifest("fa-damaged")
    folder = faulty.cache / "sha256" / manifest.digest.split(":")[1]
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # tensor bytes, not the header: it still loads, with other weights
    weights.write_bytes(bytes(data))
    assert folder_damage(folder, manifest) is not None

    again = faulty.chat("fa-damaged")
    assert again.status_code == 200, again.text
    assert folder_damage(folder, manifest) is None, "the damaged file is still in the cache"
    entry = next(e for e in manifest.files if e.path == "adapter_model.safetensors")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == entry.sha256
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert faulty.metric("loramux_adapter_cache_damaged_total") == 1


def test_nan_adapter_fails_alone_in_a_shared_batch(faulty: Faulty) -> None:
    """The reference engine samples a batch of adapters in one call: a NaN adapter in it would
    fail every request of the batch. It is refused at load, so only its own requests fail."""
    models = ["fa-nan", "fa-ok", "demo-base", "fa-ok", "demo-base", "fa-nan"]
    with ThreadPoolExecutor(len(models)) as pool:  # same settings: one batch where they meet
        answers = list(pool.map(lambda m: faulty.chat(m, temperature=1.0, seed=None), models))
    for model, answer in zip(models, answers, strict=True):
        if model == "fa-nan":
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == "adapter_unavailable"
            assert "not finite" in answer.json()["error"]["message"]
        else:
            assert answer.status_code == 200, (model, answer.text)
    assert faulty.http.get("/health").status_code == 200


# -- the engine side: vLLM ---------------------------------------------------------------------

@pytest.mark.slow
def test_nan_adapter_on_vllm_fails_alone(server) -> None:
    with reg.open(server.registry_dir) as store:
        folder = write_adapter(server.adapters / "fault-nan", llama_shapes(server.base), seed=9)
        poison_with_nan(folder)
        store.push(folder, "fault-nan", base_model=server.base)
    http = httpx.Client(base_url=server.url, timeout=300,
                        headers={"Authorization": f"Bearer {USER_KEY}"})
    models = ["fault-nan", "rand-1", "demo-base", "fault-nan"]

    def ask(model: str) -> httpx.Response:
        return http.post("/v1/chat/completions", json={
            "model": model, "messages": HELLO, "max_tokens": 4, "temperature": 1.0})

    with ThreadPoolExecutor(len(models)) as pool:
        answers = list(pool.map(ask, models))
    for model, answer in zip(models, answers, strict=True):
        expected = 400 if model == "fault-nan" else 200
        assert answer.status_code == expected, (model, answer.text)
    assert http.get("/health").status_code == 200


@pytest.mark.slow
def test_stream_cut_mid_token_releases_admission_and_lease(server) -> None:
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    body = {"model": "rand-3", "messages": HELLO, "max_tokens": 480, "stream": True,
            "ignore_eos": True, "temperature": 0}
    with httpx.Client(base_url=server.url, timeout=300, headers=headers) as client, \
            client.stream("POST", "/v1/chat/completions", json=body) as stream:
        assert stream.status_code == 200
        tokens = 0
        for line in stream.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                tokens += bool(delta.get("content"))
            if tokens == 3:
                # Checked inside the loop: leaving it drops httpx's line iterator, which closes
                # the connection (that is the hang-up this test is about).
                assert server.metric("loramux_requests_in_flight") >= 1
                assert server.metric("loramux_adapter_leases") >= 1
                break
        assert tokens == 3, "the stream ended before three tokens"
    # The connection is closed mid-stream; the server notices at its next write.
    deadline = 60.0
    wait_until(lambda: server.metric("loramux_requests_in_flight") == 0
               and server.metric("loramux_adapter_leases") == 0, deadline,
               "admission slot or adapter lease not released after the client hung up")


def wait_until(condition, limit_s: float, message: str) -> None:
    """Poll `condition` (a bound against hanging, not a claim about speed)."""
    import time

    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, message
        time.sleep(0.2)


SERVER_THAT_FORKS = """
import multiprocessing, sys, time
from loramux.server.engines import lifetime
lifetime.mark_server()  # what VllmEngine does before vLLM forks its engine core
child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,))
child.start()
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_forked_engine_process_dies_with_its_killed_server() -> None:
    """The kernel-level half of the SIGKILL test below, in seconds: a process forked by the
    server (as vLLM forks its engine core) is killed with it, however the server died."""
    import sys

    server = subprocess.Popen([sys.executable, "-c", SERVER_THAT_FORKS], stdout=subprocess.PIPE,
                              text=True)
    child = psutil.Process(int(server.stdout.readline()))
    server.kill()
    server.wait()
    with contextlib.suppress(psutil.TimeoutExpired):
        child.wait(60)
    alive = _running(child)
    if alive:
        child.kill()
    assert not alive, "the forked process outlived its SIGKILLed parent"


@pytest.mark.slow
def test_sigkill_under_load_orphans_nothing_and_restart_reclaims_the_cache(
        demo_base: Path, tmp_path: Path) -> None:
    registry_dir = push_adapters(tmp_path, demo_base, ("k-0", "k-1", "k-2"), seed=900)
    cache = tmp_path / "cache"
    args = ["--base", str(demo_base), "--registry", str(registry_dir), "--cache-dir", str(cache),
            "--max-model-len", "256"]
    victim = ServerProcess(args, log=tmp_path / "victim.log")
    url = victim.start()
    engine = httpx.get(f"{url}/v1/admin/engine", timeout=30).json()["engine_pid"]
    assert engine is not None, "vLLM runs its engine core in a process of its own"
    children = psutil.Process(victim.proc.pid).children(recursive=True)
    streaming = {m: threading.Event() for m in ("k-0", "k-1", "demo-base", "k-2")}

    def load(model: str) -> None:
        body = {"model": model, "messages": HELLO, "max_tokens": 200, "stream": True,
                "ignore_eos": True}
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                              timeout=120) as r:
                for _ in r.iter_lines():
                    streaming[model].set()
        except httpx.HTTPError:
            pass  # the server is killed under us: expected

    threads = [threading.Thread(target=load, args=(m,), daemon=True)
               for m in ("k-0", "k-1", "demo-base", "k-2")]
    for t in threads:
        t.start()
    # Killed while adapters' requests stream, so their folders are complete in the cache.
    assert all(streaming[m].wait(180) for m in ("k-0", "k-1")), "no adapter request streamed"
    victim.proc.kill()
    victim.proc.wait()
    try:
        _, alive = psutil.wait_procs(children, timeout=60)
        alive = [p for p in alive if _running(p)]
        assert not alive, f"processes outlived the killed server: {[p.pid for p in alive]}"
    finally:
        for p in children:
            if _running(p):
                p.kill()

    with reg.open(registry_dir) as store:  # every complete folder is exactly its adapter
        for folder in (cache / "sha256").iterdir():
            if not folder.name.startswith("."):
                manifest = next(m for m in (store.resolve(n) for n in ("k-0", "k-1", "k-2"))
                                if m.digest.endswith(folder.name))
                assert folder_damage(folder, manifest) is None, folder
    hex_ = next(iter((cache / "sha256").glob("[0-9a-f]*"))).name
    leftover = cache / "sha256" / f".{hex_}.partial-killed"  # what a fetch cut by a kill leaves
    leftover.mkdir()
    (leftover / "adapter_model.safetensors").write_bytes(b"half")
    # The restart checks the cache at start, which is the engine-independent part: the
    # reference engine starts in seconds where a second vLLM would take a minute.
    again = ServerProcess([*args, "--engine", "transformers", "--quantization", "none"],
                          log=tmp_path / "again.log")
    url = again.start()
    try:
        assert not [p for p in (cache / "sha256").iterdir() if ".partial-" in p.name]
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "k-1", "messages": HELLO, "max_tokens": 3})
        assert answer.status_code == 200, answer.text
    finally:
        again.stop()


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
