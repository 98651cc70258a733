"""A loramux version as an OCI artifact: building, checking, pushing and fetching it.

The format is docs/oci-artifact.md (OCI image-spec v1.1.0, "artifact with config and layers"):
config = the loramux manifest, one layer per file (the file's own blob, titled with its path),
annotations that copy what registry UIs and policies filter on. Building and checking are pure
functions; :func:`push_artifact` and :func:`fetch_artifact` add the registry round trips
through the blob store's :class:`~loramux.registry.oci.client.OciClient`.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loramux.registry.digests import adapter_digest
from loramux.registry.errors import IntegrityError, InvalidAdapter
from loramux.registry.manifest import Manifest
from loramux.registry.oci.client import OciClient
from loramux.registry.refs import validate_name

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.loramux.adapter.v1"
CONFIG_MEDIA_TYPE = "application/vnd.loramux.adapter.manifest.v1+json"
WEIGHTS_MEDIA_TYPE = "application/vnd.loramux.adapter.weights.v1.safetensors"
TITLE = "org.opencontainers.image.title"
TAG_SEPARATOR = ".."  # never inside an adapter name or alias, allowed in OCI tags
MAX_MANIFEST_BYTES = 4 << 20  # what the distribution spec lets registries refuse above
MAX_CONFIG_BYTES = 16 << 20

_MEDIA_BY_SUFFIX = {
    ".safetensors": WEIGHTS_MEDIA_TYPE,
    ".json": "application/json",
    ".md": "text/markdown",
    ".txt": "text/plain",
}
_VERSION_TAG = re.compile(r"^(?P<name>[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?)\.\."
                          r"(?P<version>[1-9][0-9]{0,11})$")


def version_tag(name: str, version: int) -> str:
    """``sql-helper..7``: the tag of a version (see docs/oci-artifact.md for why ``..``)."""
    return f"{validate_name(name)}{TAG_SEPARATOR}{int(version)}"


def versions_in(tags: list[str], name: str) -> list[int]:
    """Version numbers of ``name`` that have a tag, ascending; other tags are ignored."""
    found = []
    for tag in tags:
        m = _VERSION_TAG.match(tag)
        if m and m["name"] == name:  # a valid name has no "..", so it cannot swallow one
            found.append(int(m["version"]))
    return sorted(found)


def names_in(tags: list[str]) -> list[str]:
    """Adapter names that have at least one version tag, sorted."""
    return sorted({m["name"] for t in tags
                   if (m := _VERSION_TAG.match(t)) and ".." not in m["name"]})


def layer_media_type(path: str) -> str:
    """The media type of a file's layer, by its kind (for people and UIs; readers ignore it)."""
    for suffix, media_type in _MEDIA_BY_SUFFIX.items():
        if path.endswith(suffix):
            return media_type
    return "application/octet-stream"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_bytes(manifest: Manifest) -> bytes:
    """The config blob: the loramux manifest exactly as ``show --json`` gives it."""
    return manifest.model_dump_json().encode()


def annotations(manifest: Manifest) -> dict[str, str]:
    """The manifest-level annotations (every value a string, as OCI requires)."""
    lora = manifest.lora
    created = manifest.created_at.isoformat().replace("+00:00", "Z")
    out = {
        TITLE: manifest.name,
        "org.opencontainers.image.version": str(manifest.version),
        "org.opencontainers.image.created": created,
        "io.loramux.adapter.name": manifest.name,
        "io.loramux.adapter.version": str(manifest.version),
        "io.loramux.adapter.digest": manifest.digest,
        "io.loramux.lora.rank": str(lora.r),
        "io.loramux.lora.max-rank": str(lora.max_rank),
        "io.loramux.lora.alpha": str(lora.lora_alpha),
        "io.loramux.lora.target-modules": json.dumps(lora.target_modules, separators=(",", ":")),
    }
    optional = {
        "org.opencontainers.image.description": manifest.description,
        "io.loramux.base.fingerprint": manifest.base_fingerprint,
        "io.loramux.base.name": manifest.base_model_name_or_path,
        "io.loramux.quantization": str(manifest.quantization) if manifest.quantization else None,
    }
    out.update({k: v for k, v in optional.items() if v})
    return out


@dataclass(frozen=True)
class BuiltArtifact:
    """What a push uploads: the config blob and the manifest, with their digests."""

    config: bytes
    config_digest: str
    body: bytes
    digest: str
    tag: str


def build(manifest: Manifest) -> BuiltArtifact:
    """The OCI manifest of a loramux version; the same version always gives the same bytes."""
    config = config_bytes(manifest)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": _sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": layer_media_type(f.path), "digest": f.digest, "size": f.size,
             "annotations": {TITLE: f.path}}
            for f in manifest.files
        ],
        "annotations": annotations(manifest),
    }
    body = json.dumps(document, separators=(",", ":")).encode()
    return BuiltArtifact(config, _sha256(config), body, _sha256(body),
                         version_tag(manifest.name, manifest.version))


