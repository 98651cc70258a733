"""Turning a manifest back into an adapter folder: verified, atomic, never half there.

Files are written into a hidden sibling folder and hashed as they are written; only when every
file matches its manifest entry is the folder renamed to its final name. Any failure removes the
temporary folder, so consumers (peft, vLLM, the pull cache) see a complete adapter or nothing.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from loramux.registry.digests import (
    adapter_digest,
    copy_file_hashed,
    copy_stream_hashed,
    iter_file,
)
from loramux.registry.errors import Conflict, IntegrityError
from loramux.registry.manifest import FileEntry, Manifest
from loramux.registry.validate import check_file_tree, check_rel_path

log = logging.getLogger(__name__)
OpenBlob = Callable[[str], BinaryIO]


def _copy_entry(src: BinaryIO, dst_fd: int, entry: FileEntry) -> tuple[str, int]:
    def check(size: int) -> None:
        if size > entry.size:
            raise IntegrityError(
                f"blob {entry.digest} ({entry.path}) is corrupt: more than the "
                f"{entry.size} bytes the manifest lists"
            )

    chunks = getattr(src, "chunks", None)
    if callable(chunks):  # a download: take its chunks as they come
        return copy_stream_hashed(chunks(), dst_fd, check=check)
    try:
        fd = src.fileno()
    except (OSError, io.UnsupportedOperation, AttributeError):
        return copy_stream_hashed(iter_file(src, 1 << 20), dst_fd, check=check)
    return copy_file_hashed(fd, dst_fd, check=check)  # a local file: kernel copy


def materialize(manifest: Manifest, open_blob: OpenBlob, dest: Path, *, fsync: bool = True) -> Path:
    """Write ``manifest``'s files into ``dest`` (absent or empty), verifying every byte."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise Conflict(f"{dest} already exists and is not an empty folder")
    if adapter_digest(manifest.files) != manifest.digest:
        raise IntegrityError(f"manifest of {manifest.ref} does not match its digest")
    check_file_tree(entry.path for entry in manifest.files)  # versions stored before the check
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
    try:
        for entry in manifest.files:
            target = tmp / check_rel_path(entry.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open_blob(entry.digest) as src, open(target, "w+b", buffering=0) as out:
                hex_, size = _copy_entry(src, out.fileno(), entry)
                if hex_ != entry.sha256 or size != entry.size:
                    raise IntegrityError(
                        f"blob {entry.digest} ({entry.path}) is corrupt: its {size} bytes hash "
                        f"to sha256:{hex_}, expected {entry.size} bytes"
                    )
                if fsync:
                    os.fsync(out.fileno())
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("materialized %s (%s) into %s", manifest.ref, manifest.digest, dest)
    return dest
