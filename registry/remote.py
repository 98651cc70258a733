"""RemoteRegistry: the same API as LocalRegistry, over the registry's HTTP server.

The client validates an adapter before uploading anything (against the server's own limits,
fetched from ``/v2/whoami``), uploads only blobs the server lacks, and verifies every byte it
downloads, so a faulty server or network cannot hand the trainer or the server a corrupt adapter.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from loramux.registry import manifest as records
from loramux.registry.base import Registry, default_actor, require_pinned
from loramux.registry.canary import CanaryRequest, CanaryState, Split, check_args
from loramux.registry.digests import sha256_fd
from loramux.registry.errors import (
    BlobMissing,
    Forbidden,
    InvalidRequest,
    RemoteError,
    error_class,
)
from loramux.registry.evaluations import (
    Evaluation,
    EvaluationEntry,
    PromoteRequest,
    check_evaluation,
)
from loramux.registry.refs import AdapterRef, validate_alias, validate_name
from loramux.registry.sources import open_regular
from loramux.registry.validate import Limits, scan_folder, validate_adapter
from loramux.wire import ACTOR_HEADER, ENV_TOKEN

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def _raise_for(response: httpx.Response) -> None:
    """The one place HTTP errors become registry exceptions again."""
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        message, type_name = str(error["message"]), error.get("type")
    except (ValueError, KeyError, TypeError):
        message, type_name = f"HTTP {response.status_code}: {response.text[:200]}", None
    raise error_class(type_name, response.status_code)(message)


class _BlobStream(io.RawIOBase):
    """A downloading blob as a readable stream (what ``materialize`` consumes)."""

    def __init__(self, context: Any, response: httpx.Response) -> None:
        self._context = context
        self._chunks: Iterator[bytes] = response.iter_bytes()  # as received: no re-chunking
        self._pending = b""

    def readable(self) -> bool:
        return True

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives (what ``materialize`` prefers: no re-buffering)."""
        try:
            if self._pending:
                yield self._pending
                self._pending = b""
            yield from self._chunks
        except httpx.HTTPError as exc:
            raise RemoteError(f"blob download failed: {exc}") from None

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
            except httpx.HTTPError as exc:
                raise RemoteError(f"blob download failed: {exc}") from None
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._context.__exit__(None, None, None)
        super().close()


