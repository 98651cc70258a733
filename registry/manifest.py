"""The records the registry stores and returns: manifests, listings, audit entries, reports.

A manifest is immutable once its version exists; everything mutable about a version (aliases,
deletion) lives next to it in the index and appears in :class:`VersionInfo` instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loramux.registry.errors import InvalidName, InvalidRequest

SCHEMA_VERSION = 1
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
_COMPONENT_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_LABEL_VALUE = 256
MAX_LABELS = 64
MAX_DESCRIPTION = 8192
MAX_CREATED_BY = 256
MAX_COMPONENTS = 16
MAX_COMPONENT_VALUE = 128
MAX_LINEAGE_BYTES = 64 << 10
MAX_LINEAGE_DEPTH = 16
MAX_FILES_LISTED = 4096  # the store's own file limit (Limits.max_files) applies after this


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """Labels are filterable metadata, so keep them small and predictable."""
    labels = dict(labels or {})
    if len(labels) > MAX_LABELS:
        raise InvalidName(f"too many labels ({len(labels)} > {MAX_LABELS})")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY_RE.match(key):
            raise InvalidName(f"invalid label key {str(key)[:64]!r}: letters, digits and '._/-', "
                              "<= 64")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            raise InvalidName(f"label {key!r}: value must be a string of <= {MAX_LABEL_VALUE} "
                              "characters")
    return labels


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``["team=cx", "task=sql"]`` -> ``{"team": "cx", "task": "sql"}``: the one parser of
    ``k=v`` labels (CLI options, the HTTP API's ``label`` query, tools); checked as above."""
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidName(f"invalid label {item!r}: expected key=value")
        labels[key] = value
    return check_labels(labels)


class FileEntry(BaseModel):
    """One file of an adapter; its sha256 is also the name of the blob that holds it."""

    model_config = ConfigDict(frozen=True)

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


class LoraFacts(BaseModel):
    """What the server needs from adapter_config.json without opening it again."""

    r: int = Field(gt=0)
    lora_alpha: float
    target_modules: list[str] | str
    lora_dropout: float = 0.0
    bias: str = "none"
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    task_type: str | None = None
    rank_pattern: dict[str, int] = Field(default_factory=dict)
    alpha_pattern: dict[str, float] = Field(default_factory=dict)
    peft_version: str | None = None

    @property
    def max_rank(self) -> int:
        """The rank a serving engine must reserve for this adapter (vLLM's max_lora_rank)."""
        return max([self.r, *self.rank_pattern.values()])


QuantMethod = Literal["nf4", "fp4", "int8", "none"]
_DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
}


class QuantizationInfo(BaseModel):
    """The base-model quantization an adapter was trained against (QLoRA or not)."""

    method: QuantMethod = "none"
    double_quant: bool = False
    compute_dtype: str | None = None

    @classmethod
    def parse(cls, text: str) -> QuantizationInfo:
        """Parse the CLI spelling: ``nf4+dq+bf16``, ``int8``, ``none`` (``,`` works too)."""
        parts = [p.strip().lower() for p in re.split(r"[+,]", text) if p.strip()]
        if not parts or parts[0] not in ("nf4", "fp4", "int8", "none"):
            raise InvalidName(
                f"invalid quantization {text!r}: expected nf4|fp4|int8|none, "
                "optionally followed by +dq and +bf16|fp16|fp32 (e.g. nf4+dq+bf16)"
            )
        info: dict[str, Any] = {"method": parts[0]}
        for part in parts[1:]:
            if part in ("dq", "double_quant", "double-quant"):
                info["double_quant"] = True
            elif part in _DTYPES:
                info["compute_dtype"] = _DTYPES[part]
            else:
                raise InvalidName(f"invalid quantization option {part!r} in {text!r}")
        return cls(**info)

    def __str__(self) -> str:
        parts = [self.method]
        if self.double_quant:
            parts.append("dq")
        if self.compute_dtype:
            parts.append(self.compute_dtype)
        return "+".join(parts)


class Lineage(BaseModel):
    """How the adapter was made, as far as the trainer knows; extra keys are kept."""

    model_config = ConfigDict(extra="allow")

    dataset_digest: str | None = None
    dataset: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    library_versions: dict[str, str] = Field(default_factory=dict)


