"""The resolver plugin for stock vLLM (server/vllm_resolver.py).

Unit tests drive the resolver's logic against real registries (a local store, and the HTTP server
through its client) without vLLM. The slow test starts vLLM's own OpenAI server, unmodified, with
only the plugin's environment, and asks it for registry references with the real openai client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from lying_registry import lying_in_front_of
from registry_support import flip_byte, make_base, write_adapter

import loramux.registry as reg
from loramux.registry import IntegrityError, InvalidName, NotFound, base_fingerprint
from loramux.server.adapter_cache import DEFAULT_MAX_CACHE_BYTES, AdapterCache
from loramux.server.errors import (
    AdapterTooLarge,
    CacheFull,
    IncompatibleAdapter,
    RegistryAnswerRefused,
    RegistryUnavailable,
)
from loramux.server.vllm_resolver import (
    ENV_VLLM_BASE_FINGERPRINT,
    ENV_VLLM_CACHE_DIR,
    ENV_VLLM_MAX_CACHE_BYTES,
    ENV_VLLM_REGISTRY,
    ENV_VLLM_TOKEN,
    RegistryResolver,
    ResolverSettings,
    lora_int_id,
)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The served base, and another one that differs in its weights only."""
    root = tmp_path_factory.mktemp("bases")
    return make_base(root / "served", seed=0), make_base(root / "other", seed=1)


@pytest.fixture
def pushed(backend, adapters, bases):
    """``pets`` 1 (alias prod) and 2 for the served base; ``alien`` for the other base."""
    served, other = bases
    v1 = backend.registry.push(adapters["a"], "pets", alias="prod", base_model=served)
    v2 = backend.registry.push(adapters["b"], "pets", base_model=served)
    alien = backend.registry.push(adapters["c8"], "alien", base_model=other)
    return v1, v2, alien


def resolver(backend, tmp_path: Path, **settings) -> RegistryResolver:
    return RegistryResolver(ResolverSettings("unused", cache_dir=tmp_path / "cache", **settings),
                            registry=backend.registry)


def test_every_reference_form_resolves_to_its_digest(backend, pushed, bases, tmp_path) -> None:
    v1, v2, _ = pushed
    core = resolver(backend, tmp_path)
    expected = {"pets": v2, "pets@1": v1, "pets:prod": v1, f"pets@{v2.digest[:19]}": v2,
                f"pets@{v1.digest}": v1, "pets:latest": v2}
    for ref, manifest in expected.items():
        found = core.resolve(str(bases[0]), ref)
        assert found is not None and found.manifest.digest == manifest.digest, ref
        assert found.lora_name == ref
        assert found.lora_int_id == lora_int_id(manifest.digest) > 0
        assert found.path.name == manifest.digest.removeprefix("sha256:")
        assert sorted(p.name for p in found.path.iterdir()) == sorted(
            f.path for f in manifest.files)
    assert lora_int_id(v1.digest) != lora_int_id(v2.digest)
    # Not a loramux reference at all: other resolvers may have it.
    assert core.resolve(str(bases[0]), "Org/Some-Adapter") is None


def test_adapter_for_another_base_is_refused_with_the_reason(backend, pushed, bases,
                                                              tmp_path) -> None:
    core = resolver(backend, tmp_path)
    with pytest.raises(IncompatibleAdapter, match="trained for another base model") as refused:
        core.resolve(str(bases[0]), "alien")
    assert refused.value.status == 400
    assert "differs in weights" in refused.value.message  # the component that differs
    assert not list((tmp_path / "cache" / "sha256").iterdir()), "refused before any download"
    # The same check against a fingerprint given instead of a folder.
    given = resolver(backend, tmp_path, base_fingerprint=base_fingerprint(bases[1]))
    assert given.resolve("some/hub-model", "alien") is not None
    with pytest.raises(IncompatibleAdapter, match="another base"):
        given.resolve("some/hub-model", "pets")


def test_adapter_without_fingerprint_is_refused(backend, adapters, bases, tmp_path) -> None:
    backend.registry.push(adapters["a"], "blind")  # its config names no local base folder
    with pytest.raises(IncompatibleAdapter, match="records no base fingerprint"):
        resolver(backend, tmp_path).resolve(str(bases[0]), "blind")


