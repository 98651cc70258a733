"""The one check every registry client applies to a store's answer before anyone uses it."""

from __future__ import annotations

from loramux.registry.digests import adapter_digest
from loramux.registry.errors import IntegrityError
from loramux.registry.manifest import Manifest
from loramux.registry.refs import AdapterRef


def check_answer(ref: AdapterRef, manifest: Manifest) -> Manifest:
    """``manifest`` if it is what ``ref`` names, else ``IntegrityError``.

    Every client of every store goes through here (the server, the vLLM resolver, the CLI, the
    trainer), so a registry, a proxy or a cache in front of it that answers another version is
    refused in one place, not trusted by whoever forgot to look: the name must be ``ref``'s, a
    pinned number that number, a pinned digest that digest, and the digest must be the one the
    manifest's own files give (the blobs are then checked against those files as they arrive),
    so no answer can claim a pinned digest for other bytes. A moving reference (a name, an
    alias) can only be checked for its name: which version it points at is the store's to say.
    """
    wrong = (manifest.name != ref.name
             or (ref.version is not None and manifest.version != ref.version)
             or (ref.digest is not None and not manifest.digest.startswith(ref.digest)))
    if wrong:
        raise IntegrityError(f"the registry answered {manifest.ref} ({manifest.digest[:19]}…) "
                             f"for `{ref}`")
    actual = adapter_digest(manifest.files)
    if manifest.digest != actual:
        raise IntegrityError(f"the registry's manifest of {manifest.ref} says digest "
                             f"{manifest.digest[:19]}… but its files give {actual[:19]}…")
    return manifest
