"""Fetching a Hub repo's files into a clean folder a push can read.

``snapshot_download`` puts files in the Hub cache as symlinks into ``blobs/``, which a push
refuses (an adapter folder holds regular files only). So the files are copied out, each link
followed only when it stays inside its repo's ``blobs/`` folder, hashing as they are copied.
Paths are checked before anything is downloaded when the Hub is reachable (the listing comes
first), so a repo with a pickle or an unsafe path costs one request and publishes nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from loramux.hub.errors import HubUnavailable, hub_errors
from loramux.hub.refs import COMMIT_RE, CachedSnapshot, HubRef
from loramux.registry.errors import InvalidAdapter
from loramux.registry.validate import PICKLE_SUFFIXES

CHUNK = 1 << 20


@dataclass
class Fetched:
    """Files of one commit, copied out of the Hub cache into ``folder``."""

    folder: Path
    repo: str
    commit: str
    subfolder: str
    revision: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)


def check_repo_paths(ref: str, paths: list[str], subfolder: str) -> list[str]:
    """The repo's files under ``subfolder``; refuses an unsafe path or a pickle by name."""
    chosen = []
    prefix = subfolder.strip("/") + "/" if subfolder.strip("/") else ""
    for path in paths:
        pure = PurePosixPath(path)
        if (pure.is_absolute() or ".." in pure.parts or "\\" in path or not path
                or any(part in ("", ".") for part in path.split("/"))):
            raise InvalidAdapter(f"{ref}: the repo holds an unsafe path {path!r}; nothing was "
                                 "imported")
        if not path.startswith(prefix):
            continue
        if pure.suffix.lower() in PICKLE_SUFFIXES:
            raise InvalidAdapter(f"{ref}: {path} is a pickle file (code runs when it loads); "
                                 "loramux imports safetensors adapters only; nothing was imported")
        chosen.append(path)
    if not chosen:
        where = f" under {subfolder!r}" if prefix else ""
        raise InvalidAdapter(f"{ref}: the repo holds no files{where}")
    return chosen


def download(ref: HubRef, subfolder: str, *, cache_dir: Path | None, endpoint: str | None,
             token: str | None) -> tuple[Path, str]:
    """The snapshot folder of ``ref`` in the Hub cache and its commit (listing first)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import constants as hf_constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    endpoint = endpoint or hf_constants.ENDPOINT  # HF_ENDPOINT, passed on explicitly everywhere
    revision = ref.revision
    patterns = [f"{subfolder.strip('/')}/*"] if subfolder.strip("/") else None
    with hub_errors(str(ref)):
        if not hf_constants.HF_HUB_OFFLINE:
            try:
                info = HfApi(endpoint=endpoint, token=token).model_info(
                    ref.repo, revision=ref.revision)
            except OfflineModeIsEnabled:
                info = None
            if info is not None:
                check_repo_paths(str(ref), [s.rfilename for s in info.siblings or []], subfolder)
                revision = info.sha or revision
        path = snapshot_download(ref.repo, revision=revision, cache_dir=cache_dir,
                                 endpoint=endpoint, token=token, allow_patterns=patterns)
    folder = Path(path)
    if not COMMIT_RE.match(folder.name):
        raise HubUnavailable(f"{ref}: the Hub cache gave {folder}, not a commit's snapshot")
    if revision != ref.revision:
        remember_revision(folder.parent.parent, ref.revision, folder.name)
    return folder, folder.name


def remember_revision(repo_root: Path, revision: str, commit: str) -> None:
    """Record in the Hub cache that ``revision`` (a branch or tag) named ``commit``, as
    ``snapshot_download`` does when given the name (``refs/<revision>``): the download was by
    commit, so that the files checked are the files fetched, and offline mode
    (``HF_HUB_OFFLINE=1``) then finds the name too."""
    if COMMIT_RE.match(revision):
        return
    ref_file = repo_root / "refs" / revision
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref_file.with_name(f".{ref_file.name}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref_file)


def copy_out(snapshot: CachedSnapshot, out: Path, ref: str) -> dict[str, str]:
    """Copy the snapshot's files (under its subfolder) into ``out``; their sha256 by path.

    A symlink is followed only into ``<repo>/blobs/``, where the Hub cache keeps the bytes; any
    other link, or a special file, is refused: the cache is a folder users can write to.
    """
    root = snapshot.repo_root / "snapshots" / snapshot.commit
    start = root / snapshot.subfolder if snapshot.subfolder else root
    blobs = (snapshot.repo_root / "blobs").resolve()
    if not start.is_dir():
        raise InvalidAdapter(f"{ref}: {snapshot.subfolder or '.'} is not a folder of the repo")
    hashes: dict[str, str] = {}
    for here, dirs, files in os.walk(start, followlinks=False):
        for d in dirs:
            if (Path(here) / d).is_symlink():
                raise InvalidAdapter(f"{ref}: {Path(here) / d} is a linked folder in the Hub cache")
        for name in files:
            source = Path(here) / name
            rel = source.relative_to(start).as_posix()
            check_repo_paths(ref, [rel], "")
            real = source.resolve() if source.is_symlink() else source
            if source.is_symlink() and not real.is_relative_to(blobs):
                raise InvalidAdapter(f"{ref}: {rel} links outside the Hub cache's blobs")
            if not real.is_file():
                raise InvalidAdapter(f"{ref}: {rel} is not a regular file")
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(real, "rb") as src, open(target, "xb") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
            hashes[rel] = digest.hexdigest()
    return hashes


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
