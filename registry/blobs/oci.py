"""Blobs in a repository of an OCI distribution registry (``--blobs oci://host:port/repo``).

Writes keep the folder store's rules: bytes go to a local temp file first, hashed as they
arrive, and only bytes that match their digest are uploaded (the registry checks the digest
again when the upload closes). The verified local copy stays in ``oci-stage/`` until the
version that needs it is committed, because the commit reads the adapter's config and
safetensors headers: they are then read locally, not downloaded again. Reads download into an
anonymous temp file, hashed on the way, and hand it out only when it matches: a corrupt blob is
an ``IntegrityError``, never data.

The distribution API cannot list a repository's blobs, so the store keeps a ledger
(``oci-ledger/<hex>``, one empty file per blob it has uploaded, written before the upload
starts). ``gc`` deletes (HTTP DELETE) the ledger's blobs no live version uses, under the store's
exclusive lock like the folder store; blobs uploaded through another registry root are not in
this ledger and are left alone (distribution's own ``garbage-collect`` reclaims the bytes of
every deleted blob). ``verify`` hashes the ledger's blobs and every referenced one; a corrupt
blob's bytes are saved under ``quarantine/`` and the blob is deleted from the repository, so
the next push of the same file uploads it again. A registry may keep the rotten bytes anyway
(CNCF distribution does until its garbage collection runs): that push re-hashes what the
registry serves and fails with the remedy rather than linking rotten bytes again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from loramux.registry.blobs.folder import BlobWriter, FolderBlobStore, ingest
from loramux.registry.digests import hex_of
from loramux.registry.errors import IntegrityError, NotFound
from loramux.registry.oci.client import OciClient

log = logging.getLogger(__name__)
_HEX = frozenset("0123456789abcdef")


class OciBlobWriter(BlobWriter):
    """A blob written locally (temp file, hashed), uploaded from that file on ``commit``."""

    def __init__(self, store: OciBlobStore, max_bytes: int | None, what: str) -> None:
        super().__init__(store.stage, max_bytes, what)
        self._oci = store

    def commit(self, hex_: str, size: int, expected: str | None = None) -> str:
        if expected is not None and hex_of(expected) != hex_:
            self.abort()
            raise IntegrityError(
                f"uploaded bytes hash to sha256:{hex_}, not {expected}: blob refused"
            )
        fd = self._fd()
        try:
            with os.fdopen(os.dup(fd), "rb") as source:
                source.seek(0)  # the duplicate shares the writer's offset, at the end
                self._oci.publish(hex_, size, source)
        except BaseException:
            self.abort()
            raise
        os.close(fd)
        self.fd = None
        os.replace(self.temp, self._oci.stage.path(hex_))  # kept for the commit's validation
        return hex_


class OciBlobStore:
    """The blob store in one OCI repository, with its local stage, ledger and quarantine."""

    def __init__(self, root: Path, client: OciClient) -> None:
        self.root = root
        self.client = client
        self.stage = FolderBlobStore(root / "oci-stage")
        self.tmp = self.stage.tmp
        self.ledger = root / "oci-ledger"
        self.quarantine = root / "quarantine" / "sha256"
        self.ledger.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"OciBlobStore({str(self.client.location)!r})"

    @staticmethod
    def _digest(digest: str) -> str:
        hex_ = hex_of(digest)
        if len(hex_) != 64 or not set(hex_) <= _HEX:
            raise NotFound(f"no blob {digest!r}")
        return f"sha256:{hex_}"

    # -- reads -------------------------------------------------------------------------------

    def exists(self, digest: str) -> bool:
        return self.size(digest) is not None

    def size(self, digest: str) -> int | None:
        return self.client.blob_size(self._digest(digest))

    def local_path(self, digest: str) -> Path | None:
        return None  # nothing local to send as is: the server streams ``open``

    def open(self, digest: str) -> BinaryIO:
        """The blob's bytes in an anonymous local file, verified before it is returned."""
        out = tempfile.TemporaryFile(dir=self.tmp)  # noqa: SIM115 - handed to the caller
        try:
            self.client.download_blob(self._digest(digest), out)  # type: ignore[arg-type]
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return out  # type: ignore[return-value]

    @contextlib.contextmanager
    def local_files(self, hexes: Iterable[str]) -> Iterator[dict[str, Path]]:
        """Local files with these blobs' bytes: staged copies (linked, so a concurrent push's
        cleanup cannot take them away), else verified downloads. Staged copies are dropped
        afterwards: the version they were uploaded for is committed, or refused."""
        wanted = sorted(set(hexes))
        private = Path(tempfile.mkdtemp(dir=self.tmp, prefix="read-"))
        try:
            files = {}
            for hex_ in wanted:
                target = private / hex_
                try:
                    os.link(self.stage.path(hex_), target)
                except FileNotFoundError:
                    with open(target, "wb") as out:
                        self.client.download_blob(self._digest(hex_), out)
                files[hex_] = target
            yield files
        finally:
            shutil.rmtree(private, ignore_errors=True)
            for hex_ in wanted:
                self.stage.remove(hex_)

    def hash_stored(self, hex_: str) -> tuple[str, int] | None:
        try:
            return self.client.hash_blob(self._digest(hex_))
        except NotFound:
            return None

    def all_hex(self) -> list[str]:
        """The blobs this store has uploaded (the ledger): the API cannot list a repository."""
        return [p.name for p in self.ledger.iterdir() if len(p.name) == 64 and set(p.name) <= _HEX]

    # -- writes ------------------------------------------------------------------------------

    def writer(self, *, max_bytes: int | None = None, what: str = "blob") -> OciBlobWriter:
        return OciBlobWriter(self, max_bytes, what)

    def ingest_file(self, src: Path, *, max_bytes: int | None = None) -> tuple[str, int]:
        return ingest(self.writer(max_bytes=max_bytes, what=str(src)), src)

    def publish(self, hex_: str, size: int, source: BinaryIO) -> None:
        """Upload verified bytes unless the repository already has the blob."""
        digest = self._digest(hex_)
        (self.ledger / hex_).touch()  # before the upload: gc must know of a blob that may exist
        if self.client.blob_size(digest) == size:
            return
        self.client.push_blob(source, digest, size)
        log.debug("uploaded blob %s (%d bytes) to %s", digest, size, self.client.location)
        if self.quarantine.is_dir() and any(self.quarantine.glob(f"{hex_}.*")):
            self._check_repaired(hex_, digest)

    def _check_repaired(self, hex_: str, digest: str) -> None:
        """A blob verify found rotten was uploaded again: a registry may have kept the old
        bytes (distribution keeps a deleted blob's data until its garbage collection and does
        not replace it on upload), so hash what it serves now and refuse loudly if still bad."""
        actual, _ = self.client.hash_blob(digest)
        if actual == hex_:
            return
        self.client.delete_blob(digest)
        raise IntegrityError(
            f"the OCI registry {self.client.location} still serves corrupt bytes for {digest} "
            f"after a fresh upload (they hash to sha256:{actual}): it keeps a deleted blob's "
            "data until its own garbage collection runs (docker-registry garbage-collect); "
            "run it, then push again")

    # -- upkeep ------------------------------------------------------------------------------

    def remove(self, hex_: str) -> int:
        digest = self._digest(hex_)
        size = self.client.blob_size(digest)
        if size is not None:
            self.client.delete_blob(digest)
        (self.ledger / hex_).unlink(missing_ok=True)
        return size or 0

    def drop_artifact(self, digest: str) -> bool:
        """Delete a version's artifact manifest (and so its tag); False if it was gone."""
        return self.client.delete_manifest(digest)

    def quarantine_if_corrupt(self, hex_: str) -> str | None:
        """Save a corrupt blob's bytes locally, then delete it from the repository."""
        self.quarantine.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.tmp, delete=False) as out:
            try:
                actual, _ = self.client.hash_blob(self._digest(hex_), out)
            except NotFound:
                actual = hex_
        if actual == hex_:
            os.unlink(out.name)
            return None
        target = self.quarantine / f"{hex_}.{actual[:12]}"
        os.replace(out.name, target)
        self.client.delete_blob(self._digest(hex_))
        return (f"content hashes to sha256:{actual}; deleted from {self.client.location}, "
                f"bytes kept in {target.relative_to(self.root)}")

    def temp_files(self) -> list[Path]:
        """Leftovers of interrupted pushes: temp files and staged copies never committed."""
        return [*self.stage.temp_files(), *(self.stage.path(h) for h in self.stage.all_hex())]

    def ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.client.close()
