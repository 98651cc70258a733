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
from registry_support import ADMIN_TOKEN, flip_byte, folder_bytes

from loramux.registry.errors import (
    BlobStoreUnavailable,
    Conflict,
    IntegrityError,
    InvalidName,
    NotFound,
)
from loramux.registry.oci import OCI_MANIFEST, Credentials, OciClient, OciLocation
from loramux.registry.remote import RemoteRegistry
from loramux.registry.store import LocalRegistry
from loramux.support.launch import RegistryProcess
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


# -- the registry on an OCI blob store ---------------------------------------------------------


@pytest.fixture
def own_oci(tmp_path: Path):
    """A registry process of this test's own: its bytes may be flipped, it may be stopped."""
    require_docker_registry()
    registry = OciRegistry(tmp_path / "oci")
    registry.start()
    yield registry
    registry.stop()


def _oci_store(root: Path, oci: OciRegistry, repository: str = "loramux/blobs") -> LocalRegistry:
    return LocalRegistry(root, blobs=oci.location(repository), actor="tester")


def test_push_pull_gc_on_oci(own_oci: OciRegistry, adapters, tmp_path: Path) -> None:
    store = _oci_store(tmp_path / "store", own_oci)
    a = store.push(adapters["a"], "on-oci")
    store.push(adapters["b"], "on-oci")
    files = {f.sha256 for f in a.files} | {f.sha256 for f in store.resolve("on-oci@2").files}
    assert len(files) == 3  # a and b share their config: stored once
    assert files <= own_oci.linked_blobs("loramux/blobs")  # (+ each version's artifact config)
    assert not (tmp_path / "store" / "blobs").exists()  # nothing in the folder store
    assert store.blobs.temp_files() == []  # staged copies dropped once committed
    assert folder_bytes(store.pull("on-oci@1", tmp_path / "out")) == folder_bytes(adapters["a"])
    store.close()
    # the root remembers its store: reopening without --blobs finds the same blobs
    again = LocalRegistry(tmp_path / "store")
    assert folder_bytes(again.pull("on-oci@2", tmp_path / "out2")) == folder_bytes(adapters["b"])
    with pytest.raises(Conflict, match="keeps its blobs in oci://"):
        LocalRegistry(tmp_path / "store", blobs=own_oci.location("loramux/other"))
    again.delete("on-oci@1")
    report = again.gc()
    weights_a = a.file("adapter_model.safetensors").sha256
    assert (report.removed_blobs, report.kept_blobs) == (1, 2)
    assert weights_a not in own_oci.linked_blobs("loramux/blobs")
    assert again.verify().ok
    again.close()


def test_flipped_byte_in_the_oci_store_is_caught(own_oci: OciRegistry, http_server, adapters,
                                                 tmp_path: Path) -> None:
    store = _oci_store(tmp_path / "store", own_oci)
    manifest = store.push(adapters["a"], "rot")
    weights = manifest.file("adapter_model.safetensors")
    flip_byte(own_oci.blob_data(weights.sha256))
    http_server.use(store)
    remote = RemoteRegistry(http_server.url, token=ADMIN_TOKEN)
    for registry in (store, remote):  # in-process, and through the registry's HTTP server
        dest = tmp_path / "out" / type(registry).__name__
        with pytest.raises(IntegrityError, match=weights.sha256):
            registry.pull("rot@1", dest)
        assert not dest.exists()
    got = httpx.get(f"{http_server.url}/v2/blobs/{weights.digest}",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert got.status_code == 422 and got.json()["error"]["type"] == "IntegrityError"

    report = remote.verify()
    [problem] = report.problems
    assert (problem.digest, problem.problem, problem.used_by) == (weights.digest, "corrupt",
                                                                  ["rot@1"])
    assert weights.sha256 not in own_oci.linked_blobs("loramux/blobs")  # deleted from the repo
    with pytest.raises(NotFound, match=weights.sha256):
        store.pull("rot@1", tmp_path / "out" / "again")
    assert [p.problem for p in store.verify().problems] == ["missing"]
    remote.close()


def test_oci_outage_is_503_and_recovers_without_restart(own_oci: OciRegistry, adapters,
                                                        tmp_path: Path) -> None:
    root = tmp_path / "store"
    manifest = _oci_store(root, own_oci).push(adapters["a"], "outage")
    weights = manifest.file("adapter_model.safetensors")
    server = RegistryProcess(root, tmp_path / "registry.log",
                             ["--blobs", own_oci.location("loramux/blobs")],
                             env={"LORAMUX_REGISTRY_TOKENS": f"{ADMIN_TOKEN}:admin"})
    server.start()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    blob_url = f"{server.url}/v2/blobs/{weights.digest}"
    try:
        assert httpx.get(blob_url, headers=auth).content == \
            (adapters["a"] / "adapter_model.safetensors").read_bytes()
        own_oci.stop()
        for response in (httpx.get(blob_url, headers=auth),
                         httpx.get(f"{server.url}/health"),
                         httpx.put(f"{server.url}/v2/blobs/{_digest(b'new')}", headers=auth,
                                   content=b"new")):
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["type"] == "BlobStoreUnavailable", error
            assert "cannot answer" in error["message"] and own_oci.host not in response.text
            assert int(response.headers["retry-after"]) > 0
            log = (tmp_path / "registry.log").read_text()  # the detail, under the answer's id
            assert any(error["id"] in line and "cannot be reached" in line
                       for line in log.splitlines()), log
        with RemoteRegistry(server.url, token=ADMIN_TOKEN) as remote, \
                pytest.raises(BlobStoreUnavailable):
            remote.pull("outage@1", tmp_path / "pulled")
        assert httpx.get(f"{server.url}/v2/resolve", params={"ref": "outage"},
                         headers=auth).status_code == 200  # the index still answers
        own_oci.start()  # the same port
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert httpx.get(blob_url, headers=auth).status_code == 200
    finally:
        server.stop()


def test_a_head_answered_500_is_retried_and_a_put_is_not(monkeypatch) -> None:
    """CNCF distribution answers 500 to a HEAD while a concurrent upload links the same blob (seen
    with 8 pushers sharing files); a HEAD or GET is repeated, a state-changing request never."""
    digest = "sha256:" + "c7" * 32
    answers = {"HEAD": [500, 500, 200], "PUT": [500, 201]}
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return httpx.Response(answers[request.method].pop(0), headers={"content-length": "7"})

    monkeypatch.setattr("loramux.registry.oci.client._RETRY_DELAYS_S", (0, 0, 0))
    client = OciClient("oci+http://127.0.0.1:9/loramux/retry")
    client._http = httpx.Client(base_url="http://127.0.0.1:9",
                                transport=httpx.MockTransport(handle))
    assert client.blob_size(digest) == 7
    assert seen == ["HEAD"] * 3
    with pytest.raises(BlobStoreUnavailable):
        client.put_manifest("t", b"{}")
    assert seen[3:] == ["PUT"]
