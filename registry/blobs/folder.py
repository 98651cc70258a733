"""The folder blob store (the default): ``blobs/sha256/<hex>``, the OCI image-layout path.

A blob only ever appears under its name complete and verified: bytes go to a temp file in
``tmp/`` (same filesystem), are fsynced and hashed, and are renamed into place. A crash leaves at
most a temp file, which ``gc`` removes. Writers hold the store's shared lock while they work and
``gc`` takes it exclusively, so gc never deletes a blob a push is about to reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from loramux.registry.blobs.lock import StoreLock
from loramux.registry.digests import (
    CHUNK,
    copy_file_hashed,
    hex_of,
    sha256_file,
    start_writeback,
)
from loramux.registry.errors import IntegrityError, NotFound, TooLarge
from loramux.registry.sources import open_regular

log = logging.getLogger(__name__)
_HEX = frozenset("0123456789abcdef")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """One blob being written: feed it, then ``commit`` (verify + rename) or ``abort``."""

    def __init__(self, store: FolderBlobStore, max_bytes: int | None, what: str) -> None:
        self._store = store
        self._max = max_bytes
        self._what = what
        fd, name = tempfile.mkstemp(dir=store.tmp, prefix=f"{os.getpid()}-", suffix=".part")
        self.fd: int | None = fd
        self.temp = Path(name)
        self._hash = hashlib.sha256()
        self._fed = self._flushed = 0

    def check(self, size: int) -> None:
        if self._max is not None and size > self._max:
            raise TooLarge(f"{self._what} is larger than the limit of {self._max} bytes")

    def copy_from_file(self, src: Path) -> tuple[str, int]:
        """Copy a file of the folder being pushed: a regular file, never through a link."""
        fd = open_regular(src)
        try:
            return copy_file_hashed(fd, self._fd(), check=self.check)
        finally:
            os.close(fd)

    def feed(self, chunk: bytes | bytearray) -> None:
        """Incremental writing, for bodies that arrive in pieces (HTTP uploads)."""
        self._fed += len(chunk)
        self.check(self._fed)
        self._hash.update(chunk)
        with memoryview(chunk) as view:
            done = 0
            while done < len(view):
                done += os.write(self._fd(), view[done:])
        if self._fed - self._flushed >= CHUNK:
            start_writeback(self._fd(), self._flushed, self._fed - self._flushed)
            self._flushed = self._fed

    def finish(self, expected: str) -> tuple[str, int]:
        """Commit what was fed, refusing it unless it hashes to ``expected``."""
        hex_ = self._hash.hexdigest()
        self.commit(hex_, self._fed, expected)
        return hex_, self._fed

    def _fd(self) -> int:
        if self.fd is None:
            raise RuntimeError("blob writer already finished")
        return self.fd

    def commit(self, hex_: str, size: int, expected: str | None = None) -> str:
        """Check against ``expected`` (the announced digest), fsync, rename into place."""
        if expected is not None and hex_of(expected) != hex_:
            self.abort()
            raise IntegrityError(
                f"uploaded bytes hash to sha256:{hex_}, not {expected}: blob refused"
            )
        final = self._store.path(hex_)
        if final.is_file() and final.stat().st_size == size:
            # Already stored (and made durable then): identical content costs no disk flush.
            # Rotten copies are not trusted forever: ``verify`` moves them out of the way.
            self.abort()
            return hex_
        fd = self._fd()
        os.fsync(fd)
        os.fchmod(fd, 0o444)
        os.close(fd)
        self.fd = None
        os.replace(self.temp, final)
        _fsync_dir(final.parent)
        log.debug("stored blob sha256:%s (%d bytes)", hex_, size)
        return hex_

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.temp.unlink(missing_ok=True)


class _Writers(Protocol):
    def writer(self, *, max_bytes: int | None = None, what: str = "blob") -> BlobWriter: ...


class BlobUpload:
    """A blob arriving in pieces over HTTP: it holds the store's shared lock from the first
    byte to ``close`` (so gc waits), and becomes a blob only if it hashes to its digest."""

    def __init__(
        self, store: _Writers, lock: StoreLock, digest: str, *, max_bytes: int,
        size: int | None = None,
    ) -> None:
        if size is not None and size > max_bytes:
            raise TooLarge(f"blob of {size} bytes is larger than the limit of {max_bytes} bytes")
        self.digest = digest
        self._held = lock.shared()
        self._held.__enter__()
        try:
            self._writer = store.writer(max_bytes=max_bytes, what=f"upload {digest[:19]}…")
        except BaseException:
            self._held.__exit__(None, None, None)
            raise

    def check(self, size: int) -> None:
        """Raise TooLarge if ``size`` bytes are over the limit (the caller counts)."""
        self._writer.check(size)

    def feed(self, chunk: bytes | bytearray) -> None:
        self._writer.feed(chunk)

    def finish(self) -> tuple[str, int]:
        """Verify and store what was fed; returns (hex, size). Raises IntegrityError."""
        return self._writer.finish(self.digest)

    def close(self) -> None:
        """Drop what was not stored and release the lock (a no-op for the stored blob)."""
        self._writer.abort()
        self._held.__exit__(None, None, None)


def ingest(w: BlobWriter, src: Path) -> tuple[str, int]:
    """Copy ``src`` through writer ``w`` (any store's) and commit it; nothing is left behind
    when it fails. Returns (hex, size) of what was stored."""
    try:
        hex_, size = w.copy_from_file(src)
        w.commit(hex_, size)
    except BaseException:
        w.abort()
        raise
    return hex_, size


class FolderBlobStore:
    """Blobs as files in ``root``: reads hand out the file itself (the caller hashes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.quarantine = root / "quarantine" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        hex_ = hex_of(digest)
        if len(hex_) != 64 or not set(hex_) <= _HEX:
            raise NotFound(f"no blob {digest!r}")
        return self.dir / hex_

    def __repr__(self) -> str:
        return f"FolderBlobStore({str(self.root)!r})"

    @staticmethod
    def holds_blobs(root: Path) -> bool:
        """True if ``root`` has a folder store with at least one blob in it."""
        folder = root / "blobs" / "sha256"
        return folder.is_dir() and any(folder.iterdir())

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def local_path(self, digest: str) -> Path:
        """The file holding the blob, to send as is. Raises NotFound."""
        path = self.path(digest)
        if not path.is_file():
            raise NotFound(f"blob {digest} is not in the store")
        return path

    @contextlib.contextmanager
    def local_files(self, hexes: Iterable[str]) -> Iterator[dict[str, Path]]:
        """Files holding these blobs, for reading while the context lasts (no copies here)."""
        yield {hex_: self.path(hex_) for hex_ in hexes}

    def hash_stored(self, hex_: str) -> tuple[str, int] | None:
        """(hex, size) of the bytes stored under ``hex_``; None if there are none."""
        try:
            return sha256_file(self.path(hex_))
        except FileNotFoundError:
            return None

    def ping(self) -> None:
        """A folder is always there (its absence shows as NotFound on each blob)."""

    def close(self) -> None:
        pass

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None

    def writer(self, *, max_bytes: int | None = None, what: str = "blob") -> BlobWriter:
        return BlobWriter(self, max_bytes, what)

    def ingest_file(self, src: Path, *, max_bytes: int | None = None) -> tuple[str, int]:
        """Copy a local file in; returns (hex, size) of what was stored."""
        return ingest(self.writer(max_bytes=max_bytes, what=str(src)), src)

    def quarantine_if_corrupt(self, hex_: str) -> str | None:
        """Move a blob whose bytes no longer match its name out of the way; say what it held."""
        path = self.path(hex_)
        try:
            actual, _ = sha256_file(path)
        except FileNotFoundError:
            return None
        if actual == hex_:
            return None
        self.quarantine.mkdir(parents=True, exist_ok=True)
        target = self.quarantine / f"{hex_}.{actual[:12]}"
        os.replace(path, target)
        return f"content hashes to sha256:{actual}; moved to {target.relative_to(self.root)}"

    def all_hex(self) -> list[str]:
        return [p.name for p in self.dir.iterdir() if len(p.name) == 64 and set(p.name) <= _HEX]

    def temp_files(self) -> list[Path]:
        return list(self.tmp.iterdir())

    def remove(self, hex_: str) -> int:
        path = self.path(hex_)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def drop_artifact(self, digest: str) -> bool:
        """A folder store keeps no OCI artifacts: nothing to drop."""
        return False
