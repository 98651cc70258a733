"""Hashing: the adapter digest, and copies that hash what they write in the same pass.

Every byte the registry stores or hands out is hashed exactly once on the way, so integrity costs
one sha256 pass and nothing more. File-to-file copies go through ``copy_file_range`` (no copy in
user space) and hash the destination through ``mmap``: what gets verified is what was written,
not the source, which another process may still be changing.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, Protocol

CHUNK = 8 << 20
_PREFIX = "sha256:"


class _HasFiles(Protocol):
    path: str
    sha256: str


def hex_of(digest: str) -> str:
    """``sha256:<hex>`` or bare hex -> bare hex (no validation beyond the prefix)."""
    return digest[len(_PREFIX) :] if digest.startswith(_PREFIX) else digest


def adapter_digest(files: Iterable[_HasFiles]) -> str:
    """The adapter's identity: sha256 over ``<path>\\0<sha256>\\n`` lines sorted by path.

    Only paths and contents count, so the same files pushed under another name, by another
    user, with another description, have the same digest; the server keys caches on it.
    """
    h = hashlib.sha256()
    for path, sha in sorted((f.path, f.sha256) for f in files):
        h.update(path.encode("utf-8") + b"\0" + sha.encode("ascii") + b"\n")
    return _PREFIX + h.hexdigest()


def sha256_file(path: os.PathLike[str] | str) -> tuple[str, int]:
    """(hex, size) of a file, read through mmap so large files cost no user-space copy."""
    with open(path, "rb", buffering=0) as f:
        return sha256_fd(f.fileno())


def sha256_fd(fd: int) -> tuple[str, int]:
    """(hex, size) of the open file ``fd``, from its start."""
    h = hashlib.sha256()
    size = os.fstat(fd).st_size
    for off in range(0, size, CHUNK):
        _hash_region(h, fd, off, min(CHUNK, size - off))
    return h.hexdigest(), size


def _hash_region(h: hashlib._Hash, fd: int, offset: int, length: int) -> None:
    if length <= 0:
        return
    delta = offset % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(fd, length + delta, offset=offset - delta, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            h.update(view[delta:])
        finally:
            view.release()


SizeCheck = Callable[[int], None]


def _no_check(size: int) -> None:
    return None


def copy_file_hashed(src_fd: int, dst_fd: int, *, check: SizeCheck = _no_check) -> tuple[str, int]:
    """Copy ``src_fd`` (from its start) to ``dst_fd``; return (hex, size) of what was written.

    ``check`` sees the running total after each chunk and may raise to stop an oversized copy.
    Falls back to read/write where the kernel cannot copy between the two files.
    """
    check(os.fstat(src_fd).st_size)
    h = hashlib.sha256()
    off = 0
    while True:
        try:
            n = os.copy_file_range(src_fd, dst_fd, CHUNK, off, off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            return _copy_rw(src_fd, dst_fd, h, off, check)
        if n == 0:
            break
        _hash_region(h, dst_fd, off, n)
        start_writeback(dst_fd, off, n)
        off += n
        check(off)
    os.lseek(dst_fd, off, os.SEEK_SET)
    return h.hexdigest(), off


def _copy_rw(
    src_fd: int, dst_fd: int, h: hashlib._Hash, off: int, check: SizeCheck
) -> tuple[str, int]:
    """Plain read/hash/write from ``off`` on (the hash already covers the bytes before it)."""
    while chunk := os.pread(src_fd, CHUNK, off):
        check(off + len(chunk))
        h.update(chunk)
        _write_all(dst_fd, memoryview(chunk), off)
        off += len(chunk)
    os.lseek(dst_fd, off, os.SEEK_SET)
    return h.hexdigest(), off


def copy_stream_hashed(
    chunks: Iterable[bytes], dst_fd: int, *, check: SizeCheck = _no_check
) -> tuple[str, int]:
    """Copy chunks (an HTTP body, a blob reader) to ``dst_fd``; return (hex, size)."""
    h = hashlib.sha256()
    total = flushed = 0
    for chunk in chunks:
        if not chunk:
            continue
        check(total + len(chunk))
        h.update(chunk)
        _write_all(dst_fd, memoryview(chunk), total)
        total += len(chunk)
        if total - flushed >= CHUNK:
            start_writeback(dst_fd, flushed, total - flushed)
            flushed = total
    os.lseek(dst_fd, total, os.SEEK_SET)
    return h.hexdigest(), total


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a finished range to disk now (no waiting), so the fsync before commit
    finds little left to do: disk and CPU work overlap instead of taking turns. On Linux,
    DONTNEED starts write-back of dirty pages and only drops pages already clean."""
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def iter_file(f: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
    while data := f.read(chunk):
        yield data


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n