@pytest.mark.parametrize("ref", ["ghost", "pets@9", "pets:canary", "pets@sha256:abcdef123456"])
def test_unknown_reference_is_404_with_the_reason(backend, pushed, bases, tmp_path, ref) -> None:
    with pytest.raises(NotFound, match="is not in the loramux registry") as refused:
        resolver(backend, tmp_path).resolve(str(bases[0]), ref)
    assert refused.value.status == 404


def test_flipped_byte_is_caught_and_nothing_is_cached(backend, pushed, bases, tmp_path) -> None:
    v1 = pushed[0]
    flip_byte(backend.blob_data(v1.file("adapter_model.safetensors").sha256))
    with pytest.raises(IntegrityError, match="failed its digest check"):
        resolver(backend, tmp_path).resolve(str(bases[0]), "pets@1")
    assert [p.name for p in (tmp_path / "cache" / "sha256").iterdir()] == []


def test_damaged_cache_folder_is_fetched_again(backend, pushed, bases, tmp_path) -> None:
    core = resolver(backend, tmp_path)
    first = core.resolve(str(bases[0]), "pets@1")
    weights = first.path / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.chmod(0o644)
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # rot on the cache disk
    again = resolver(backend, tmp_path).resolve(str(bases[0]), "pets@1")  # a new process
    assert again.path == first.path and weights.read_bytes() == good


def test_registry_answering_another_version_is_502(adapters, bases, tmp_path) -> None:
    """A real registry server behind a proxy that asks it for pets@2 whatever the client asked
    (tests/registry/lying_registry.py): the resolver's registry client refuses the answer for a
    pinned reference (Registry.resolve), and the plugin says so as a 502, never serving it."""
    served, _ = bases
    with reg.open(tmp_path / "store") as store:
        v1 = store.push(adapters["a"], "pets", base_model=served)
        v2 = store.push(adapters["b"], "pets", base_model=served)
    with lying_in_front_of(tmp_path / "store", tmp_path / "registry.log") as proxy:
        proxy.ask_instead = lambda ref: "pets@2"
        core = RegistryResolver(ResolverSettings(proxy.url, cache_dir=tmp_path / "c"))
        assert core.resolve(str(served), "pets").manifest == v2  # a moving reference
        for ref in ("pets@1", f"pets@{v1.digest[:19]}"):
            with pytest.raises(RegistryAnswerRefused, match="answered pets@2") as refused:
                core.resolve(str(served), ref)
            assert refused.value.status == 502
    fetched = [p.name for p in (tmp_path / "c" / "sha256").iterdir()]
    assert fetched == [v2.digest.removeprefix("sha256:")], "only the moving reference's answer"


def test_registry_down_or_token_refused_is_503(backend, pushed, bases, tmp_path) -> None:
    closed = ResolverSettings("http://127.0.0.1:9", cache_dir=tmp_path / "cache")
    with pytest.raises(RegistryUnavailable, match=r"cannot answer for `pets`.*RemoteError") as e:
        RegistryResolver(closed).resolve(str(bases[0]), "pets")
    assert e.value.status == 503
    if backend.server is not None:
        wrong = replace(closed, registry=backend.server.url, token="not-a-token")
        with pytest.raises(RegistryUnavailable, match="Unauthorized"):
            RegistryResolver(wrong).resolve(str(bases[0]), "pets")


def _on_disk(cache: Path) -> int:
    return sum(f.stat().st_size for f in (cache / "sha256").rglob("*") if f.is_file())


def test_cache_stays_within_its_byte_budget(backend, pushed, bases, tmp_path) -> None:
    """security round 2, item 15: a client naming adapter after adapter cannot fill the disk.
    Folders nobody holds (an earlier run's) are trimmed to make room; the adapters this vLLM
    serves stay held, so once they fill the budget a new one is a 503 and nothing is written."""
    v1, v2, _ = pushed
    cache = tmp_path / "cache"
    AdapterCache(cache).fetch(backend.registry, v2)  # left behind by an earlier run
    budget = max(v1.size, v2.size) + min(v1.size, v2.size) // 2  # room for one adapter
    core = resolver(backend, tmp_path, max_cache_bytes=budget)
    assert core.resolve(str(bases[0]), "pets@1").manifest == v1
    assert [p.name for p in (cache / "sha256").iterdir()] == [v1.digest.removeprefix("sha256:")]
    with pytest.raises(CacheFull, match=r"adapter cache is full.*LORAMUX_VLLM_MAX_CACHE_BYTES") \
            as refused:
        core.resolve(str(bases[0]), "pets@2")
    assert (refused.value.status, refused.value.code) == (503, "adapter_cache_full")
    assert _on_disk(cache) == v1.size <= budget
    assert core.resolve(str(bases[0]), "pets:prod").manifest == v1, "held: no new room needed"
    # Another process sharing the folder sees pets@1 held by this one: it stays.
    other = resolver(backend, tmp_path, max_cache_bytes=budget)
    with pytest.raises(CacheFull):
        other.resolve(str(bases[0]), "pets@2")
    assert _on_disk(cache) <= budget


