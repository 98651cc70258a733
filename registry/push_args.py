"""A push's arguments turned into the one ``PushRequest`` every store commits, written once for
all of them: the base's fingerprint (from a folder, or as given, or from the base the adapter's
config records), quantization and lineage coerced from strings and dicts, and the checks a
commit repeats because over HTTP the request comes from a client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loramux.registry.errors import InvalidBaseModel, InvalidName, InvalidRequest
from loramux.registry.fingerprint import base_components, fingerprint_of
from loramux.registry.manifest import (
    Lineage,
    Manifest,
    PushRequest,
    QuantizationInfo,
    check_labels,
    check_push_fields,
)
from loramux.registry.refs import validate_alias, validate_digest


def push_request(
    *,
    alias: str | None,
    description: str,
    labels: dict[str, str] | None,
    base_model: Path | str | None,
    base_fingerprint: str | None,
    quantization: QuantizationInfo | str | dict[str, Any] | None,
    lineage: Lineage | dict[str, Any] | None,
    created_by: str | None,
    new_version: bool = False,
) -> PushRequest:
    """A push's arguments, checked, as the request both stores commit (files added later)."""
    fingerprint, components = base_facts(base_model, base_fingerprint)
    return check_push_request(PushRequest(
        files=[],
        alias=alias,
        description=description,
        labels=check_labels(labels),
        base_fingerprint=fingerprint,
        base_components=components,
        quantization=coerce_quantization(quantization),
        lineage=coerce_lineage(lineage),
        created_by=created_by,
        new_version=new_version,
    ))


def check_push_request(request: PushRequest) -> PushRequest:
    """What a commit re-checks, since over HTTP the request comes from a client."""
    if request.alias is not None:
        validate_alias(request.alias)
    if request.base_fingerprint is not None:
        try:
            validate_digest(request.base_fingerprint, full=True)
        except InvalidName:
            raise InvalidName("base_fingerprint must be sha256:<64 hex digits>") from None
    check_push_fields(request)
    return request


def coerce_quantization(
    value: QuantizationInfo | str | dict[str, Any] | None,
) -> QuantizationInfo | None:
    if value is None or isinstance(value, QuantizationInfo):
        return value
    if isinstance(value, str):
        return QuantizationInfo.parse(value)
    try:
        return QuantizationInfo.model_validate(value)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid quantization {value!r}: {_first(exc)}") from None


def coerce_lineage(value: Lineage | dict[str, Any] | None) -> Lineage | None:
    if value is None or isinstance(value, Lineage):
        return value
    try:
        return Lineage.model_validate(value)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid lineage: {_first(exc)}") from None


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"


def base_facts(
    base_model: Path | str | None, base_fingerprint: str | None
) -> tuple[str | None, dict[str, str] | None]:
    """Fingerprint (and its components) from a base folder, or the fingerprint given."""
    if base_fingerprint is not None:
        validate_digest(base_fingerprint, full=True)
    if base_model is None:
        return base_fingerprint, None
    components = base_components(Path(base_model))
    fingerprint = fingerprint_of(components)
    if base_fingerprint is not None and base_fingerprint != fingerprint:
        raise InvalidBaseModel(
            f"{base_model} has fingerprint {fingerprint}, not the {base_fingerprint} given"
        )
    return fingerprint, components


def with_recorded_base(folder: Path, request: PushRequest) -> tuple[PushRequest, str | None]:
    """No base given: fingerprint the base ``adapter_config.json`` records when it is a local
    folder. Returns the request and, when there is no fingerprint, the reason why not."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        recorded = config.get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return request, None  # validation reports the broken config
    if not isinstance(recorded, str) or not recorded:
        return request, "adapter_config.json names no base model"
    if not Path(recorded).expanduser().is_dir():
        return request, f"its recorded base {recorded!r} is not a local folder"
    try:
        fingerprint, components = base_facts(Path(recorded).expanduser(), None)
    except InvalidBaseModel as exc:
        return request, str(exc)
    update = {"base_fingerprint": fingerprint, "base_components": components}
    return request.model_copy(update=update), None


# A trainer's facts about the adapter beside it, in the registry's own terms (``lineage``,
# ``quantization``): a push of the folder records them as ``train --publish`` does. Hidden, so
# never pushed as one of the adapter's files.
PUSH_FACTS = ".loramux-push.json"


def facts_beside(folder: Path) -> dict[str, Any]:
    """``{"lineage": …, "quantization": …}`` from the folder's PUSH_FACTS file, if it has one."""
    path = Path(folder) / PUSH_FACTS
    if not path.is_file():
        return {}
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{path}: not a readable facts file ({exc})") from None
    if not isinstance(facts, dict):
        raise InvalidRequest(f"{path}: not a facts file (a JSON object)")
    return {key: facts[key] for key in ("lineage", "quantization") if facts.get(key)}


# What each recordable fact is called on the command line, for the refusal that names them.
_FACT_FLAGS = {"base_fingerprint": "--base", "quantization": "--quantization",
               "description": "--description", "labels": "--label", "lineage": "--lineage"}


def ignored_facts(request: PushRequest, latest: Manifest) -> list[str]:
    """The facts ``request`` gives that ``latest`` (holding the same files) does not record:
    what a push of unchanged files would silently drop."""
    def given(value: Any) -> bool:
        return value not in (None, "", {}, [])

    def dumped(value: Any) -> Any:
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

    return [flag for field, flag in _FACT_FLAGS.items()
            if given(getattr(request, field))
            and dumped(getattr(request, field)) != dumped(getattr(latest, field))]
