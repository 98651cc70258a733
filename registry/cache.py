"""Pull cache for consumers: adapter folders on local disk, keyed by adapter digest.

``root/sha256/<hex>/`` is a complete, verified adapter folder (peft and vLLM load it as is) or
does not exist. Many threads and processes may ask for the same adapter at once: the first
takes a per-digest ``flock`` and downloads, the others block on the lock and then find the
folder. A crashed download leaves only a ``.partial-`` folder that the next fetch of the same
digest removes. Hits take no lock at all: the folder appears by an atomic rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loramux.registry.base import Registry
from loramux.registry.digests import hex_of
from loramux.registry.manifest import Manifest
from loramux.registry.refs import validate_digest
from loramux.registry.transfer import materialize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    digest: str
    path: Path
    size_bytes: int
    last_used: float


class AdapterCache:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()
        self.dir = self.root / "sha256"
        self.locks = self.root / "locks"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.locks.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.dir / hex_of(validate_digest(digest, full=True))

    @contextlib.contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        fd = os.open(self.locks / f"{hex_of(digest)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # own descriptor: excludes threads and processes
            yield
        finally:
            os.close(fd)

    def get(self, digest: str) -> Path | None:
        """The cached folder for ``digest`` if present (and mark it used), else None."""
        path = self.path(digest)
        if not path.is_dir():
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for LRU eviction
        return path

    def fetch(self, registry: Registry, manifest: Manifest) -> Path:
        """A local folder holding ``manifest``'s adapter, downloading it at most once."""
        hit = self.get(manifest.digest)
        if hit is not None:
            return hit
        with self._locked(manifest.digest):
            hit = self.get(manifest.digest)
            if hit is not None:
                return hit
            for stale in self.dir.glob(f".{hex_of(manifest.digest)}.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a crashed fetch
            started = time.perf_counter()
            path = materialize(manifest, registry.open_blob, self.path(manifest.digest))
            log.info(
                "cached %s (%s, %d bytes) in %.2fs",
                manifest.ref, manifest.digest, manifest.size, time.perf_counter() - started,
            )
            return path

    def remove(self, digest: str) -> bool:
        """Drop one adapter; a consumer that already opened its files keeps reading them."""
        with self._locked(digest):
            path = self.path(digest)
            if not path.is_dir():
                return False
            trash = path.with_name(f".{path.name}.partial-removing-{os.getpid()}")
            os.rename(path, trash)  # disappears atomically for new fetches
            shutil.rmtree(trash, ignore_errors=True)
            return True

    def entries(self) -> list[CacheEntry]:
        out = []
        for path in self.dir.iterdir():
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:  # another process may remove it while we look
                size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                out.append(CacheEntry(f"sha256:{path.name}", path, size, path.stat().st_mtime))
            except FileNotFoundError:
                continue
        return sorted(out, key=lambda e: e.last_used)

    def size_bytes(self) -> int:
        return sum(e.size_bytes for e in self.entries())