class Manifest(BaseModel):
    """Everything known about one immutable version; ``digest`` is the adapter's identity."""

    schema_version: int = SCHEMA_VERSION
    name: str
    version: int = Field(ge=1)
    digest: str
    size: int = Field(ge=0)
    files: list[FileEntry]
    lora: LoraFacts
    base_model_name_or_path: str | None = None
    base_fingerprint: str | None = None
    base_components: dict[str, str] | None = None
    quantization: QuantizationInfo | None = None
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    lineage: Lineage | None = None
    created_at: datetime
    created_by: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)


class VersionInfo(BaseModel):
    """One row of ``list``: a version with its current aliases."""

    name: str
    version: int
    digest: str
    size: int
    created_at: datetime
    created_by: str
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)
    base_model_name_or_path: str | None = None
    base_fingerprint: str | None = None
    deleted: bool = False


AuditAction = Literal["push", "alias_set", "alias_rm", "delete", "evaluate", "promote",
                      "canary"]


class AuditEntry(BaseModel):
    """One change. Alias moves carry the version and digest before and after."""

    id: int
    at: datetime
    actor: str
    action: AuditAction
    name: str
    version: int | None = None
    digest: str | None = None
    alias: str | None = None
    old_version: int | None = None
    old_digest: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class AliasPointer(BaseModel):
    """Where an alias pointed at some instant, and since when."""

    name: str
    alias: str
    version: int
    digest: str
    since: datetime
    set_by: str


class GcReport(BaseModel):
    removed_blobs: int = 0
    removed_bytes: int = 0
    removed_temp_files: int = 0
    kept_blobs: int = 0
    removed_artifacts: int = 0  # OCI artifact manifests of deleted versions


class BlobProblem(BaseModel):
    digest: str
    problem: Literal["corrupt", "missing"]
    detail: str
    used_by: list[str] = Field(default_factory=list)


class VerifyReport(BaseModel):
    checked_blobs: int = 0
    checked_bytes: int = 0
    problems: list[BlobProblem] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class PushRequest(BaseModel):
    """What a remote client posts after uploading the blobs: the manifest minus what the
    server decides (version, digest, created_at, LoRA facts read from the stored config).
    Every field is bounded by :func:`check_push_fields`."""

    files: list[FileEntry] = Field(max_length=MAX_FILES_LISTED)
    alias: str | None = None
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    base_fingerprint: str | None = None
    base_components: dict[str, str] | None = None
    quantization: QuantizationInfo | None = None
    lineage: Lineage | None = None
    created_by: str | None = None
    # The same files as the latest version make no new version, unless this says to: then the
    # facts given with them (a base fingerprint added later, new lineage) are recorded.
    new_version: bool = False


def check_push_fields(request: PushRequest) -> None:
    """Bound what a push stores besides the files: it comes from a client, and every reader of
    the manifest (lists, resolves on the serving path) pays for its size. Names the field."""
    if len(request.description) > MAX_DESCRIPTION:
        raise InvalidName(f"description is longer than {MAX_DESCRIPTION} characters")
    check_labels(request.labels)
    if request.created_by is not None and not 0 < len(request.created_by) <= MAX_CREATED_BY:
        raise InvalidRequest(f"created_by must be 1 to {MAX_CREATED_BY} characters")
    components = request.base_components or {}
    if len(components) > MAX_COMPONENTS:
        raise InvalidRequest(f"base_components has {len(components)} entries "
                             f"(limit {MAX_COMPONENTS})")
    for key, value in components.items():
        if not _COMPONENT_KEY_RE.match(key) or len(value) > MAX_COMPONENT_VALUE:
            raise InvalidRequest(f"base_components entry {key[:64]!r}: key of letters, digits "
                                 f"and '_.-' (<= 64), value <= {MAX_COMPONENT_VALUE} characters")
    quant = request.quantization
    if quant is not None and quant.compute_dtype not in (None, *_DTYPES.values()):
        raise InvalidRequest(f"quantization.compute_dtype must be one of "
                             f"{', '.join(sorted(set(_DTYPES.values())))}")
    if request.lineage is not None:
        _check_lineage(request.lineage.model_dump(mode="json"))


def _check_lineage(lineage: dict[str, Any]) -> None:
    depth = _depth(lineage)
    if depth > MAX_LINEAGE_DEPTH:
        raise InvalidRequest(f"lineage is nested {depth} levels deep "
                             f"(limit {MAX_LINEAGE_DEPTH})")
    size = len(json.dumps(lineage, separators=(",", ":")).encode())
    if size > MAX_LINEAGE_BYTES:
        raise InvalidRequest(f"lineage is {size} bytes as JSON (limit {MAX_LINEAGE_BYTES})")


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a deep value must not exhaust the stack here either)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_LINEAGE_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest
