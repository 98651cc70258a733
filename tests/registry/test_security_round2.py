"""Security round 2, the registry side: what a 5xx tells a client, where the OCI client sends
its secrets, what an OCI registry may make it read, evaluation records' size, out-of-range times.

Real parts throughout: the registry's HTTP server (the session's ``http_server``), a real
docker-registry with a real token server, and for the lies no real registry tells, a hostile
registry on loopback (tests/support/oci_decoy.py) with a second one on 127.0.0.2 standing for
another host.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import oci_registry as oci_support
import pytest
from conftest import COMBOS, Backend
from registry_support import READ_TOKEN, WRITE_TOKEN

sys.path.insert(0, str(Path(__file__).parents[1] / "support"))

from oci_decoy import DecoyRegistry
from oci_registry import fresh_repository, require_docker_registry
from oci_token_server import TokenServer, User

from loramux.registry.errors import BlobStoreUnavailable, InvalidRequest, RemoteError
from loramux.registry.evaluations import TEXT_LIMITS, Evaluation, SideScore
from loramux.registry.oci import Credentials, OciClient
from loramux.registry.oci.auth import may_send_credentials
from loramux.registry.oci.client import MAX_ANSWER_BYTES, MAX_TAG_PAGES
from loramux.registry.store import LocalRegistry
from loramux.support.oci_registry import OciRegistry

pytestmark = pytest.mark.timeout(120)
SQLITE_COMBOS = [c for c in COMBOS if c.blobs == "folder" and c.index == "sqlite"]
# the store itself on either index (the remote client's own conversion of a naive time is not
# this test's; the HTTP tests below send the raw text)
LOCAL_COMBOS = [c for c in COMBOS if c.blobs == "folder" and c.kind == "local"]
ANOTHER_HOST = "127.0.0.2"  # loopback, but not the registry's host
oci_registry = oci_support.oci_registry  # the session's docker-registry fixture


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def decoys() -> Iterator[tuple[DecoyRegistry, DecoyRegistry]]:
    """(the registry the client talks to, another host it points at)."""
    here, there = DecoyRegistry("127.0.0.1"), DecoyRegistry(ANOTHER_HOST)
    here.start()
    there.start()
    here.elsewhere = there.url
    yield here, there
    here.stop()
    there.stop()


# -- 7: a 5xx answers an error id and a fixed reason; the detail is in the log ----------------


def test_a_503_answers_an_id_and_the_log_holds_the_detail(http_server, tmp_path: Path,
                                                          caplog, monkeypatch) -> None:
    monkeypatch.setenv("LORAMUX_OCI_USERNAME", "ops-user")
    monkeypatch.setenv("LORAMUX_OCI_PASSWORD", "ops-password")
    port = _closed_port()  # nothing listens: the blob store is down
    store = LocalRegistry(tmp_path / "store", blobs=f"oci://127.0.0.1:{port}/loramux/down")
    http_server.use(store, anonymous_read=True)
    try:
        answers = [
            httpx.get(f"{http_server.url}/health"),
            httpx.get(f"{http_server.url}/v2/whoami",
                      headers={"Authorization": f"Bearer {READ_TOKEN}"}),
            httpx.put(f"{http_server.url}/v2/blobs/{_digest(b'x')}", content=b"x",
                      headers={"Authorization": f"Bearer {WRITE_TOKEN}"}),
        ]
    finally:
        store.close()
    failed = [r for r in answers if r.status_code == 503]
    assert len(failed) >= 2, [r.text for r in answers]  # /health and the upload at least
    for response in failed:
        error = response.json()["error"]
        assert error["type"] == "BlobStoreUnavailable" and error["code"]
        assert error["message"] == ("the registry's blob store cannot answer; retry later "
                                    f"(error id {error['id']}; the detail is in the registry's "
                                    "log)")
        assert str(port) not in response.text and "ops-user" not in response.text
        logged = [r.getMessage() for r in caplog.records if error["id"] in r.getMessage()]
        assert len(logged) == 1 and f"127.0.0.1:{port}" in logged[0], caplog.text


def test_a_4xx_still_says_what_was_wrong(http_server, tmp_path: Path) -> None:
    """Only 5xx are hidden: a client's own mistake is still explained to it."""
    store = LocalRegistry(tmp_path / "store")
    http_server.use(store)
    try:
        response = httpx.get(f"{http_server.url}/v2/resolve", params={"ref": "nope"},
                             headers={"Authorization": f"Bearer {READ_TOKEN}"})
    finally:
        store.close()
    assert response.status_code == 404 and "nope" in response.json()["error"]["message"]
    assert "id" not in response.json()["error"]


