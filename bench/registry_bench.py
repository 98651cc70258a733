"""``loramux bench registry``: the registry's resolve latency and push/pull throughput, measured.

Resolve: a store seeded with 10,000 versions across 1,000 names (``quick``: 1,000 across 100).
Seeding pushes one real adapter through ``LocalRegistry.push`` and then inserts the other
versions directly with ``Index.insert_version`` (the function the push commit itself calls) in
one transaction, each with its own digest and every name with a ``prod`` alias; only the blob
copies are skipped, which resolve never touches. Refs are a mix of ``name``, ``name@N``,
``name:prod`` and ``name@sha256:<16 hex>``, resolved locally and over loopback HTTP (the server in
its own process, keep-alive client, bearer token checked on every request). The same 10,000
versions are also seeded into a PostgreSQL 15 index (a throwaway server on loopback, see
``loramux.support.postgres``) and resolved over HTTP through ``registry serve --index``.

Throughput: a 100 MB adapter (``quick``: 10 MB) pushed and pulled, locally and over HTTP,
against ``shutil.copyfile`` of the same bytes in the same run. Two costs a plain copy does not
pay bound the registry: every byte is hashed (sha256; the machine's rate is reported), and every
blob is fsynced before the version that references it commits (so a power cut cannot leave a
visible version with unwritten bytes); ``copyfile+fsync`` is reported as the durable baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loramux.registry.digests import adapter_digest
from loramux.registry.http.auth import ENV_TOKENS
from loramux.registry.index import now, to_dt
from loramux.registry.manifest import FileEntry
from loramux.registry.store import LocalRegistry
from loramux.support.adapters import filler_shapes
from loramux.support.adapters import write_adapter as write_random
from loramux.support.launch import RegistryProcess

TOKEN = "bench-token"
TARGETS = {"local_p99_ms": 2.0, "http_p99_ms": 10.0, "http_postgresql_p99_ms": 5.0,
           "throughput_ratio": 0.5}


def write_adapter(folder: Path, *, mib: float, seed: int = 0, rank: int = 64) -> Path:
    """A valid fp32 LoRA adapter of about ``mib`` MiB."""
    return write_random(folder, filler_shapes(mib, rank), rank=rank, seed=seed, b_std=1.0,
                        base="bench/base")


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": ordered[-1] * 1e3,
            "n": len(ordered)}


def seed(store: LocalRegistry, template_dir: Path, names: int, per_name: int) -> list[str]:
    """Fill the index (see the module docstring); returns one digest per (name, version)."""
    template = store.push(template_dir, "template")
    digests = []
    with store.index.write() as tx:
        at = now()
        for n in range(names):
            name = f"adapter-{n:04d}"
            for v in range(1, per_name + 1):
                extra = FileEntry(path="README.md", size=10,
                                  sha256=hashlib.sha256(f"{name}@{v}".encode()).hexdigest())
                files = sorted([*template.files, extra], key=lambda f: f.path)
                digest = adapter_digest(files)
                manifest = template.model_copy(update={
                    "name": name, "version": v, "digest": digest, "files": files,
                    "created_at": to_dt(at), "labels": {"team": f"t{n % 10}"},
                })
                tx.insert_version(manifest)
                digests.append(digest)
            tx.put_alias(name, "prod", max(1, per_name - 1), at, "bench")
    return digests


def _refs(names: int, per_name: int, digests: list[str], count: int) -> list[str]:
    rng = random.Random(7)
    refs = []
    for _ in range(count):
        n, v = rng.randrange(names), rng.randrange(1, per_name + 1)
        name = f"adapter-{n:04d}"
        kind = rng.randrange(4)
        refs.append([name, f"{name}@{v}", f"{name}:prod",
                     f"{name}@{digests[n * per_name + v - 1][:23]}"][kind])
    return refs


def _time_calls(fn: Callable[[str], Any], refs: list[str], warmup: int = 200) -> list[float]:
    for ref in refs[:warmup]:
        fn(ref)
    samples = []
    for ref in refs:
        t = time.perf_counter()
        fn(ref)
        samples.append(time.perf_counter() - t)
    return samples


def _server(root: Path, log: Path, index: str | None = None) -> RegistryProcess:
    """``loramux registry serve`` in its own process, as in production (no shared GIL)."""
    server = RegistryProcess(root, log, args=["--log-level", "warning",
                                              *(["--index", index] if index else [])],
                             env={ENV_TOKENS: f"{TOKEN}:write:bench"}, timeout_s=30)
    server.start()
    return server


def _resolve_http(store: LocalRegistry, refs: list[str], log: Path,
                  index: str | None = None) -> dict[str, float]:
    """Resolve ``refs`` through a registry server on ``store``'s folder (and ``index``)."""
    from loramux.registry.remote import RemoteRegistry

    server = _server(store.root, log, index)
    try:
        with RemoteRegistry(server.url, token=TOKEN) as client:
            return _percentiles(_time_calls(client.resolve, refs, warmup=50))
    finally:
        server.stop()


