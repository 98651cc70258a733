"""The adapter cache of `loramux serve` and of the vLLM resolver plugin: adapter folders on
local disk, keyed by adapter digest, filled from the registry.

``root/sha256/<hex>/`` is a complete, verified adapter folder (peft and vLLM load it as is) or
does not exist. Many threads and processes may ask for the same adapter at once: the first
takes a per-digest ``flock`` and downloads, the others block on the lock and then find the
folder. A crashed download leaves only a ``.partial-`` folder that the next fetch of the same
digest (or a `sweep`) removes. Hits take no lock at all: the folder appears by an atomic rename.

Sharing one folder between processes (several servers, a server and a stock vLLM with the resolver
plugin) is safe by design, with no per-process subfolders: a consumer that needs a folder to stay
*holds* it (`hold`/`release`), which is a shared ``flock`` on ``locks/<hex>.use``. Removal
(`remove`, `trim`) takes that lock exclusively without waiting, so it skips any folder that some
thread or process holds, and waits for no one. The kernel drops the locks of a process that
dies, so a crash never pins a folder forever. Every process counts the same bytes: `trim` scans
the folder itself (sizes, and mtimes as last use), including what earlier runs left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loramux.registry.base import Registry
from loramux.registry.digests import hex_of, sha256_file
from loramux.registry.manifest import Manifest
from loramux.registry.refs import validate_digest
from loramux.registry.transfer import materialize

log = logging.getLogger(__name__)
# A write that failed because the cache's disk cannot take it: no space, the user's quota, or a
# file-size limit (RLIMIT_FSIZE, the file system's largest file). The server's condition, a 503
# adapter_cache_full, never the registry's or the adapter's fault.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# The byte budget of a cache folder unless told otherwise (`loramux serve --max-cache-bytes`,
# LORAMUX_VLLM_MAX_CACHE_BYTES): what one client can make a server or a vLLM write to disk.
DEFAULT_MAX_CACHE_BYTES = 8 * 2**30


@dataclass(frozen=True)
class CacheEntry:
    digest: str
    path: Path
    size_bytes: int
    last_used: float


@dataclass(frozen=True)
class TrimResult:
    total_bytes: int  # on disk after trimming
    removed: tuple[str, ...]  # digests removed, oldest first
    held: tuple[str, ...]  # digests that would have gone but are held (here or elsewhere)


class AdapterCache:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()
        self.dir = self.root / "sha256"
        self.locks = self.root / "locks"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.locks.mkdir(parents=True, exist_ok=True)
        self._holds: dict[str, tuple[int, int]] = {}  # digest -> (fd with LOCK_SH, count)
        self._holds_lock = threading.Lock()

    def path(self, digest: str) -> Path:
        return self.dir / hex_of(validate_digest(digest, full=True))

    def _lock_file(self, digest: str, kind: str) -> int:
        return os.open(self.locks / f"{hex_of(digest)}.{kind}", os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        fd = self._lock_file(digest, "lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # own descriptor: excludes threads and processes
            yield
        finally:
            os.close(fd)

    def hold(self, digest: str) -> None:
        """Keep ``digest``'s folder from being removed (by anyone) until `release`.

        Take it before fetching, so nothing can remove the folder between its download and its
        use. Holds nest; blocks only while a removal of this very digest is under way.
        """
        validate_digest(digest, full=True)
        with self._holds_lock:
            fd, count = self._holds.get(digest, (-1, 0))
            if count == 0:
                fd = self._lock_file(digest, "use")
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                except BaseException:
                    os.close(fd)
                    raise
            self._holds[digest] = (fd, count + 1)

    def release(self, digest: str) -> None:
        """Undo one `hold`; the last one marks the folder used now (for LRU) and unlocks it."""
        with self._holds_lock:
            fd, count = self._holds[digest]
            if count > 1:
                self._holds[digest] = (fd, count - 1)
                return
            del self._holds[digest]
            with contextlib.suppress(OSError):
                os.utime(self.path(digest))
            os.close(fd)

    def held(self) -> set[str]:
        """The digests this instance holds (other instances' and processes' holds not shown)."""
        with self._holds_lock:
            return set(self._holds)

    def get(self, digest: str) -> Path | None:
        """The cached folder for ``digest`` if present (and mark it used), else None."""
        path = self.path(digest)
        if not path.is_dir():
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for LRU eviction
        return path

    def fetch(self, registry: Registry, manifest: Manifest) -> Path:
        """A local folder holding ``manifest``'s adapter, downloading it at most once.

        The folder may be removed by a `trim` as soon as this returns unless it is held.
        """
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
            # No fsync: the registry holds the durable copy, and a folder found in the cache is
            # re-hashed by `fetch_verified` before use, so one torn by a power cut is fetched
            # again. Syncing cost a cold adapter ~3.5 ms of its first token (a 5 MB adapter).
            path = materialize(manifest, registry.open_blob, self.path(manifest.digest),
                               fsync=False)
            log.info(
                "cached %s (%s, %d bytes) in %.2fs",
                manifest.ref, manifest.digest, manifest.size, time.perf_counter() - started,
            )
            return path

    def fetch_verified(self, registry: Registry, manifest: Manifest) -> tuple[Path, str | None]:
        """`fetch`, checking a folder that was already on disk against the manifest first.

        A fresh download was verified as it was written; a folder found in the cache may have
        been damaged on disk since, so it is checked, moved aside when damaged and fetched anew.
        Returns the folder and what was damaged (None: nothing was).
        """
        was_cached = self.path(manifest.digest).is_dir()
        path = self.fetch(registry, manifest)
        damage = folder_damage(path, manifest) if was_cached else None
        if damage is None:
            return path, None
        log.error("cached adapter %s (%s) is damaged (%s): moved aside, fetching it again",
                  manifest.ref, manifest.digest[:19], damage)
        discard(path)
        return self.fetch(registry, manifest), damage

    def remove(self, digest: str) -> bool:
        """Drop one adapter unless it is absent or held; True when it was removed.

        A consumer that already opened its files keeps reading them.
        """
        with self._locked(digest):
            path = self.path(digest)
            if not path.is_dir():
                return False
            fd = self._lock_file(digest, "use")
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # held by a thread or process: it stays
                trash = path.with_name(f".{path.name}.partial-removing-{os.getpid()}")
                os.rename(path, trash)  # disappears atomically for new fetches
                shutil.rmtree(trash, ignore_errors=True)
                return True
            finally:
                os.close(fd)

    def trim(self, max_bytes: int, keep: Iterable[str] = ()) -> TrimResult:
        """Remove least recently used folders until at most ``max_bytes`` remain on disk.

        Held folders and those in ``keep`` stay even when that leaves the cache over budget:
        the caller decides what to release (the result says what was in the way).
        """
        keep = set(keep)
        entries = self.entries()
        total = sum(e.size_bytes for e in entries)
        removed: list[str] = []
        held: list[str] = []
        for entry in entries:
            if total <= max_bytes:
                break
            if entry.digest in keep:
                continue
            try:
                gone = self.remove(entry.digest)
            except OSError as exc:
                log.warning("could not remove cached adapter %s: %s", entry.path, exc)
                continue
            if gone:
                total -= entry.size_bytes
                removed.append(entry.digest)
            elif entry.path.is_dir():
                held.append(entry.digest)
            else:  # removed by another process meanwhile
                total -= entry.size_bytes
        return TrimResult(total, tuple(removed), tuple(held))

    def sweep(self) -> int:
        """Remove ``.partial-`` folders that crashed fetches or removals left; returns how many.

        One whose fetch is still running (its lock taken) stays.
        """
        swept = 0
        for stale in self.dir.glob(".*.partial-*"):
            fd = self._lock_file(stale.name[1:].split(".", 1)[0], "lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            else:
                shutil.rmtree(stale, ignore_errors=True)
                swept += 1
            finally:
                os.close(fd)
        return swept

    def entries(self) -> list[CacheEntry]:
        """Complete folders on disk, least recently used first."""
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


def folder_damage(path: Path, manifest: Manifest) -> str | None:
    """What differs between a cached folder and its manifest (None: nothing)."""
    listed = {entry.path for entry in manifest.files}
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()}
    if present != listed:
        return f"files {sorted(present ^ listed)} differ from the manifest's"
    for entry in manifest.files:
        sha, size = sha256_file(path / entry.path)
        if (sha, size) != (entry.sha256, entry.size):
            return f"{entry.path} hashes to sha256:{sha[:12]}…, not {entry.digest[:19]}…"
    return None


def discard(path: Path) -> None:
    """Move a folder out of the cache's sight at once (a rename), then delete it. A reader that
    already opened its files keeps them; the name is one `AdapterCache.sweep` reclaims."""
    trash = path.with_name(f".{path.name}.partial-damaged-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