def test_an_unknown_blob_on_an_oci_store_does_not_name_the_oci_registry(
        http_server, oci_registry: OciRegistry, tmp_path: Path) -> None:
    """A 404 is answered as it is (it is the client's miss): so it names no OCI host."""
    store = LocalRegistry(tmp_path / "store", blobs=oci_registry.location(fresh_repository()))
    http_server.use(store)
    try:
        response = httpx.get(f"{http_server.url}/v2/blobs/{_digest(b'never pushed')}",
                             headers={"Authorization": f"Bearer {READ_TOKEN}"})
    finally:
        store.close()
    assert response.status_code == 404, response.text
    assert str(oci_registry.port) not in response.text and "BLOB_UNKNOWN" not in response.text


# -- 9: credentials only where they belong ----------------------------------------------------


def test_a_plain_http_realm_on_another_host_never_gets_the_password(tmp_path: Path) -> None:
    """The registry (real docker-registry) names a token realm on another host over plain
    http: the user and password are not sent there, and the client says why."""
    require_docker_registry()
    tokens = TokenServer(tmp_path / "tokens", {"alice": User("s3cret", {"loramux/*": frozenset(
        {"pull", "push"})})}, host=ANOTHER_HOST)
    tokens.start()
    oci = OciRegistry(tmp_path / "registry", token_auth=tokens.config())
    oci.start()
    try:
        client = OciClient(oci.location(fresh_repository()),
                           credentials=Credentials("alice", "s3cret"))
        with pytest.raises(BlobStoreUnavailable, match="user and password were not sent"):
            client.push_blob(b"secret-guarded", _digest(b"secret-guarded"), 14)
        client.close()
    finally:
        oci.stop()
        tokens.stop()
    assert all(r.authorization is None for r in tokens.requests), tokens.requests


def test_which_realms_may_get_credentials() -> None:
    registry = "http://127.0.0.1:5000"
    assert may_send_credentials("https://auth.example.com/token", "https://reg.example.com")
    assert may_send_credentials("http://127.0.0.1:5001/token", registry)  # its own host
    assert not may_send_credentials("http://127.0.0.2:5001/token", registry)
    assert not may_send_credentials("http://reg.example.com:81/t", "https://reg.example.com")


@pytest.mark.parametrize("credentials", [Credentials(token="tok-secret"),
                                         Credentials("alice", "pw-secret")],
                         ids=["bearer", "basic"])
def test_no_secret_goes_to_a_url_the_registry_points_at(decoys, credentials) -> None:
    """The registry answers an upload's ``Location`` on another host: the upload goes there
    (the registry's choice) but neither its token nor the password does."""
    here, there = decoys
    here.token = credentials.token or "never-given"
    if credentials.token is None:
        here.expect_basic = credentials.basic()
    client = OciClient(f"oci+http://{here.netloc}/loramux/x", credentials=credentials)
    client.push_blob(b"data", _digest(b"data"), 4)
    client.close()
    assert any(s.path.startswith("/upload/1?") for s in there.requests), there.requests
    assert there.authorizations() == [], there.requests
    assert here.authorizations(), "the registry itself got the credentials"


# -- 18: bounded answers from an OCI registry -------------------------------------------------


def test_a_huge_manifest_is_refused_without_being_read_whole(decoys) -> None:
    here, _ = decoys
    here.token = None
    here.manifest_bytes = 64 << 20
    client = OciClient(f"oci+http://{here.netloc}/loramux/x", credentials=Credentials())
    with pytest.raises(RemoteError, match=f"more than {MAX_ANSWER_BYTES} bytes"):
        client.get_manifest("v1")
    client.close()
    time.sleep(0.3)  # the decoy notices the hang-up
    assert here.sent_bytes < 32 << 20, here.sent_bytes


def test_tag_pages_without_end_are_refused(decoys) -> None:
    here, _ = decoys
    here.token, here.elsewhere = None, None
    here.tag_pages = MAX_TAG_PAGES * 3
    client = OciClient(f"oci+http://{here.netloc}/loramux/x", credentials=Credentials())
    with pytest.raises(RemoteError, match=f"more than {MAX_TAG_PAGES} pages"):
        client.tags(page_size=1)
    client.close()
    assert len(here.requests) <= MAX_TAG_PAGES


