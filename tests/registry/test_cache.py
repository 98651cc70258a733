"""The consumers' pull cache: one download however many threads and processes ask."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from registry_support import fetch_worker, flip_byte, folder_bytes

from loramux.registry import IntegrityError
from loramux.registry.cache import AdapterCache

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
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=fetch_worker, args=(location, "cached:prod", str(tmp_path / "c"),
                                                    str(count_file), start, results))
             for _ in range(4)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let all four import and block on the event
    start.set()
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
    flip_byte(backend.root / "blobs" / "sha256" / weights.sha256)
    cache = AdapterCache(tmp_path / "cache")
    with pytest.raises(IntegrityError, match=weights.sha256):
        cache.fetch(backend.registry, manifest)
    assert cache.get(manifest.digest) is None
    assert [p.name for p in cache.dir.iterdir()] == []  # no partial folder left
    assert cache.size_bytes() == 0

    backend.store.verify()  # quarantines the rotten blob
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
