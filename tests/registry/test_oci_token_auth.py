"""Bearer-token auth of the OCI client against a real docker-registry (CNCF distribution 2.8).

The registry runs with ``auth.token``: every request without a valid token is answered 401 with
a ``Bearer realm=…,service=…,scope=…`` challenge, and only tokens signed under the token server's
certificate (``rootcertbundle``) whose ``access`` claim covers the request are accepted. The
token server (tests/support/oci_token_server.py) is real HTTP on loopback: user ``alice`` may
pull and push ``loramux/*``, ``reader`` may only pull. Each test uses its own repository.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from registry_support import ADMIN_TOKEN, folder_bytes
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "support"))

from oci_registry import fresh_repository, require_docker_registry
from oci_token_server import TokenServer, User

from loramux.registry.cli import app
from loramux.registry.errors import BlobStoreUnavailable, NotFound
from loramux.registry.oci import Credentials, OciClient
from loramux.registry.oci.artifact import version_tag
from loramux.registry.oci.auth import ENV_OCI_PASSWORD, ENV_OCI_TOKEN, ENV_OCI_USERNAME
from loramux.registry.store import LocalRegistry
from loramux.support.oci_registry import OciRegistry

pytestmark = pytest.mark.timeout(120)

ALICE, READER = Credentials("alice", "s3cret"), Credentials("reader", "r3ad")
USERS = {
    "alice": User("s3cret", {"loramux/*": frozenset({"pull", "push"})}),
    "reader": User("r3ad", {"loramux/*": frozenset({"pull"})}),
}


class TokenRegistry:
    """A docker-registry that trusts only the tokens of ``tokens``."""

    def __init__(self, folder: Path) -> None:
        self.tokens = TokenServer(folder / "token-server", USERS)
        self.tokens.start()
        self.oci = OciRegistry(folder / "registry", token_auth=self.tokens.config())
        self.oci.start()

    def stop(self) -> None:
        self.oci.stop()
        self.tokens.stop()

    def client(self, repository: str, credentials: Credentials) -> OciClient:
        return OciClient(self.oci.location(repository), credentials=credentials)

    def fetches(self, since: int = 0) -> list:
        return self.tokens.requests[since:]


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    require_docker_registry()
    registry = TokenRegistry(tmp_path_factory.mktemp("oci-token"))
    yield registry
    registry.stop()


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch):
    """Set the store's OCI credentials the way an operator does: the environment."""

    def use(credentials: Credentials) -> None:
        monkeypatch.delenv(ENV_OCI_TOKEN, raising=False)
        monkeypatch.setenv(ENV_OCI_USERNAME, credentials.username or "")
        monkeypatch.setenv(ENV_OCI_PASSWORD, credentials.password or "")

    return use


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_store_pushes_and_pulls_through_bearer_tokens(token_registry: TokenRegistry, as_user,
                                                      adapters, tmp_path: Path) -> None:
    repository = fresh_repository("loramux/tok")
    location = token_registry.oci.location(repository)
    before = len(token_registry.tokens.requests)
    as_user(ALICE)
    store = LocalRegistry(tmp_path / "store", blobs=location, actor="tester")
    manifest = store.push(adapters["a"], "tok")  # blob HEADs and uploads, then the artifact PUT
    assert folder_bytes(store.pull("tok@1", tmp_path / "out")) == folder_bytes(adapters["a"])
    artifact = store.index.oci_digest("tok", 1)
    store.close()

    fetched = token_registry.fetches(before)
    assert fetched and all(r.user == "alice" and r.status == 200 for r in fetched)
    assert any(name == repository and set(actions) == {"pull", "push"}
               for r in fetched for name, actions in r.granted)
    # a token is kept and reused: far fewer fetches than requests (HEAD, POST, PUT per file…)
    assert len(fetched) <= 3, fetched

    alice = token_registry.client(repository, ALICE)
    weights = manifest.file("adapter_model.safetensors")
    assert alice.blob_size(weights.digest) == weights.size  # HEAD
    assert alice.tags() == [version_tag("tok", 1)]
    info = alice.head_manifest(version_tag("tok", 1))  # the artifact manifest PUT on commit
    assert info is not None and info.digest == artifact
    alice.close()

    # the registry really demands tokens: anonymous gets a token that grants nothing
    anonymous = token_registry.client(repository, Credentials())
    with pytest.raises(BlobStoreUnavailable, match="anonymous requests: did not grant it"):
        anonymous.get_blob(weights.digest)
    anonymous.close()


