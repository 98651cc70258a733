"""The server's adapter cache (server/adapter_cache.py): one download however many threads and
processes ask, against every registry backend (the registry's fixtures)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from registry_support import fetch_worker, flip_byte, folder_bytes

from loramux.registry import IntegrityError
from loramux.server.adapter_cache import AdapterCache

pytestmark = pytest.mark.timeout(180)  # processes and servers: never hang CI


class CountingRegistry:
    """Wraps a registry and counts blob downloads (slowed a little to widen the race)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.opened: list[str] = []
        self._lock = threading.Lock()

    def open_blob(self, digest: str):
        with self._lock:
            self.opened.append(digest)
        time.sleep(0.05)
        return self.inner.open_blob(digest)


def test_threads_share_one_download(backend, adapters, tmp_path: Path) -> None:
    manifest = backend.registry.push(adapters["a"], "cached")
    cache = AdapterCache(tmp_path / "cache")
    counting = CountingRegistry(backend.registry)
    results: list[Path] = []
    barrier = threading.Barrier(8)

    def fetch() -> None:
        barrier.wait()
        results.append(cache.fetch(counting, manifest))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 8 and len(set(results)) == 1
    assert sorted(counting.opened) == sorted(f.digest for f in manifest.files)  # once each
    path = results[0]
    assert path.name == manifest.digest.removeprefix("sha256:")
    assert folder_bytes(path) == folder_bytes(adapters["a"])
    # a hit is idempotent and downloads nothing
    assert cache.fetch(counting, manifest) == path
    assert len(counting.opened) == len(manifest.files)
    assert cache.size_bytes() == manifest.size
    assert [e.digest for e in cache.entries()] == [manifest.digest]


def test_processes_share_one_download(backend, adapters, tmp_path: Path) -> None:
    backend.registry.push(adapters["b"], "cached", alias="prod")
    location = str(backend.root) if backend.kind == "local" else backend.server.url
    count_file = tmp_path / "downloads.txt"
    count_file.touch()
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(4), ctx.Queue()  # all four fetch at once: real contention
    procs = [ctx.Process(target=fetch_worker, args=(location, "cached:prod", str(tmp_path / "c"),
                                                    str(count_file), start, results))
             for _ in range(4)]
    for p in procs:
        p.start()
    paths = {results.get(timeout=120) for _ in procs}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(paths) == 1
    assert len(count_file.read_text().splitlines()) == 2  # two files, downloaded once
    assert folder_bytes(Path(paths.pop())) == folder_bytes(adapters["b"])


def test_corrupt_blob_never_reaches_the_cache(backend, adapters, tmp_path: Path) -> None:
    manifest = backend.registry.push(adapters["a"], "cached")
    weights = manifest.file("adapter_model.safetensors")
    flip_byte(backend.blob_data(weights.sha256))
    cache = AdapterCache(tmp_path / "cache")
    with pytest.raises(IntegrityError, match=weights.sha256):
        cache.fetch(backend.registry, manifest)
    assert cache.get(manifest.digest) is None
    assert [p.name for p in cache.dir.iterdir()] == []  # no partial folder left
    assert cache.size_bytes() == 0

    backend.store.verify()  # quarantines the rotten blob
    if backend.oci is not None:  # distribution keeps rotten data until its own gc (contract)
        with pytest.raises(IntegrityError, match="garbage-collect"):
            backend.registry.push(adapters["a"], "cached")
        return
    backend.registry.push(adapters["a"], "cached")  # stores the bytes again
    assert folder_bytes(cache.fetch(backend.registry, manifest)) == folder_bytes(adapters["a"])


def test_remove_and_crash_leftovers(adapters, tmp_path: Path) -> None:
    from loramux.registry.store import LocalRegistry

    with LocalRegistry(tmp_path / "store") as registry:
        manifest = registry.push(adapters["a"], "cached")
        cache = AdapterCache(tmp_path / "cache")
        hex_ = manifest.digest.removeprefix("sha256:")
        stale = cache.dir / f".{hex_}.partial-crashed"
        stale.mkdir()
        (stale / "adapter_config.json").write_text("half")
        path = cache.fetch(registry, manifest)
        assert not stale.exists()
        assert cache.remove(manifest.digest) is True
        assert not path.exists() and cache.get(manifest.digest) is None
        assert cache.remove(manifest.digest) is False
        assert cache.fetch(registry, manifest) == path


def _three_cached(adapters, tmp_path: Path):
    """Three different adapters in one cache, last used in the order a, b, c."""
    from loramux.registry.store import LocalRegistry

    registry = LocalRegistry(tmp_path / "store")
    cache = AdapterCache(tmp_path / "cache")
    manifests = []
    for age, name in zip((30, 20, 10), ("a", "b", "c8"), strict=True):
        manifest = registry.push(adapters[name], name)
        path = cache.fetch(registry, manifest)
        os.utime(path, (time.time() - age,) * 2)
        manifests.append(manifest)
    return registry, cache, manifests


def test_trim_goes_lru_and_skips_held(adapters, tmp_path: Path) -> None:
    registry, cache, (a, b, c) = _three_cached(adapters, tmp_path)
    with registry:
        assert [e.digest for e in cache.entries()] == [a.digest, b.digest, c.digest]
        cache.hold(a.digest)
        cache.hold(a.digest)  # holds nest
        assert cache.remove(a.digest) is False  # held: stays
        result = cache.trim(a.size + c.size)  # a is held, so b (the next LRU) goes
        assert result.removed == (b.digest,) and result.held == (a.digest,)
        assert result.total_bytes == a.size + c.size == cache.size_bytes()
        cache.release(a.digest)
        assert cache.remove(a.digest) is False  # still held once
        cache.release(a.digest)  # the last release marks it used now: c is the LRU now
        assert cache.trim(a.size).removed == (c.digest,)
        assert cache.trim(0).removed == (a.digest,) and cache.size_bytes() == 0
        cache.hold(b.digest)  # a hold before the fetch keeps the fetched folder
        cache.fetch(registry, b)
        assert cache.trim(0).held == (b.digest,)
        cache.release(b.digest)


def test_a_hold_in_another_process_keeps_the_folder(adapters, tmp_path: Path) -> None:
    """Two processes on one folder: one's trim never removes what the other holds, and a
    holder that dies (SIGKILL) leaves nothing locked."""
    registry, cache, (a, b, _) = _three_cached(adapters, tmp_path)
    script = ("import sys; from loramux.server.adapter_cache import AdapterCache; "
              "c = AdapterCache(sys.argv[1]); c.hold(sys.argv[2]); print('held', flush=True); "
              "sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache"), a.digest],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        result = cache.trim(0)
        assert result.held == (a.digest,) and cache.get(a.digest) is not None
        assert cache.get(b.digest) is None
    finally:
        child.kill()
        child.wait(10)
    assert cache.trim(0).removed == (a.digest,)
    registry.close()


def test_sweep_removes_crash_leftovers_but_not_a_running_fetch(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path / "cache")
    running, crashed = "1" * 64, "2" * 64
    for hex_ in (running, crashed):
        (cache.dir / f".{hex_}.partial-x").mkdir()
    with cache._locked(f"sha256:{running}"):  # a fetch of `running` is under way
        assert cache.sweep() == 1
    assert [p.name for p in cache.dir.iterdir()] == [f".{running}.partial-x"]
