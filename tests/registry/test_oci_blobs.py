"""The OCI distribution client and the OCI blob store against a real docker-registry.

The registry-level behaviours (push, pull, gc, verify) run in the contract suite's ``oci``
backends; here: the client's verbs, its digest checks, auth, and the outage must-holds.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "support"))

import oci_registry as oci_support
from oci_registry import fresh_repository, require_docker_registry

from loramux.registry.errors import (
    BlobStoreUnavailable,
    IntegrityError,
    InvalidName,
    NotFound,
)
from loramux.registry.oci import OCI_MANIFEST, Credentials, OciClient, OciLocation
from loramux.support.oci_registry import OciRegistry

oci_registry = oci_support.oci_registry  # the session's registry fixture


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def client(oci_registry: OciRegistry):
    with_client = OciClient(oci_registry.location(fresh_repository()), chunk_bytes=1024,
                            credentials=Credentials())
    yield with_client
    with_client.close()


def test_location_scheme_rule() -> None:
    assert OciLocation.parse("oci://127.0.0.1:5000/a/b").base == "http://127.0.0.1:5000"
    assert OciLocation.parse("oci://localhost/a").base == "http://localhost"
    assert OciLocation.parse("oci://ghcr.io/org/adapters").base == "https://ghcr.io"
    assert OciLocation.parse("oci+http://10.0.0.5:5000/a").base == "http://10.0.0.5:5000"
    assert OciLocation.parse("oci+https://127.0.0.1:5000/a").base == "https://127.0.0.1:5000"
    assert str(OciLocation.parse("oci://ghcr.io/org/adapters/")) == "oci://ghcr.io/org/adapters"
    for bad in ("oci://host/UPPER", "oci://host/", "s3://host/repo", "oci://ho st/r", "oci:x"):
        with pytest.raises(InvalidName):
            OciLocation.parse(bad)


def test_blob_round_trip_monolithic_and_chunked(client: OciClient) -> None:
    small, large = b"small blob", os.urandom(5000)  # chunk_bytes=1024: large takes 5 PATCHes
    for data in (small, large):
        digest = _digest(data)
        assert client.blob_size(digest) is None
        client.push_blob(data, digest, len(data))
        assert client.blob_size(digest) == len(data)
        assert client.get_blob(digest) == data
        out = io.BytesIO()
        assert client.download_blob(digest, out) == len(data) and out.getvalue() == data
    assert client.delete_blob(_digest(small)) is True
    assert client.blob_size(_digest(small)) is None
    assert client.delete_blob(_digest(small)) is False
    with pytest.raises(NotFound):
        client.get_blob(_digest(small))


def test_upload_with_the_wrong_digest_is_refused(client: OciClient) -> None:
    data = b"these bytes"
    with pytest.raises(IntegrityError):
        client.push_blob(data, _digest(b"other bytes"), len(data))
    assert client.blob_size(_digest(b"other bytes")) is None


def test_flipped_byte_is_refused_on_read(client: OciClient, oci_registry: OciRegistry) -> None:
    data = os.urandom(3000)
    digest = _digest(data)
    client.push_blob(data, digest, len(data))
    path = oci_registry.blob_data(digest[7:])
    raw = bytearray(path.read_bytes())
    raw[1234] ^= 0x01
    path.write_bytes(bytes(raw))
    out = io.BytesIO()
    with pytest.raises(IntegrityError, match=digest):
        client.download_blob(digest, out)
    assert client.hash_blob(digest) == (hashlib.sha256(raw).hexdigest(), len(raw))
    path.write_bytes(data)  # the data file is shared by every repository of the registry


def test_manifests_tags_and_mount(client: OciClient, oci_registry: OciRegistry) -> None:
    config, layer = b"{}", b"layer bytes"
    for blob in (config, layer):
        client.push_blob(blob, _digest(blob), len(blob))
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.test",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/octet-stream", "digest": _digest(layer),
                    "size": len(layer)}],
    }
    body = httpx.Request("POST", "http://x", json=manifest).content
    digest = client.put_manifest("v1", body, OCI_MANIFEST)
    assert digest == _digest(body)
    client.put_manifest("v2", body, OCI_MANIFEST)
    got = client.get_manifest("v1")
    assert (got.body, got.media_type, got.digest) == (body, OCI_MANIFEST, digest)
    assert client.get_manifest(digest).body == body
    info = client.head_manifest("v2")
    assert info is not None and (info.digest, info.size) == (digest, len(body))
    assert client.head_manifest("v3") is None
    assert sorted(client.tags(page_size=1)) == ["v1", "v2"]  # follows the Link pages

    other = OciClient(oci_registry.location(fresh_repository()), credentials=Credentials())
    assert other.tags() == []
    assert other.mount_blob(_digest(layer), client.location.repository) is True
    assert other.get_blob(_digest(layer)) == layer
    assert other.mount_blob(_digest(b"nowhere"), client.location.repository) is False
    assert oci_registry.uploads(other.location.repository) == []  # declined mount: no session
    other.close()
    assert client.delete_manifest(digest) is True
    assert client.head_manifest("v1") is None


def test_unreachable_registry_is_unavailable() -> None:
    client = OciClient("oci://127.0.0.1:9/nothing/here", credentials=Credentials())
    with pytest.raises(BlobStoreUnavailable, match="cannot be reached"):
        client.blob_size(_digest(b"x"))


def test_basic_auth(tmp_path: Path) -> None:
    require_docker_registry()
    registry = OciRegistry(tmp_path / "auth", users={"alice": "s3cret"})
    registry.start()
    try:
        location = registry.location("private/adapters")
        data = b"guarded"
        good = OciClient(location, credentials=Credentials("alice", "s3cret"))
        good.push_blob(data, _digest(data), len(data))
        assert good.get_blob(_digest(data)) == data
        for creds in (Credentials(), Credentials("alice", "wrong")):
            bad = OciClient(location, credentials=creds)
            with pytest.raises(BlobStoreUnavailable, match="credentials refused"):
                bad.get_blob(_digest(data))
    finally:
        registry.stop()