def test_adapter_larger_than_the_whole_budget_is_refused(backend, pushed, bases,
                                                         tmp_path) -> None:
    v1 = pushed[0]
    core = resolver(backend, tmp_path, max_cache_bytes=v1.size - 1)
    with pytest.raises(AdapterTooLarge, match=f"{v1.size} bytes, more than") as refused:
        core.resolve(str(bases[0]), "pets@1")
    assert refused.value.status == 400
    assert _on_disk(tmp_path / "cache") == 0
    assert resolver(backend, tmp_path, max_cache_bytes=v1.size).resolve(
        str(bases[0]), "pets@1").manifest == v1, "exactly the budget fits"


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    assert ResolverSettings.from_env({}) is None  # the plugin stays off
    store = tmp_path / "store"
    store.mkdir()
    env = {ENV_VLLM_REGISTRY: str(store), ENV_VLLM_TOKEN: "t",
           ENV_VLLM_CACHE_DIR: str(tmp_path / "c"), ENV_VLLM_BASE_FINGERPRINT: "sha256:" + "a" * 64}
    assert ResolverSettings.from_env(env) == ResolverSettings(
        str(store), "t", tmp_path / "c", "sha256:" + "a" * 64, DEFAULT_MAX_CACHE_BYTES)
    assert ResolverSettings.from_env({**env, ENV_VLLM_MAX_CACHE_BYTES: "1048576"}) == \
        ResolverSettings(str(store), "t", tmp_path / "c", "sha256:" + "a" * 64, 2**20)
    for bad, why in (({ENV_VLLM_REGISTRY: str(tmp_path / "nowhere")}, "neither an http"),
                     ({ENV_VLLM_REGISTRY: "s3://bucket"}, "unknown registry URL scheme"),
                     ({**env, ENV_VLLM_BASE_FINGERPRINT: "sha256:zz"}, "invalid digest"),
                     ({**env, ENV_VLLM_MAX_CACHE_BYTES: "8GiB"}, "not a positive number"),
                     ({**env, ENV_VLLM_MAX_CACHE_BYTES: "0"}, "not a positive number")):
        with pytest.raises(InvalidName, match=why):
            ResolverSettings.from_env(bad)


def test_vllm_gets_a_lora_request_or_the_reason(backend, pushed, bases, tmp_path, caplog,
                                                 monkeypatch) -> None:
    """Through vLLM's own resolver interface: a refusal is vLLM's GracefulHTTPError, which its
    API server turns into an error response carrying our message and status, and a WARNING in
    the server's log."""
    from vllm.exceptions import GracefulHTTPError

    from loramux.server import vllm_resolver as module
    from loramux.server.vllm_resolver import vllm_resolver

    # In a vLLM server the plugin hands the `loramux` logger to vLLM's handlers (propagate off);
    # in this test process that would hide every later test's loramux records from caplog.
    monkeypatch.setattr(module, "_follow_vllm_logging", lambda: None)

    plugin = vllm_resolver(ResolverSettings("unused", cache_dir=tmp_path / "cache"),
                           backend.registry)
    request = asyncio.run(plugin.resolve_lora(str(bases[0]), "pets:prod"))
    assert (request.lora_name, request.lora_int_id) == ("pets:prod", lora_int_id(pushed[0].digest))
    assert Path(request.lora_path).name == pushed[0].digest.removeprefix("sha256:")
    with caplog.at_level(logging.WARNING, logger="loramux"), \
            pytest.raises(GracefulHTTPError, match="trained for another base") as refused:
        asyncio.run(plugin.resolve_lora(str(bases[0]), "alien"))
    assert refused.value.http_status == 400
    assert "loramux resolver refused `alien` (HTTP 400)" in caplog.text
    assert asyncio.run(plugin.resolve_lora(str(bases[0]), "not/ours")) is None


# -- stock vLLM ------------------------------------------------------------------------------

READER, WRITER = "vllm-reader-token", "ci-writer-token"