class RemoteRegistry(Registry):
    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 300.0,
        actor: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(ENV_TOKEN)
        self.actor = actor or default_actor()
        headers = {ACTOR_HEADER: self.actor}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0)
        )

    def __repr__(self) -> str:
        return f"RemoteRegistry({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"registry {self.url} unreachable: {exc}") from None
        _raise_for(response)
        return response

    def whoami(self) -> dict[str, Any]:
        return self._request("GET", "/v2/whoami").json()

    # -- push --------------------------------------------------------------------------------

    def _push(self, folder: Path, name: str, request: records.PushRequest) -> records.Manifest:
        session = self.whoami()
        if "write" not in session["scopes"]:
            raise Forbidden(f"{session['name']} may not push: this needs a token with 'write'")
        limits = Limits(**session["limits"])
        files = scan_folder(folder, limits)
        validate_adapter(files, limits)  # refuse before uploading anything
        sources: dict[str, Path] = {}
        for rel, path in files.items():
            hex_, size = _hash_source(path)
            request.files.append(records.FileEntry(path=rel, size=size, sha256=hex_))
            sources[hex_] = path
        body = request.model_dump(mode="json")
        self._upload_missing(sources)
        try:
            response = self._request("POST", f"/v2/adapters/{name}/versions", json=body)
        except BlobMissing:  # a gc on the server ran between upload and commit: once more
            self._upload_missing(sources)
            response = self._request("POST", f"/v2/adapters/{name}/versions", json=body)
        return records.Manifest.model_validate_json(response.content)

    def _upload_missing(self, sources: dict[str, Path]) -> None:
        for hex_, path in sources.items():
            if self._has_blob(hex_):
                continue
            size = path.stat().st_size
            self._request(
                "PUT",
                f"/v2/blobs/sha256:{hex_}",
                content=_file_chunks(path),
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            )
            log.debug("uploaded sha256:%s (%d bytes)", hex_, size)

    def _has_blob(self, digest: str) -> bool:
        digest = digest if digest.startswith("sha256:") else f"sha256:{digest}"
        try:
            response = self._http.head(f"/v2/blobs/{digest}")
        except httpx.HTTPError as exc:
            raise RemoteError(f"registry {self.url} unreachable: {exc}") from None
        if response.status_code == 404:
            return False
        _raise_for(response)
        return True

    # -- reads -------------------------------------------------------------------------------

    def _resolve(self, ref: AdapterRef) -> records.Manifest:
        return records.Manifest.model_validate_json(
            self._request("GET", "/v2/resolve", params={"ref": str(ref)}).content
        )

    def _list(self, name: str | None, base_fingerprint: str | None, labels: dict[str, str],
              include_deleted: bool) -> list[records.VersionInfo]:
        label = [f"{k}={v}" for k, v in labels.items()] or None
        params = _params(name=name, base_fingerprint=base_fingerprint, label=label,
                         include_deleted=include_deleted)
        rows = self._request("GET", "/v2/adapters", params=params).json()
        return [records.VersionInfo.model_validate(r) for r in rows]

    def open_blob(self, digest: str) -> BinaryIO:
        digest = digest if digest.startswith("sha256:") else f"sha256:{digest}"
        context = self._http.stream("GET", f"/v2/blobs/{digest}")
        try:
            response = context.__enter__()
        except httpx.HTTPError as exc:
            raise RemoteError(f"registry {self.url} unreachable: {exc}") from None
        if not response.is_success:
            response.read()
            context.__exit__(None, None, None)
            _raise_for(response)
        return _BlobStream(context, response)  # type: ignore[return-value]

    # -- aliases and deletion ----------------------------------------------------------------

    def alias_set(self, name: str, alias: str, version: int) -> records.AliasPointer:
        validate_name(name)
        validate_alias(alias)
        response = self._request(
            "PUT", f"/v2/adapters/{name}/aliases/{alias}", json={"version": int(version)}
        )
        return records.AliasPointer.model_validate_json(response.content)

    def canary_set(self, name: str, alias: str, stable: int, canary: int | None,
                   weight: float, *, reason: str | None = None) -> CanaryState:
        validate_name(name)
        validate_alias(alias)
        check_args(int(stable), canary, weight)
        body = CanaryRequest(stable=stable, canary=canary, weight=weight, reason=reason)
        response = self._request("PUT", f"/v2/adapters/{name}/aliases/{alias}/canary",
                                 json=body.model_dump(mode="json"))
        return CanaryState.model_validate_json(response.content)

    def canary(self, name: str, alias: str) -> CanaryState:
        validate_name(name)
        validate_alias(alias)
        response = self._request("GET", f"/v2/adapters/{name}/aliases/{alias}/canary")
        return CanaryState.model_validate_json(response.content)

    def _resolve_split(self, ref: AdapterRef) -> Split:
        return Split.model_validate_json(
            self._request("GET", "/v2/resolve/split", params={"ref": str(ref)}).content)

    def alias_rm(self, name: str, alias: str) -> None:
        validate_name(name)
        validate_alias(alias)
        self._request("DELETE", f"/v2/adapters/{name}/aliases/{alias}")

    def delete(self, ref: str | AdapterRef, *, force: bool = False) -> records.VersionInfo:
        r = require_pinned(AdapterRef.parse(ref))
        selector = str(r).partition("@")[2]
        response = self._request(
            "DELETE", f"/v2/adapters/{r.name}/versions/{selector}", params={"force": force}
        )
        return records.VersionInfo.model_validate_json(response.content)

    # -- maintenance and audit ---------------------------------------------------------------

    def gc(self) -> records.GcReport:
        return records.GcReport.model_validate_json(self._request("POST", "/v2/gc").content)

    def verify(self) -> records.VerifyReport:
        return records.VerifyReport.model_validate_json(self._request("POST", "/v2/verify").content)

    def _log(self, name: str | None, alias: str | None, since: datetime | None,
             until: datetime | None, limit: int) -> list[records.AuditEntry]:
        params = _params(name=name, alias=alias, since=since and _iso(since),
                         until=until and _iso(until), limit=limit)
        rows = self._request("GET", "/v2/log", params=params).json()
        return [records.AuditEntry.model_validate(r) for r in rows]

    def alias_at(self, name: str, alias: str, when: datetime) -> records.AliasPointer | None:
        params = {"name": name, "alias": alias, "when": _iso(when)}
        data = self._request("GET", "/v2/alias-at", params=params).json()
        return records.AliasPointer.model_validate(data) if data else None

    # -- evaluations and promotion -------------------------------------------------------------

    def record_evaluation(self, name: str, evaluation: Evaluation) -> EvaluationEntry:
        validate_name(name)
        check_evaluation(evaluation)
        response = self._request("POST", f"/v2/adapters/{name}/evaluations",
                                 json=evaluation.model_dump(mode="json"))
        return EvaluationEntry.model_validate_json(response.content)

    def evaluations(self, name: str, version: int, limit: int = 5) -> list[EvaluationEntry]:
        validate_name(name)
        rows = self._request("GET", f"/v2/adapters/{name}/versions/{int(version)}/evaluations",
                             params={"limit": limit}).json()
        return [EvaluationEntry.model_validate(r) for r in rows]

    def promote_alias(self, name: str, alias: str, version: int, *, expected: int | None,
                      evaluation_id: int) -> records.AliasPointer:
        validate_name(name)
        validate_alias(alias)
        body = PromoteRequest(version=version, expected=expected, evaluation_id=evaluation_id)
        response = self._request("POST", f"/v2/adapters/{name}/aliases/{alias}/promote",
                                 json=body.model_dump(mode="json"))
        return records.AliasPointer.model_validate_json(response.content)


def _params(**values: Any) -> dict[str, Any]:
    """Query parameters: the ones given (None means not given)."""
    return {k: v for k, v in values.items() if v is not None}


def _iso(when: datetime) -> str:
    """Naive datetimes mean local time, as in the local store; send them with their offset.
    One the local zone cannot place (year 1 east of UTC) is the caller's mistake, as locally."""
    try:
        return (when if when.tzinfo else when.astimezone()).isoformat()
    except (OverflowError, ValueError):
        raise InvalidRequest(f"{when} is out of range") from None


def _hash_source(path: Path) -> tuple[str, int]:
    fd = open_regular(path)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with os.fdopen(open_regular(path), "rb") as f:
        while data := f.read(CHUNK):
            yield data
