"""Import a PEFT adapter from the Hub (or from the Hub's cache) as a registry version.

One path for both sources and for the server's ``hf://`` references: fetch, copy out of the
cache, check shapes against the base, push through :meth:`Registry.push` (which checks the
folder like any push: safetensors only, a LoRA config that matches its weights), with the
source in the lineage. The same commit's files push to the same digest, so a re-import is a
no-op that answers the version already there.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from loramux.hub.fetch import copy_out, download, remove
from loramux.hub.fits import check_fits
from loramux.hub.refs import CachedSnapshot, HubRef, cached_snapshot
from loramux.registry import Registry
from loramux.registry.digests import adapter_digest
from loramux.registry.errors import InvalidAdapter, InvalidName, NotFound
from loramux.registry.manifest import FileEntry, Manifest


def import_from_hub(registry: Registry, ref: HubRef | str, *, name: str | None = None,
                    subfolder: str = "", base: Path | None = None, alias: str | None = None,
                    cache_dir: Path | None = None, endpoint: str | None = None,
                    token: str | None = None, created_by: str | None = None) -> Manifest:
    """Fetch ``ref`` through ``snapshot_download`` and publish it as ``name``'s next version
    (or the version already holding the same files)."""
    ref = HubRef.parse(ref) if isinstance(ref, str) else ref
    folder, commit = download(ref, subfolder, cache_dir=cache_dir, endpoint=endpoint, token=token)
    snapshot = CachedSnapshot(folder.parent.parent, ref.repo, commit, subfolder.strip("/"))
    return _publish(registry, snapshot, name=name or ref.default_name(), base=base, alias=alias,
                    revision=ref.revision, endpoint=endpoint, created_by=created_by)


def import_from_cache(registry: Registry, folder: Path, *, name: str | None = None,
                      base: Path | None = None, alias: str | None = None,
                      created_by: str | None = None) -> Manifest:
    """Publish a folder inside the Hub cache (``models--ORG--REPO/snapshots/<sha>[/sub]``),
    recording the repo and commit its path names."""
    snapshot = cached_snapshot(folder)
    if snapshot is None:
        raise InvalidAdapter(f"{folder} is not inside a Hugging Face Hub cache "
                             "(…/models--ORG--REPO/snapshots/<commit>); push it instead")
    return _publish(registry, snapshot, name=name or HubRef(snapshot.repo).default_name(),
                    base=base, alias=alias, revision=None, endpoint=None, created_by=created_by)


def hub_source(snapshot: CachedSnapshot, hashes: dict[str, str], revision: str | None,
               endpoint: str | None) -> dict[str, Any]:
    """What the lineage records of where the files came from."""
    from huggingface_hub import constants

    return {"hub": {
        "repo": snapshot.repo,
        "revision": revision,
        "commit": snapshot.commit,
        "subfolder": snapshot.subfolder or None,
        "endpoint": (endpoint or constants.ENDPOINT).rstrip("/"),
        "files": {path: f"sha256:{digest}" for path, digest in sorted(hashes.items())},
    }}


def _publish(registry: Registry, snapshot: CachedSnapshot, *, name: str, base: Path | None,
             alias: str | None, revision: str | None, endpoint: str | None,
             created_by: str | None) -> Manifest:
    ref = f"hf://{snapshot.repo}@{snapshot.commit[:12]}"
    work = Path(tempfile.mkdtemp(prefix="loramux-hub-"))
    try:
        hashes = copy_out(snapshot, work / "adapter", ref)
        adapter = work / "adapter"
        recorded = _recorded_base(adapter)
        if base is None and recorded and Path(recorded).expanduser().is_dir():
            base = Path(recorded).expanduser()  # what a push would fingerprint
        if base is not None:
            check_fits(adapter, base)
        existing = _version_with(registry, name, hashes)
        if existing is not None:
            return existing  # the same files again: a no-op, whichever version holds them
        lineage = {"source": hub_source(snapshot, hashes, revision, endpoint)}
        labels = {"source": "hf"}
        return registry.push(
            adapter, name, alias=alias, labels=labels, base_model=base, lineage=lineage,
            description=f"from {ref}" + (f" (base {recorded})" if recorded else ""),
            created_by=created_by,
        )
    finally:
        remove(work)


def _version_with(registry: Registry, name: str, hashes: dict[str, str]) -> Manifest | None:
    """The version of ``name`` that holds exactly these files, if one does: a push compares
    with the latest version only, and an older commit imported again (``hf://…@<sha>`` after
    the branch moved) must not become a new version each time the server asks."""
    digest = adapter_digest(FileEntry(path=path, size=0, sha256=sha)
                            for path, sha in hashes.items())
    try:
        return registry.resolve(f"{name}@{digest}")
    except (NotFound, InvalidName):
        return None


def _recorded_base(adapter: Path) -> str | None:
    try:
        value = json.loads((adapter / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
