"""Where an imported base came from: ``loramux_base.json`` beside the weights.

The file is written last into the temporary folder, so a folder holding it is a complete import.
Its sha256 of the source GGUF plus the converter version and dtype decide whether a later import
of the same file has anything to do: the same three make the import a no-op.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ValidationError

PROVENANCE_FILE = "loramux_base.json"
# Bump when the converter changes what it writes for the same GGUF; cached imports then redo.
CONVERTER_VERSION = 1
CONVERTER = "loramux.bases.convert"


class SourceFile(BaseModel):
    """The GGUF file the folder was converted from."""

    file_name: str
    size: int
    sha256: str
    architecture: str
    name: str | None = None
    file_type: str | None = None
    tensor_types: dict[str, int] = {}


class Provenance(BaseModel):
    """The import's record; ``check`` holds the converter's own logits comparison."""

    converter: str = CONVERTER
    converter_version: int = CONVERTER_VERSION
    versions: dict[str, str] = {}
    source: SourceFile
    dtype: str
    parameters: int
    tie_word_embeddings: bool
    eos_token_ids: list[int]
    eos_tokens: list[str]
    chat_template: bool
    check: dict[str, int | float] = {}
    imported_at: str
    seconds: float

    def is_import_of(self, sha256: str, dtype: str) -> bool:
        """Same file, dtype and converter: importing again would write the same folder."""
        return (self.source.sha256 == sha256 and self.dtype == dtype
                and self.converter_version == CONVERTER_VERSION)


def read_provenance(folder: Path) -> Provenance | None:
    """The folder's record, or None when it has none (or an unreadable one)."""
    marker = folder / PROVENANCE_FILE
    try:
        return Provenance.model_validate_json(marker.read_bytes())
    except (OSError, ValidationError):
        return None


def write_provenance(folder: Path, record: Provenance) -> None:
    (folder / PROVENANCE_FILE).write_text(record.model_dump_json(indent=2) + "\n")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