def _resolve_postgresql(tmp: Path, template: Path, names: int, per_name: int,
                        samples: int) -> dict[str, Any]:
    """The same index on PostgreSQL, resolved over HTTP; skipped (with why) without it."""
    from loramux.support import postgres

    if not postgres.installed():
        return {"skipped": f"PostgreSQL 15 is not installed ({postgres.PG_BIN})"}
    server = postgres.PostgresServer().start()
    try:
        dsn = server.create_database()
        store = LocalRegistry(tmp / "resolve-pg-store", index=dsn)
        try:
            digests = seed(store, template, names, per_name)
        finally:
            store.close()
        refs = _refs(names, per_name, digests, samples)
        return _resolve_http(store, refs, tmp / "resolve-pg.log", dsn) | {
            "server": "PostgreSQL 15, loopback TCP, fsync off (reads only)"}
    finally:
        server.stop()


# The throughput adapters name no real base; a fixed fingerprint keeps each push from warning
# that servers would refuse it (they are never served).
BASE = "sha256:" + "b" * 64


def _throughput(tmp: Path, mib: float, reps: int) -> dict[str, Any]:
    """Each repetition pushes new content (no dedup shortcut) and pulls it back: to the local
    folder store, and to an OCI blob store (a docker-registry on loopback, filesystem storage;
    skipped with a note where it is not installed), in-process and through a registry server."""
    from loramux.registry.digests import sha256_file
    from loramux.registry.remote import RemoteRegistry
    from loramux.support.oci_registry import OciRegistry, binary

    sources = [write_adapter(tmp / f"adapter-{i}", mib=mib, seed=i) for i in range(reps)]
    nbytes = sum(p.stat().st_size for p in sources[0].iterdir())
    weights = sources[0] / "adapter_model.safetensors"

    def copy(i: int) -> None:
        shutil.copyfile(weights, tmp / f"copy-{i}")

    def copy_fsync(i: int) -> None:
        shutil.copyfile(weights, tmp / f"copyf-{i}")
        fd = os.open(tmp / f"copyf-{i}", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    store = LocalRegistry(tmp / "throughput-store")
    server = _server(tmp / "throughput-remote", tmp / "throughput-remote.log")
    client = RemoteRegistry(server.url, token=TOKEN)
    steps: dict[str, Callable[[int], Any]] = {
        "copyfile": copy,
        "copyfile+fsync": copy_fsync,
        "sha256 only": lambda i: sha256_file(sources[i] / "adapter_model.safetensors"),
        "push local": lambda i: store.push(sources[i], "big", base_fingerprint=BASE),
        "pull local": lambda i: store.pull(f"big@{i + 1}", tmp / f"pulled-{i}"),
        "push http": lambda i: client.push(sources[i], "big", base_fingerprint=BASE),
        "pull http": lambda i: client.pull(f"big@{i + 1}", tmp / f"rpulled-{i}"),
    }
    oci = OciRegistry(tmp / "oci") if binary() is not None else None
    closers: list[Callable[[], Any]] = []
    if oci is not None:
        oci.start()
        closers.append(oci.stop)
        location = oci.location("bench/throughput")
        oci_store = LocalRegistry(tmp / "throughput-oci", blobs=location)
        closers.append(oci_store.close)
        oci_server = RegistryProcess(tmp / "throughput-oci-remote", tmp / "oci-remote.log",
                                     args=["--log-level", "warning", "--blobs",
                                           oci.location("bench/throughput-http")],
                                     env={ENV_TOKENS: f"{TOKEN}:write:bench"}, timeout_s=30)
        oci_server.start()
        closers.append(oci_server.stop)
        oci_client = RemoteRegistry(oci_server.url, token=TOKEN)
        closers.append(oci_client.close)
        steps |= {
            "OCI push": lambda i: oci_store.push(sources[i], "big", base_fingerprint=BASE),
            "OCI pull": lambda i: oci_store.pull(f"big@{i + 1}", tmp / f"opulled-{i}"),
            "OCI push http": lambda i: oci_client.push(sources[i], "big2", base_fingerprint=BASE),
            "OCI pull http": lambda i: oci_client.pull(f"big2@{i + 1}", tmp / f"orpulled-{i}"),
        }
    times: dict[str, list[float]] = {label: [] for label in steps}
    try:
        for i in range(reps):  # interleaved, each from a clean page cache state
            for label, fn in steps.items():
                os.sync()  # no step pays for the write-back of the one before
                started = time.perf_counter()
                fn(i)
                times[label].append(time.perf_counter() - started)
        secs = {label: statistics.median(t) for label, t in times.items()}
    finally:
        client.close()
        server.stop()
        store.close()
        for close in reversed(closers):
            close()
    mbps = {k: nbytes / v / 1e6 for k, v in secs.items()}
    return {
        "oci": ("docker-registry (CNCF distribution) on loopback, filesystem storage in the "
                "bench's temp folder" if oci is not None else "skipped: docker-registry missing"),
        "bytes": nbytes,
        "MB_per_s": mbps,
        "ratio_vs_copyfile": {k: mbps[k] / mbps["copyfile"] for k in mbps},
        "ratio_vs_copyfile_fsync": {k: mbps[k] / mbps["copyfile+fsync"] for k in mbps},
    }


def run(quick: bool = False, out: Path | None = None, show: bool = True) -> dict[str, Any]:
    """Run the benchmark; returns (and optionally writes) the figures."""

    names, per_name = (100, 10) if quick else (1000, 10)
    samples = 2000 if quick else 20000
    http_samples = 500 if quick else 3000
    results: dict[str, Any] = {
        "quick": quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "targets": TARGETS,
    }
    with tempfile.TemporaryDirectory(prefix="loramux-bench-") as tmp_name:
        tmp = Path(tmp_name)
        store = LocalRegistry(tmp / "resolve-store")
        t = time.perf_counter()
        digests = seed(store, write_adapter(tmp / "template", mib=0.01, rank=4), names, per_name)
        results["seed"] = {"names": names, "versions": names * per_name,
                           "seconds": time.perf_counter() - t,
                           "method": "1 real push + Index.insert_version in one transaction"}
        refs = _refs(names, per_name, digests, samples)
        results["resolve_local"] = _percentiles(_time_calls(store.resolve, refs))
        try:
            results["resolve_http"] = _resolve_http(store, refs[:http_samples],
                                                    tmp / "resolve.log")
        finally:
            store.close()
        results["resolve_http_postgresql"] = _resolve_postgresql(
            tmp, tmp / "template", names, per_name, http_samples)
        results["throughput"] = _throughput(tmp, 10 if quick else 100, 3)
    results["pass"] = {
        "local_p99": results["resolve_local"]["p99_ms"] <= TARGETS["local_p99_ms"],
        "http_p99": results["resolve_http"]["p99_ms"] <= TARGETS["http_p99_ms"],
        "http_postgresql_p99": results["resolve_http_postgresql"].get("p99_ms", float("inf"))
        <= TARGETS["http_postgresql_p99_ms"],
        "push_local": results["throughput"]["ratio_vs_copyfile"]["push local"] >= 0.5,
        "pull_local": results["throughput"]["ratio_vs_copyfile"]["pull local"] >= 0.5,
    }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
    if show:
        _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="loramux bench registry" + (" (quick)" if results["quick"] else ""))
    for col in ("measure", "value", "target"):
        table.add_column(col)
    seed_info = results["seed"]
    table.add_row("index", f"{seed_info['versions']} versions / {seed_info['names']} names", "")
    for key, label, target in (("resolve_local", "resolve local", "local_p99_ms"),
                               ("resolve_http", "resolve HTTP", "http_p99_ms"),
                               ("resolve_http_postgresql", "resolve HTTP, PostgreSQL",
                                "http_postgresql_p99_ms")):
        r = results[key]
        if "skipped" in r:
            table.add_row(label, f"skipped: {r['skipped']}", f"p99 <= {TARGETS[target]} ms")
            continue
        table.add_row(f"{label} p50 / p99", f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f} ms",
                      f"p99 <= {TARGETS[target]} ms")
    tp = results["throughput"]
    for label, mbps in tp["MB_per_s"].items():
        ratio, durable = tp["ratio_vs_copyfile"][label], tp["ratio_vs_copyfile_fsync"][label]
        target = ">= 0.5 x copyfile" if label.startswith(("push", "pull")) else ""
        table.add_row(f"{label} ({tp['bytes'] / 1e6:.0f} MB)",
                      f"{mbps:.0f} MB/s ({ratio:.2f}x copy, {durable:.2f}x copy+fsync)", target)
    Console().print(table)


if __name__ == "__main__":
    run(quick=True)
