"""The OCI distribution HTTP API for one repository: blobs, manifests, tags.

Built on httpx rather than oras-py (0.2.43): oras' ``do_request`` retries a refused connection
for about two minutes with sleeps (an outage must be a prompt 503 here), it never checks a
downloaded blob's digest, and its uploads read whole files into memory from paths only. The API
is small; this client speaks it directly, with the same verbs.

Every read is verified: a blob's bytes are hashed as they arrive and the download is refused
(``IntegrityError``) unless they match the digest asked for; a manifest fetched by digest is
checked the same way. Every answer but a blob's bytes (manifests, tag pages, errors) is read
as it arrives up to ``MAX_ANSWER_BYTES`` and refused past it, and tag pages are followed only on
the registry's own origin, at most ``MAX_TAG_PAGES`` of them: the registry is a network peer,
not a trusted one. Failures are registry errors: a registry that cannot be reached, fails
(5xx) or refuses the credentials is ``BlobStoreUnavailable`` (503); an unknown blob or manifest
is ``NotFound``; an answer too large or pointing elsewhere is ``RemoteError``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from loramux.registry.digests import CHUNK, hex_of
from loramux.registry.errors import (
    BlobStoreUnavailable,
    IntegrityError,
    NotFound,
    RegistryError,
    RemoteError,
)
from loramux.registry.oci.auth import Credentials, OciAuth, same_origin
from loramux.registry.oci.location import OciLocation
from loramux.registry.refs import validate_digest

log = logging.getLogger(__name__)
# Waits before repeating a HEAD/GET answered 5xx (see OciClient._send).
_RETRY_DELAYS_S = (0.05, 0.2, 0.5)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")
OCTETS = "application/octet-stream"
# distribution refuses manifests over 4 MiB itself; no other answer (tag page, error) comes near.
MAX_ANSWER_BYTES = 4 << 20
MAX_TAG_PAGES = 1000  # 1000 tags a page by default: a million tags


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class OciManifestBytes:
    """An OCI manifest's exact bytes (its digest is over them) and how the registry typed them;
    parsed, it is ``artifact.OciManifest``. (An adapter's manifest is ``registry.Manifest``.)"""

    body: bytes
    media_type: str
    digest: str


def _digest(text: str) -> str:
    validate_digest(text, full=True)
    return text


class OciClient:
    """One repository of one registry; safe to share between threads."""

    def __init__(
        self,
        location: OciLocation | str,
        *,
        credentials: Credentials | None = None,
        timeout_s: float = 60.0,
        chunk_bytes: int = CHUNK,
    ) -> None:
        self.location = (location if isinstance(location, OciLocation)
                         else OciLocation.parse(location))
        self.chunk_bytes = chunk_bytes
        auth = OciAuth(credentials if credentials is not None else Credentials.from_env(),
                       registry=self.location.base)
        self._http = httpx.Client(
            base_url=self.location.base, auth=auth, follow_redirects=True,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            headers={"Docker-Distribution-Api-Version": "registry/2.0"},
        )
        self._prefix = f"/v2/{self.location.repository}"

    def __repr__(self) -> str:
        return f"OciClient({str(self.location)!r})"

    def close(self) -> None:
        self._http.close()

    # -- transport ---------------------------------------------------------------------------

    def _send(self, method: str, url: str | httpx.URL, *, ok: tuple[int, ...] = (200,),
              what: str = "", **kwargs: object) -> httpx.Response:
        """One request, its answer read up to ``MAX_ANSWER_BYTES``; a HEAD or GET answered 5xx
        is retried a few times (CNCF distribution's filesystem driver answers 500 on a HEAD
        while the same blob is being linked by a concurrent upload), as container clients do;
        other methods are not repeated."""
        delays = _RETRY_DELAYS_S if method in ("HEAD", "GET") else ()
        label = what or f"{method} {httpx.URL(url).path}"
        for delay in (*delays, None):
            try:
                request = self._http.build_request(method, url, **kwargs)  # type: ignore[arg-type]
                response = self._bounded(self._http.send(request, stream=True), label)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
            if response.status_code < 500 or delay is None:
                break
            log.info("OCI %s %s answered %d; retrying", method, httpx.URL(url).path,
                     response.status_code)
            time.sleep(delay)
        if response.status_code not in ok:
            raise self._error(response, label)
        return response

    def _bounded(self, response: httpx.Response, what: str) -> httpx.Response:
        """The answer with its body read, refused (``RemoteError``) past ``MAX_ANSWER_BYTES``
        without reading further: the same headers, less the encoding it was decoded from."""
        body, size = bytearray(), 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise RemoteError(f"OCI registry {self.location.base}: {what}: answered more "
                                      f"than {MAX_ANSWER_BYTES} bytes; refused")
                body += chunk
        finally:
            response.close()
        headers = response.headers.copy()
        headers.pop("content-encoding", None)  # Content-Length stays: a HEAD's answer
        return httpx.Response(response.status_code, headers=headers, content=bytes(body),
                              request=response.request)

    @contextmanager
    def _stream(self, url: str, what: str) -> Iterator[Iterator[bytes]]:
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise self._error(self._bounded(response, what), what)
                yield response.iter_bytes(self.chunk_bytes)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: Exception) -> BlobStoreUnavailable:
        return BlobStoreUnavailable(f"OCI registry {self.location.base} cannot be reached "
                                    f"({type(exc).__name__}: {exc or 'no answer'})")

    def _error(self, response: httpx.Response, what: str) -> RegistryError:
        try:
            errors = response.json().get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except (ValueError, AttributeError):
            detail = response.text[:200]
        status = response.status_code
        text = f"OCI registry {self.location.base}: {what}: HTTP {status} {detail}".rstrip()
        if status == 404:  # a client's own miss: answered as is, so no host and no upstream text
            return NotFound(f"{what}: not in the OCI repository {self.location.repository}")
        if status in (401, 403):
            return BlobStoreUnavailable(f"{text} (credentials refused: set LORAMUX_OCI_USERNAME "
                                        "and LORAMUX_OCI_PASSWORD, or LORAMUX_OCI_TOKEN)")
        if status == 429 or status >= 500:
            return BlobStoreUnavailable(text)
        if "DIGEST_INVALID" in detail:
            return IntegrityError(text)
        return RemoteError(text)

    def ping(self) -> None:
        """Raises unless the registry answers its API root (as these credentials)."""
        self._send("GET", "/v2/", what="API check")

    # -- blobs -------------------------------------------------------------------------------

    def _blob_url(self, digest: str) -> str:
        return f"{self._prefix}/blobs/{_digest(digest)}"

    def blob_size(self, digest: str) -> int | None:
        """The blob's size, or None if the repository does not have it (HEAD)."""
        response = self._send("HEAD", self._blob_url(digest), ok=(200, 404), what=f"HEAD {digest}")
        if response.status_code == 404:
            return None
        return int(response.headers.get("content-length", "0"))

    def download_blob(self, digest: str, out: BinaryIO) -> int:
        """Write the blob into ``out``, hashing it; ``IntegrityError`` unless it matches (the
        caller discards ``out`` then). Returns the size."""
        actual, size = self._copy(digest, out)
        if actual != hex_of(digest):
            raise IntegrityError(f"blob {digest} from {self.location} is corrupt: its {size} "
                                 f"bytes hash to sha256:{actual}")
        return size

    def get_blob(self, digest: str) -> bytes:
        """The blob's bytes, verified (for small blobs: configs, manifests' neighbours)."""
        buffer = io.BytesIO()
        self.download_blob(digest, buffer)
        return buffer.getvalue()

    def hash_blob(self, digest: str, out: BinaryIO | None = None) -> tuple[str, int]:
        """(hex, size) of what the registry holds under ``digest``, without judging it (the
        bytes go to ``out`` if given: ``verify`` keeps a corrupt blob's bytes)."""
        return self._copy(digest, out)

    def _copy(self, digest: str, out: BinaryIO | None) -> tuple[str, int]:
        h, size = hashlib.sha256(), 0
        with self._stream(self._blob_url(digest), f"GET {digest}") as chunks:
            for chunk in chunks:
                h.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
        return h.hexdigest(), size

    def push_blob(self, source: bytes | Path | BinaryIO, digest: str, size: int) -> None:
        """Upload a blob: one PUT when it fits in a chunk (monolithic), else chunk by chunk."""
        _digest(digest)
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        if isinstance(source, Path):
            with open(source, "rb") as f:
                return self.push_blob(f, digest, size)
        session = self.start_upload()
        try:
            if size > self.chunk_bytes:
                while chunk := source.read(self.chunk_bytes):
                    session.write(chunk)
                session.finish(digest)
            else:
                session.finish(digest, source.read())
        except BaseException:
            session.cancel()
            raise

    def start_upload(self) -> UploadSession:
        """An upload session (POST): write chunks (PATCH), then ``finish`` (PUT ?digest=)."""
        response = self._send("POST", f"{self._prefix}/blobs/uploads/", ok=(202,),
                              what="start upload", headers={"Content-Length": "0"})
        return UploadSession(self, response.headers["location"])

    def mount_blob(self, digest: str, from_repository: str) -> bool:
        """Link a blob another repository of the same registry has, without moving bytes.
        False if the registry declined (it then opened an upload session, which is dropped)."""
        response = self._send("POST", f"{self._prefix}/blobs/uploads/", ok=(201, 202),
                              what=f"mount {digest}",
                              params={"mount": _digest(digest), "from": from_repository})
        if response.status_code == 201:
            return True
        UploadSession(self, response.headers["location"]).cancel()
        return False

    def delete_blob(self, digest: str) -> bool:
        """Unlink the blob from the repository; False if it was not there."""
        response = self._send("DELETE", self._blob_url(digest), ok=(202, 404),
                              what=f"DELETE {digest}")
        return response.status_code == 202

    # -- manifests and tags ------------------------------------------------------------------

    def _manifest_url(self, reference: str) -> str:
        return f"{self._prefix}/manifests/{reference}"

    def put_manifest(self, reference: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
        """Store a manifest under a tag or its digest; returns its digest."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        response = self._send("PUT", self._manifest_url(reference), ok=(201,),
                              what=f"PUT manifest {reference}", content=body,
                              headers={"Content-Type": media_type})
        echoed = response.headers.get("docker-content-digest")
        if echoed is not None and echoed != digest:
            raise IntegrityError(f"OCI registry stored manifest {reference} as {echoed}, "
                                 f"not {digest}")
        return digest

    def get_manifest(self, reference: str,
                     accept: tuple[str, ...] = MANIFEST_TYPES) -> OciManifestBytes:
        """A manifest by tag or digest; its bytes are checked against the digest asked for
        (or, by tag, the one the registry names)."""
        response = self._send("GET", self._manifest_url(reference), what=f"manifest {reference}",
                              headers={"Accept": ", ".join(accept)})
        body = response.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        claimed = reference if reference.startswith("sha256:") else \
            response.headers.get("docker-content-digest", digest)
        if claimed != digest:
            raise IntegrityError(f"manifest {reference} from {self.location} is corrupt: "
                                 f"its bytes hash to {digest}, not {claimed}")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return OciManifestBytes(body, media_type, digest)

    def head_manifest(self, reference: str,
                      accept: tuple[str, ...] = MANIFEST_TYPES) -> ManifestInfo | None:
        response = self._send("HEAD", self._manifest_url(reference), ok=(200, 404),
                              what=f"HEAD manifest {reference}",
                              headers={"Accept": ", ".join(accept)})
        if response.status_code == 404:
            return None
        return ManifestInfo(response.headers.get("docker-content-digest", ""),
                            response.headers.get("content-type", "").split(";")[0].strip(),
                            int(response.headers.get("content-length", "0")))

    def delete_manifest(self, digest: str) -> bool:
        response = self._send("DELETE", self._manifest_url(_digest(digest)), ok=(202, 404),
                              what=f"DELETE manifest {digest}")
        return response.status_code == 202

    def tags(self, page_size: int = 1000) -> list[str]:
        """Every tag of the repository, following the ``Link`` pages: on the registry's own
        origin only (a page elsewhere would get its credentials' requests), never one twice,
        at most ``MAX_TAG_PAGES``."""
        out: list[str] = []
        url = httpx.URL(self.location.base).join(f"{self._prefix}/tags/list?n={page_size}")
        seen: set[str] = set()
        while True:
            if len(seen) >= MAX_TAG_PAGES or str(url) in seen:
                raise RemoteError(f"OCI registry {self.location.base}: tags: more than "
                                  f"{MAX_TAG_PAGES} pages, or a page twice; refused")
            seen.add(str(url))
            response = self._send("GET", url, ok=(200, 404), what="tags")
            if response.status_code == 404:  # a repository with nothing pushed yet
                return out
            out.extend(response.json().get("tags") or [])
            following = response.links.get("next", {}).get("url")
            if following is None:
                return out
            url = url.join(following)
            if not same_origin(url, self.location.base):
                raise RemoteError(f"OCI registry {self.location.base}: tags: the next page is "
                                  f"on another origin ({url.scheme}://{url.netloc.decode()}); "
                                  "refused")


class UploadSession:
    """One blob upload in progress; the registry moves its URL after every chunk."""

    def __init__(self, client: OciClient, location: str) -> None:
        self._client = client
        self.url = location
        self.offset = 0

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        end = self.offset + len(chunk) - 1
        response = self._client._send(
            "PATCH", self.url, ok=(202,), what="upload chunk", content=chunk,
            headers={"Content-Type": OCTETS, "Content-Range": f"{self.offset}-{end}"})
        self.url = response.headers.get("location", self.url)
        self.offset = end + 1

    def finish(self, digest: str, last: bytes = b"") -> None:
        """Close the upload; the registry refuses it unless the bytes hash to ``digest``."""
        url = httpx.URL(self.url).copy_merge_params({"digest": _digest(digest)})
        self._client._send("PUT", url, ok=(201,), what=f"finish upload of {digest}",
                           content=last, headers={"Content-Type": OCTETS})

    def cancel(self) -> None:
        """Drop the upload's partial bytes (best effort: the registry purges stale ones)."""
        try:
            self._client._send("DELETE", self.url, ok=(204, 404), what="cancel upload")
        except RegistryError as exc:
            log.info("could not cancel an OCI upload (%s); the registry purges it later", exc)