def test_wrong_password_is_a_clear_error(token_registry: TokenRegistry, as_user, adapters,
                                         http_server, tmp_path: Path, caplog) -> None:
    location = token_registry.oci.location(fresh_repository("loramux/tok"))
    as_user(Credentials("alice", "wrong"))
    store = LocalRegistry(tmp_path / "store", blobs=location, actor="tester")
    refused = (r"OCI token server http://127\.0\.0\.1:\d+/token asked for "
               r"repository:loramux/tok\S+ for user 'alice': refused \(HTTP 401 UNAUTHORIZED: "
               r"wrong user name or password\) \(set LORAMUX_OCI_USERNAME")
    with pytest.raises(BlobStoreUnavailable, match=refused):
        store.push(adapters["a"], "denied")
    with pytest.raises(NotFound):
        store.resolve("denied")  # no partial version

    # through the registry's HTTP API: a 503 with an error id, not a traceback; the token
    # server, the user and its answer are in the registry's log under that id, not the answer
    http_server.use(store)
    data = b"guarded"
    response = httpx.put(f"{http_server.url}/v2/blobs/{_digest(data)}", content=data,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "BlobStoreUnavailable" and error["id"] in error["message"]
    assert "alice" not in response.text and "token server" not in response.text
    logged = [r.getMessage() for r in caplog.records if error["id"] in r.getMessage()]
    assert logged and "wrong user name" in logged[0], caplog.text
    store.close()

    # and on the CLI: one readable line, the blob-store exit code
    result = CliRunner().invoke(app, ["--registry", str(tmp_path / "store"), "push",
                                      str(adapters["a"]), "--name", "denied"])
    assert result.exit_code == 9, result.output
    assert result.stderr.startswith("error: ") and "wrong user name or password" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_pull_only_token_cannot_push(token_registry: TokenRegistry, as_user, adapters,
                                     tmp_path: Path) -> None:
    location = token_registry.oci.location(fresh_repository("loramux/tok"))
    as_user(ALICE)
    LocalRegistry(tmp_path / "store", blobs=location, actor="alice").push(adapters["a"], "ro")

    as_user(READER)  # the same store, read by a user whose tokens only grant pull
    store = LocalRegistry(tmp_path / "store", actor="reader")
    assert folder_bytes(store.pull("ro@1", tmp_path / "out")) == folder_bytes(adapters["a"])
    before = len(token_registry.tokens.requests)
    with pytest.raises(BlobStoreUnavailable,
                       match=r"repository:loramux/tok\S+:(pull,push|push,pull) for user "
                             r"'reader': "
                             r"did not grant it"):
        store.push(adapters["b"], "ro")
    with pytest.raises(NotFound):
        store.resolve("ro@2")
    store.close()
    asked = token_registry.fetches(before)
    assert asked and all(r.user == "reader" for r in asked)
    assert all(actions == ("pull",) for r in asked for _, actions in r.granted if actions)


def test_expired_token_is_fetched_again(token_registry: TokenRegistry) -> None:
    repository = fresh_repository("loramux/tok")
    data = b"short-lived tokens"
    tokens = token_registry.tokens
    tokens.lifetime_s = 2
    try:
        client = token_registry.client(repository, ALICE)
        client.push_blob(data, _digest(data), len(data))
        time.sleep(2.5)  # the cached token is now dead at the registry
        before = len(tokens.requests)
        assert client.get_blob(_digest(data)) == data
        renewed = token_registry.fetches(before)
        assert [r.status for r in renewed] == [200] and renewed[0].user == "alice"
        client.close()
    finally:
        tokens.lifetime_s = 300


def test_cross_repository_mount_asks_for_each_scope(token_registry: TokenRegistry) -> None:
    source, target = fresh_repository("loramux/tok"), fresh_repository("loramux/tok")
    data = b"mounted, not copied"
    first = token_registry.client(source, ALICE)
    first.push_blob(data, _digest(data), len(data))
    second = token_registry.client(target, ALICE)
    before = len(token_registry.tokens.requests)
    assert second.mount_blob(_digest(data), source) is True
    [asked] = token_registry.fetches(before)
    # one scope parameter per entry of the challenge (the token spec), never one joined string
    # (distribution lists a scope's actions in no fixed order)
    assert len(asked.scopes) == 2
    assert {(name, frozenset(actions)) for name, actions in asked.granted} == {
        (target, frozenset({"pull", "push"})), (source, frozenset({"pull"}))}
    assert second.get_blob(_digest(data)) == data
    first.close()
    second.close()


def test_token_server_answer_is_never_taken_for_the_registry_answer(
        token_registry: TokenRegistry) -> None:
    tokens = token_registry.tokens
    tokens.without_token = True  # 200 with JSON but no token in it
    try:
        client = token_registry.client(fresh_repository("loramux/tok"), ALICE)
        with pytest.raises(BlobStoreUnavailable, match="answered without a token"):
            client.blob_size(_digest(b"anything"))  # not the token server's Content-Length
        client.close()
    finally:
        tokens.without_token = False