def test_a_tags_page_on_another_host_is_not_followed(decoys) -> None:
    here, there = decoys
    here.token, here.tag_pages = "tok-secret", 2
    client = OciClient(f"oci+http://{here.netloc}/loramux/x",
                       credentials=Credentials(token="tok-secret"))
    with pytest.raises(RemoteError, match="another origin"):
        client.tags()
    client.close()
    assert there.requests == []


# -- 11: evaluation records are bounded --------------------------------------------------------


def _evaluation(manifest, **text: str) -> Evaluation:
    side = SideScore(version=manifest.version, digest=manifest.digest, score=0.9, exact=0.9, n=4)
    fields = {"scorer": "exact", "eval_digest": "sha256:" + "e" * 64,
              "server": "http://127.0.0.1:9", "reason": "because", **text}
    return Evaluation(alias="prod", candidate=side, threshold=0.5, max_regression=0.0,
                      passed=True, **fields)


@pytest.mark.parametrize("backend", SQLITE_COMBOS, ids=lambda c: c.id, indirect=True)
@pytest.mark.parametrize("field", sorted(TEXT_LIMITS))
def test_oversized_evaluation_text_is_refused(backend: Backend, adapters, field: str) -> None:
    reg = backend.registry
    manifest = reg.push(adapters["a"], "helper")
    limit = TEXT_LIMITS[field]
    with pytest.raises(InvalidRequest, match=field):
        reg.record_evaluation("helper", _evaluation(manifest, **{field: "x" * (limit + 1)}))
    assert reg.evaluations("helper", 1) == []
    assert [e.action for e in reg.log(name="helper")] == ["push"]
    reg.record_evaluation("helper", _evaluation(manifest, **{field: "x" * limit}))  # at the limit


def test_an_oversized_evaluation_body_is_an_openai_shaped_400(http_server, tmp_path: Path,
                                                              adapters) -> None:
    store = LocalRegistry(tmp_path / "store")
    http_server.use(store)
    try:
        manifest = store.push(adapters["a"], "helper")
        body = _evaluation(manifest, reason="x" * (5 << 20)).model_dump(mode="json")
        response = httpx.post(f"{http_server.url}/v2/adapters/helper/evaluations", json=body,
                              headers={"Authorization": f"Bearer {WRITE_TOKEN}"}, timeout=60)
        assert response.status_code == 400, response.text[:300]
        error = response.json()["error"]
        assert error["type"] == "InvalidRequest" and "body.reason" in error["message"]
        assert store.evaluations("helper", 1) == []
        schema = httpx.get(f"{http_server.url}/openapi.json").json()["components"]["schemas"]
        limits = {k: v.get("maxLength") for k, v in schema["EvaluationBody"]["properties"].items()}
        assert {k: limits[k] for k in ("scorer", "eval_digest", "server", "reason")} == {
            k: TEXT_LIMITS[k] for k in ("scorer", "eval_digest", "server", "reason")}
    finally:
        store.close()


# -- 12: out-of-range times are the caller's 400 ----------------------------------------------


@pytest.mark.parametrize("backend", LOCAL_COMBOS, ids=lambda c: c.id, indirect=True)
def test_out_of_range_times_are_invalid_requests(backend: Backend) -> None:
    reg = backend.registry
    year_one = datetime(1, 1, 1)  # naive: local time, which UTC puts before year 1 or after
    with pytest.raises(InvalidRequest, match="out of range"):
        reg.log(since=year_one)
    with pytest.raises(InvalidRequest, match="out of range"):
        reg.alias_at("helper", "prod", year_one)
    assert reg.log(since=datetime.fromisoformat("0001-01-02T00:00:00+00:00")) == []


@pytest.mark.parametrize("path", ["/v2/log?since=0001-01-01T00:00:00",
                                  "/v2/log?until=0001-01-01T00:00:00",
                                  "/v2/alias-at?name=helper&alias=prod&when=0001-01-01T00:00:00"])
def test_out_of_range_times_over_http_are_a_400(http_server, tmp_path: Path, path: str) -> None:
    store = LocalRegistry(tmp_path / "store")
    http_server.use(store)
    try:
        response = httpx.get(f"{http_server.url}{path}",
                             headers={"Authorization": f"Bearer {READ_TOKEN}"})
    finally:
        store.close()
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "InvalidRequest" and "out of range" in error["message"]
