"""What only the HTTP server can get wrong: auth, the wire protocol, its own validation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from registry_support import READ_TOKEN, WRITE_TOKEN

from loramux.registry import (
    BlobMissing,
    Forbidden,
    InvalidName,
    Limits,
    PickleWeights,
    RemoteRegistry,
    TooLarge,
    Unauthorized,
)
from loramux.registry.errors import RegistryError
from loramux.registry.http.auth import TokenAuth, parse_tokens
from loramux.registry.manifest import FileEntry, PushRequest
from loramux.registry.store import LocalRegistry

pytestmark = pytest.mark.timeout(120)  # processes and servers: never hang CI


@pytest.fixture
def remote(http_server, tmp_path: Path):
    store = LocalRegistry(tmp_path / "store", actor="tester")
    http_server.use(store)
    client = RemoteRegistry(http_server.url, token=WRITE_TOKEN)
    yield store, client, http_server
    client.close()
    store.close()


def _raw(server, token: str | None = WRITE_TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def _blobs(store: LocalRegistry) -> list[str]:
    return store.blobs.all_hex()


def test_tokens_and_scopes(remote, adapters) -> None:
    store, writer, server = remote
    writer.push(adapters["a"], "guarded", alias="prod")
    before = _blobs(store)

    with RemoteRegistry(server.url, token=READ_TOKEN) as reader:
        assert reader.resolve("guarded:prod").version == 1
        with pytest.raises(Forbidden, match="write"):
            reader.push(adapters["b"], "guarded")
        with pytest.raises(Forbidden):
            reader.alias_set("guarded", "prod", 1)
        with pytest.raises(Forbidden):
            reader.delete("guarded@1", force=True)
        with pytest.raises(Forbidden):
            reader.gc()
    with RemoteRegistry(server.url, token="") as anonymous:
        with pytest.raises(Unauthorized, match="LORAMUX_TOKEN"):
            anonymous.resolve("guarded")
        with pytest.raises(Unauthorized):
            anonymous.push(adapters["b"], "guarded")
    with RemoteRegistry(server.url, token="not-a-token") as wrong, pytest.raises(Unauthorized):
        wrong.list()
    assert _blobs(store) == before
    assert [v.version for v in store.list()] == [1]

    server.use(store, anonymous_read=True)
    with RemoteRegistry(server.url, token="") as anonymous:
        assert anonymous.resolve("guarded").version == 1
        with pytest.raises(Forbidden):
            anonymous.push(adapters["b"], "guarded")
    # the write scope also guards the upload itself, not only the client's pre-check
    with _raw(server, READ_TOKEN) as http:
        r = http.put(f"/v2/blobs/sha256:{'0' * 64}", content=b"x")
        assert r.status_code == 403
        assert r.json()["error"]["type"] == "Forbidden"
    with _raw(server, None) as http:
        r = http.put(f"/v2/blobs/sha256:{'0' * 64}", content=b"x")
        assert r.status_code == 403  # anonymous may read only


def test_error_envelope_and_openapi(remote) -> None:
    _, _, server = remote
    with _raw(server) as http:
        r = http.get("/v2/resolve", params={"ref": "missing@1"})
        assert r.status_code == 404
        assert r.json() == {"error": {"message": "no adapter named 'missing'",
                                      "type": "NotFound", "code": "not_found"}}
        r = http.get("/v2/resolve", params={"ref": "../etc"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_name")
        r = http.get("/v2/resolve")
        assert (r.status_code, r.json()["error"]["type"]) == (400, "InvalidRequest")
        unauthorized = httpx.get(f"{server.url}/v2/adapters")
        assert unauthorized.status_code == 401
        assert unauthorized.headers["www-authenticate"] == "Bearer"
        schema = http.get("/openapi.json").json()
        assert {"/v2/resolve", "/v2/blobs/{digest}", "/v2/adapters/{name}/versions",
                "/v2/log", "/health"} <= set(schema["paths"])
        assert http.get("/health").json() == {"status": "ok"}


def test_blob_download_is_streamed_with_digest_headers(remote, adapters) -> None:
    _, client, server = remote
    manifest = client.push(adapters["a"], "dl")
    weights = manifest.file("adapter_model.safetensors")
    with _raw(server) as http, http.stream("GET", f"/v2/blobs/{weights.digest}") as r:
        assert r.status_code == 200
        assert r.headers["x-content-digest"] == weights.digest
        assert int(r.headers["content-length"]) == weights.size
        body = b"".join(r.iter_bytes())
    assert hashlib.sha256(body).hexdigest() == weights.sha256
    with _raw(server) as http:
        head = http.head(f"/v2/blobs/{weights.digest}")
        assert head.status_code == 200 and head.content == b""
        assert http.head(f"/v2/blobs/sha256:{'1' * 64}").status_code == 404
        assert http.get("/v2/resolve", params={"ref": "dl"}).headers["x-adapter-digest"] == (
            manifest.digest)


def test_upload_is_hashed_and_refused_on_mismatch(remote) -> None:
    store, _, server = remote
    data = b"some bytes"
    wrong = "sha256:" + hashlib.sha256(b"other bytes").hexdigest()
    with _raw(server) as http:
        r = http.put(f"/v2/blobs/{wrong}", content=data)
        assert (r.status_code, r.json()["error"]["type"]) == (422, "IntegrityError")
        assert _blobs(store) == [] and list(store.blobs.tmp.iterdir()) == []
        right = hashlib.sha256(data).hexdigest()
        r = http.put(f"/v2/blobs/sha256:{right}", content=data)
        assert r.status_code == 201 and r.json() == {"digest": f"sha256:{right}", "size": 10}
        assert _blobs(store) == [right]


def test_oversized_uploads_get_413_and_store_nothing(remote, adapters) -> None:
    store, client, server = remote
    server.use(LocalRegistry(store.root, limits=Limits(max_total_bytes=1000)))
    big = b"x" * 5000
    digest = "sha256:" + hashlib.sha256(big).hexdigest()
    with _raw(server) as http:
        r = http.put(f"/v2/blobs/{digest}", content=big)  # refused on Content-Length
        assert (r.status_code, r.json()["error"]["type"]) == (413, "TooLarge")

        def chunks():  # no Content-Length: refused while streaming
            for _ in range(5):
                yield b"x" * 1000

        r = http.put(f"/v2/blobs/{digest}", content=chunks())
        assert r.status_code == 413
    with pytest.raises(TooLarge, match="1000"):
        client.push(adapters["a"], "huge")  # the client checks the server's limits first
    assert _blobs(store) == [] and list(store.blobs.tmp.iterdir()) == []
    assert store.list() == []


def test_json_bodies_are_bounded(remote) -> None:
    _, _, server = remote
    huge = {"files": [], "description": "x" * (17 << 20)}
    with _raw(server) as http:
        r = http.post("/v2/adapters/big/versions", json=huge)
        assert (r.status_code, r.json()["error"]["type"]) == (413, "TooLarge")


def _upload(http: httpx.Client, data: bytes) -> FileEntry:
    hex_ = hashlib.sha256(data).hexdigest()
    assert http.put(f"/v2/blobs/sha256:{hex_}", content=data).status_code == 201
    return FileEntry(path="x", size=len(data), sha256=hex_)


def test_server_validates_manifests_itself(remote, adapters) -> None:
    """A client that skips local validation still cannot store a bad version."""
    store, _, server = remote
    config = (adapters["a"] / "adapter_config.json").read_bytes()
    weights = (adapters["a"] / "adapter_model.safetensors").read_bytes()
    with _raw(server) as http:
        c, w = _upload(http, config), _upload(http, weights)
        good = [c.model_copy(update={"path": "adapter_config.json"}),
                w.model_copy(update={"path": "adapter_model.safetensors"})]

        def post(name: str, files: list[FileEntry]) -> httpx.Response:
            body = PushRequest(files=files).model_dump(mode="json")
            return http.post(f"/v2/adapters/{name}/versions", json=body)

        # Each refusal's exact status and type: a 500 (a crash on bad input) is no refusal.
        cases = {
            "traversal": ("ok", [good[0], w.model_copy(update={"path": "../../etc/passwd"})],
                          400, "InvalidName"),
            "hidden": ("ok", [*good, c.model_copy(update={"path": ".git/config"})],
                       400, "InvalidName"),
            "bad-name": ("Bad..Name", good, 400, "InvalidName"),
            "pickle": ("ok", [*good, w.model_copy(update={"path": "adapter_model.bin"})],
                       400, "PickleWeights"),
            "missing-blob": ("ok", [good[0], FileEntry(path="adapter_model.safetensors",
                                                       size=5, sha256="2" * 64)],
                             404, "BlobMissing"),
            "size-lie": ("ok", [good[0], w.model_copy(update={"path": "adapter_model.safetensors",
                                                              "size": 3})],
                         422, "IntegrityError"),
            "not-an-adapter": ("ok", [c.model_copy(update={"path": "README.md"})],
                               400, "InvalidAdapter"),
        }
        for case, (name, files, status, error_type) in cases.items():
            r = post(name, files)
            assert (r.status_code, r.json()["error"]["type"]) == (status, error_type), (
                case, r.status_code, r.text[:300])
        assert store.list() == []
        assert post("ok", good).status_code == 201
        assert [v.version for v in store.list()] == [1]


def test_remote_client_maps_errors_back(remote, adapters, tmp_path: Path) -> None:
    _, client, _ = remote
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    (bad / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(PickleWeights):
        client.push(bad, "x")
    with pytest.raises(InvalidName):
        client.resolve("no way")
    assert issubclass(BlobMissing, RegistryError)
    with RemoteRegistry("http://127.0.0.1:9", token="t") as dead, pytest.raises(
        RegistryError, match="unreachable"
    ):
        dead.list()


def test_tokens_file_and_env_parsing(tmp_path: Path, monkeypatch) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# team tokens\nalpha-write-token:write:ci\nbeta-read-token:read\n")
    monkeypatch.setenv("LORAMUX_REGISTRY_TOKENS",
                       "gamma-read-token:read:dash, delta-write-token:write")
    auth = TokenAuth.from_sources(tokens)
    assert auth.identify("alpha-write-token").scopes == {"read", "write"}
    assert auth.identify("alpha-write-token").name == "ci"
    beta = auth.identify("beta-read-token")
    assert beta.scopes == {"read"} and beta.name.startswith("token-") and "beta" not in beta.name
    assert auth.identify("gamma-read-token").name == "dash"
    assert auth.identify("delta-write-token").scopes == {"read", "write"}
    with pytest.raises(Unauthorized):
        auth.identify("epsilon-unknown")
    with pytest.raises(RegistryError, match="SECRET:read\\|write\\|admin"):
        parse_tokens("oops-long-enough:root")
    admin = TokenAuth(parse_tokens("boss-admin-token:admin")).identify("boss-admin-token")
    assert admin.scopes == {"read", "write", "admin"}


def test_readme_tokens_example_parses() -> None:
    """The tokens file shown in the README, comments (with commas) and all."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Registry"):readme.index("## Serving")]
    example = next(block for block in section.split("```") if "s3cr3t-for-ops:" in block)
    tokens = parse_tokens(example + "solo-secret-token:read  # a comment, with a comma\n")
    assert [(t.scope, t.name) for t in tokens][:3] == [
        ("admin", "ops"), ("write", "ci"), ("read", "fleet")]
    assert [t.secret for t in tokens] == [
        "s3cr3t-for-ops", "s3cr3t-for-ci", "s3cr3t-for-servers", "solo-secret-token"]