class Descriptor(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    media_type: str = Field(alias="mediaType")
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: int = Field(ge=0)
    annotations: dict[str, str] = Field(default_factory=dict)


class OciManifest(BaseModel):
    """The parts of an OCI image manifest a reader of loramux artifacts looks at."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: int = Field(alias="schemaVersion")
    media_type: str | None = Field(None, alias="mediaType")
    artifact_type: str | None = Field(None, alias="artifactType")
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = Field(default_factory=dict)


def parse_manifest(body: bytes, where: str) -> OciManifest:
    """Parse an OCI manifest and refuse anything but a loramux adapter, saying what it is."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidAdapter(f"{where} is not an OCI image manifest (not JSON)") from None
    if not isinstance(document, dict):
        raise InvalidAdapter(f"{where} is not an OCI image manifest (not a JSON object)")
    media_type = document.get("mediaType")
    if media_type not in (None, MANIFEST_MEDIA_TYPE):
        raise InvalidAdapter(f"{where} is a {str(media_type)[:100]}, not a loramux adapter "
                             f"(an OCI image manifest with artifactType {ARTIFACT_TYPE})")
    try:
        parsed = OciManifest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidAdapter(f"{where} is not a valid OCI image manifest: {field}: "
                             f"{first['msg']}") from None
    # image-spec 1.1: readers fall back to the config media type without artifactType
    kind = parsed.artifact_type or parsed.config.media_type
    if kind != ARTIFACT_TYPE and not (parsed.artifact_type is None
                                      and kind == CONFIG_MEDIA_TYPE):
        raise InvalidAdapter(f"{where} is not a loramux adapter: its artifactType is "
                             f"{str(kind)[:100]!r}, expected {ARTIFACT_TYPE!r}")
    if parsed.schema_version != 2:
        raise InvalidAdapter(f"{where}: schemaVersion {parsed.schema_version}, expected 2")
    if parsed.config.media_type != CONFIG_MEDIA_TYPE:
        raise InvalidAdapter(f"{where}: config media type {parsed.config.media_type[:100]!r}, "
                             f"expected {CONFIG_MEDIA_TYPE!r}")
    if parsed.config.size > MAX_CONFIG_BYTES:
        raise InvalidAdapter(f"{where}: config of {parsed.config.size} bytes (limit "
                             f"{MAX_CONFIG_BYTES})")
    return parsed


def check_config(oci: OciManifest, config: bytes, where: str) -> Manifest:
    """The loramux manifest in ``config``, once it provably is what ``oci`` describes."""
    if len(config) != oci.config.size or _sha256(config) != oci.config.digest:
        raise IntegrityError(f"{where}: config blob does not match its descriptor "
                             f"({oci.config.digest})")
    try:
        manifest = Manifest.model_validate_json(config)
    except ValidationError as exc:
        raise IntegrityError(f"{where}: config is not a loramux manifest "
                             f"({exc.error_count()} problems, first: {exc.errors()[0]['msg']})"
                             ) from None
    if adapter_digest(manifest.files) != manifest.digest:
        raise IntegrityError(f"{where}: its files do not hash to its digest {manifest.digest}")
    listed = Counter((f.path, f.digest, f.size) for f in manifest.files)
    layers = Counter((d.annotations.get(TITLE), d.digest, d.size) for d in oci.layers)
    if layers != listed:
        odd = sorted(str(k[0]) for k in (layers - listed) + (listed - layers))
        raise IntegrityError(f"{where}: layers do not match the manifest's files "
                             f"(differ at {', '.join(odd[:5])})")
    expected = {"io.loramux.adapter.name": manifest.name,
                "io.loramux.adapter.version": str(manifest.version),
                "io.loramux.adapter.digest": manifest.digest}
    for key, value in expected.items():
        if oci.annotations.get(key) != value:
            raise IntegrityError(f"{where}: annotation {key} is "
                                 f"{oci.annotations.get(key)!r}, the config says {value!r}")
    return manifest


def push_artifact(client: OciClient, manifest: Manifest) -> str:
    """Upload the config and PUT the manifest under the version's tag; its digest.

    The layers are the blob store's own blobs, in the same repository, so nothing else moves;
    the registry refuses the manifest if one of them is missing.
    """
    built = build(manifest)
    if client.blob_size(built.config_digest) is None:
        client.push_blob(built.config, built.config_digest, len(built.config))
    client.put_manifest(built.tag, built.body, MANIFEST_MEDIA_TYPE)  # checks the echoed digest
    return built.digest


class _Bounded(io.BytesIO):
    """A download buffer that refuses more than ``limit`` bytes (a descriptor lied)."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__()
        self._limit, self._what = limit, what

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self._limit:
            raise IntegrityError(f"{self._what} is larger than its descriptor's "
                                 f"{self._limit} bytes")
        return super().write(data)


def fetch_artifact(client: OciClient, name: str, version: int,
                   where: str) -> tuple[Manifest, str]:
    """The loramux manifest of ``name@version`` from its tag, checked, and the OCI digest."""
    tag = version_tag(name, version)
    label = f"{where}:{tag}"
    got = client.get_manifest(tag, accept=(MANIFEST_MEDIA_TYPE,))  # digest checked
    if len(got.body) > MAX_MANIFEST_BYTES:
        raise InvalidAdapter(f"{label}: manifest of {len(got.body)} bytes (limit "
                             f"{MAX_MANIFEST_BYTES})")
    oci = parse_manifest(got.body, label)
    buffer = _Bounded(oci.config.size, f"{label}: config blob")
    client.download_blob(oci.config.digest, buffer)  # type: ignore[arg-type]
    manifest = check_config(oci, buffer.getvalue(), label)
    if (manifest.name, manifest.version) != (name, version):
        raise IntegrityError(f"{label} holds {manifest.ref}, not {name}@{version}")
    return manifest, got.digest