def _stock_vllm(demo_base: Path, registry_url: str, root: Path):
    from loramux.support.launch import ChildServer

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(demo_base),
           "--served-model-name", "demo-base", "--host", "127.0.0.1", "--port", "0",
           "--enable-lora", "--max-loras", "2", "--max-cpu-loras", "8", "--max-lora-rank", "8",
           "--max-model-len", "256", "--max-num-seqs", "4", "--dtype", "bfloat16",
           "--seed", "0", "--disable-log-stats"]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", ENV_VLLM_REGISTRY: registry_url,
           ENV_VLLM_TOKEN: READER, ENV_VLLM_CACHE_DIR: str(root / "vllm-cache"),
           "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false",
           "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           # No working directory on sys.path: a source checkout's stale *.egg-info there
           # would hide the installed entry points (the plugin) from importlib.metadata.
           "PYTHONSAFEPATH": "1"}
    return ChildServer(cmd, root / "vllm.log", env=env, timeout_s=600, name="vllm serve")


@pytest.mark.slow
def test_stock_vllm_serves_registry_references(demo_base: Path, tmp_path: Path) -> None:
    import httpx
    import openai

    from loramux.registry import RemoteRegistry
    from loramux.support.launch import RegistryProcess

    store = tmp_path / "registry"
    tokens = {"LORAMUX_REGISTRY_TOKENS": f"{READER}:read:vllm,{WRITER}:write:ci"}
    registry = RegistryProcess(store, tmp_path / "registry.log", env=tokens)
    url = registry.start()
    folders = {seed: write_adapter(tmp_path / f"src-{seed}", seed=seed, hidden=256, layers=4,
                                   modules=("q_proj", "o_proj")) for seed in (1, 2, 3)}
    with RemoteRegistry(url, token=WRITER) as client:
        v1 = client.push(folders[1], "pets", alias="prod", base_model=demo_base)
        v2 = client.push(folders[2], "pets", base_model=demo_base)
        client.push(folders[1], "alien", base_fingerprint="sha256:" + "ab" * 32)
        rotten = client.push(folders[3], "rotten", base_model=demo_base)
    flip_byte(store / "blobs" / "sha256" / rotten.file("adapter_model.safetensors").sha256)

    vllm = _stock_vllm(demo_base, url, tmp_path)
    try:
        vllm_url = vllm.start()
        client = openai.OpenAI(base_url=f"{vllm_url}/v1", api_key="unused", max_retries=0,
                               timeout=120)

        def complete(model: str) -> str:
            answer = client.completions.create(model=model, prompt="The cat sat on the",
                                               max_tokens=8, temperature=0)
            assert answer.model == model
            return answer.choices[0].text

        # The oracle: vLLM loading the source folders itself, no registry involved.
        for name, seed in (("direct-1", 1), ("direct-2", 2)):
            loaded = httpx.post(f"{vllm_url}/v1/load_lora_adapter", timeout=120,
                                json={"lora_name": name, "lora_path": str(folders[seed])})
            assert loaded.status_code == 200, loaded.text
        one, two = complete("direct-1"), complete("direct-2")
        assert one != two, "the two adapters must answer differently for this test to mean much"

        assert complete("pets") == two
        assert complete("pets@1") == one
        assert complete("pets:prod") == one
        assert complete(f"pets@{v2.digest}") == two
        assert complete(f"pets@{v1.digest[:19]}") == one
        listed = {m.id for m in client.models.list().data}
        assert {"pets", "pets@1", "pets:prod", f"pets@{v2.digest}"} <= listed

        with pytest.raises(openai.BadRequestError, match="trained for another base model"):
            complete("alien")
        with pytest.raises(openai.NotFoundError, match="is not in the loramux registry"):
            complete("pets@7")
        with pytest.raises(openai.UnprocessableEntityError, match="failed its digest check"):
            complete("rotten")

        registry.proc.kill()  # the registry goes down: a reason, then recovery without restart
        registry.proc.wait()
        with pytest.raises(openai.InternalServerError, match="registry cannot answer") as down:
            complete("pets@2")
        assert down.value.status_code == 503
        registry = RegistryProcess(store, tmp_path / "registry-2.log", env=tokens,
                                   port=registry.port)
        registry.start()
        assert complete("pets@2") == two

        assert os.path.isdir(tmp_path / "vllm-cache" / "sha256" / v1.digest[7:])
    finally:
        vllm.stop()
        registry.stop()
