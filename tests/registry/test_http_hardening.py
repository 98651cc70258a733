"""The registry server under attack: slow patterns, bodies before tokens, big uploads, scopes.

Each test shows the server keeps serving others while one request misbehaves. Waits are bounded
(socket and client timeouts) only so that a regression fails instead of hanging; nothing here
asserts how fast anything is.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from pathlib import Path

import httpx
import pytest
from registry_support import ADMIN_TOKEN, READ_TOKEN, TOKENS, WRITE_TOKEN
from test_untrusted_input import _evil_adapter

from loramux.registry import Forbidden, RemoteRegistry
from loramux.registry.http.bodies import MAX_JSON_BODY
from loramux.registry.store import LocalRegistry
from loramux.support.launch import RegistryProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def remote(http_server, tmp_path: Path):
    store = LocalRegistry(tmp_path / "store", actor="tester")
    http_server.use(store)
    yield store, http_server
    store.close()


def _client(url: str, token: str | None = WRITE_TOKEN, timeout: float = 30) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout)


def _upload(http: httpx.Client, path: Path) -> dict[str, object]:
    data = path.read_bytes()
    hex_ = hashlib.sha256(data).hexdigest()
    assert http.put(f"/v2/blobs/sha256:{hex_}", content=data).status_code == 201
    return {"path": path.name, "size": len(data), "sha256": hex_}


def test_a_catastrophic_pattern_is_a_prompt_400_and_others_are_served(
    tmp_path: Path, adapters
) -> None:
    """Its own process: a registry that backtracked under the GIL would freeze this test too."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS.replace(",", "\n"))
    server = RegistryProcess(tmp_path / "store", tmp_path / "registry.log",
                             args=["--tokens", str(tokens)], env={"LORAMUX_TOKEN": ""})
    url = server.start()
    try:
        with RemoteRegistry(url, token=WRITE_TOKEN) as client:
            client.push(adapters["a"], "known")
        evil = _evil_adapter(tmp_path / "evil", rank_pattern={"(a|aa)+$": 8})
        with _client(url) as http:
            files = [_upload(http, evil / n)
                     for n in ("adapter_config.json", "adapter_model.safetensors")]
        answer: list[httpx.Response] = []

        def push() -> None:
            with _client(url, timeout=60) as http:
                answer.append(http.post("/v2/adapters/evil/versions", json={"files": files}))

        pusher = threading.Thread(target=push)
        pusher.start()
        served = 0
        with _client(url, READ_TOKEN, timeout=20) as http:
            while pusher.is_alive() or served == 0:
                assert http.get("/health").status_code == 200
                assert http.get("/v2/resolve", params={"ref": "known"}).status_code == 200
                served += 1
        pusher.join()
        r = answer[0]
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "InvalidPattern"
        assert "rank_pattern key '(a|aa)+$' takes too long" in r.json()["error"]["message"]
    finally:
        server.stop()


def _exchange(port: int, head: str, body_parts: list[bytes]) -> tuple[int, dict[str, object]]:
    """Send a request head and *part* of a body (never its end), then read the answer: a
    server that waited for the whole body would never answer (the socket timeout fails it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        try:
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and hung up mid-body: what we read next says how
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {data!r}"
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        status = int(head_bytes.split()[1])
        length = next(int(line.split(b":")[1]) for line in head_bytes.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
    return status, json.loads(rest[:length])


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _head(path: str, token: str | None, length: int | None) -> str:
    method = "PUT" if path.startswith("/v2/blobs/") else "POST"
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None
                 else "Transfer-Encoding: chunked")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return "\n".join(lines) + "\n"


def test_tokens_are_checked_before_any_body_is_read(remote) -> None:
    _, server = remote
    piece = b"[" * 65536  # what arrives first of a body that never ends
    cases = [
        (None, 1 << 30, 401, "Unauthorized"),  # a huge announced body, no token
        (None, None, 401, "Unauthorized"),  # chunked, no token
        ("not-a-token", 1 << 20, 401, "Unauthorized"),
        (READ_TOKEN, None, 403, "Forbidden"),  # may read, may not send bodies
    ]
    for token, length, status, kind in cases:
        parts = [piece if length is not None else _chunked(piece)]
        for path in ("/v2/adapters/x/versions", f"/v2/blobs/sha256:{'0' * 64}"):
            got, body = _exchange(server.port, _head(path, token, length), parts)
            assert (got, body["error"]["type"]) == (status, kind), (token, length, path, body)


def test_a_chunked_body_is_counted_as_it_arrives(remote) -> None:
    store, server = remote
    chunk = b" " * (1 << 20)
    parts = [_chunked(chunk) for _ in range(MAX_JSON_BODY // len(chunk) + 1)]
    got, body = _exchange(server.port, _head("/v2/adapters/x/versions", WRITE_TOKEN, None), parts)
    assert (got, body["error"]["type"]) == (413, "TooLarge")
    assert str(MAX_JSON_BODY) in body["error"]["message"]
    got, body = _exchange(server.port, _head("/v2/adapters/x/versions", WRITE_TOKEN,
                                             MAX_JSON_BODY + 1), [chunk])
    assert (got, body["error"]["type"]) == (413, "TooLarge")  # announced: refused up front
    with _client(server.url) as http:  # the server is fine, and small bodies still work
        r = http.post("/v2/adapters/x/versions", json={"files": []})
        assert (r.status_code, r.json()["error"]["message"]) == (
            400, "a push needs at least one file")
    assert store.list() == []


def test_a_blob_upload_is_written_off_the_event_loop(remote) -> None:
    """A disk that stalls mid-upload (here: until the test says so) stalls only the upload."""
    store, server = remote
    entered, release = threading.Event(), threading.Event()
    real_upload = store.upload

    def stalling_upload(digest: str, *, size: int | None = None):
        upload = real_upload(digest, size=size)
        real_feed = upload.feed

        def feed(chunk: bytes) -> None:
            entered.set()
            release.wait(60)
            real_feed(chunk)

        upload.feed = feed  # type: ignore[method-assign]
        return upload

    store.upload = stalling_upload  # type: ignore[method-assign]
    data = os.urandom(3 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    answer: list[httpx.Response] = []

    def put() -> None:
        with _client(server.url, timeout=120) as http:
            answer.append(http.put(f"/v2/blobs/{digest}", content=data))

    uploader = threading.Thread(target=put)
    uploader.start()
    try:
        assert entered.wait(60), "the upload never reached the disk"
        with _client(server.url, READ_TOKEN, timeout=20) as http:
            assert http.get("/health").status_code == 200
            assert http.head(f"/v2/blobs/{digest}").status_code == 404  # not there yet
    finally:
        release.set()
        uploader.join(120)
    assert answer[0].status_code == 201, answer[0].text
    assert store.blobs.size(digest) == len(data)


def test_destructive_verbs_need_the_admin_scope(remote, adapters) -> None:
    store, server = remote
    with RemoteRegistry(server.url, token=WRITE_TOKEN) as writer:
        writer.push(adapters["a"], "scoped", alias="prod")
        writer.push(adapters["b"], "scoped")
        for verb in (writer.gc, writer.verify, lambda: writer.delete("scoped@1", force=True)):
            with pytest.raises(Forbidden, match="needs a token with 'admin' scope"):
                verb()
        assert writer.delete("scoped@2").deleted  # a plain delete stays a writer's job
    assert [v.version for v in store.list()] == [1] and store.resolve("scoped:prod")
    with RemoteRegistry(server.url, token=ADMIN_TOKEN) as admin:
        assert admin.verify().ok
        assert admin.gc().removed_blobs == 1
        assert admin.delete("scoped@1", force=True).deleted
    assert store.list() == []
    with _client(server.url) as http:
        r = http.post("/v2/gc")
        assert (r.status_code, r.json()["error"]["type"]) == (403, "Forbidden")
        assert "writer may only read/write" in r.json()["error"]["message"]


def test_cli_gc_with_a_write_token_says_admin(remote) -> None:
    from typer.testing import CliRunner

    from loramux.registry.cli import app

    _, server = remote
    r = CliRunner().invoke(app, ["gc", "--registry", server.url],
                           env={"LORAMUX_TOKEN": WRITE_TOKEN})
    assert r.exit_code == 8 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: writer may only read/write; ") and "'admin'" in r.stderr
    assert "admin" in CliRunner().invoke(app, ["serve", "--help"],
                                         env={"COLUMNS": "200"}).stdout


def test_openapi_describes_bodies_and_errors(remote) -> None:
    _, server = remote
    with _client(server.url) as http:
        schema = http.get("/openapi.json").json()
        envelope = schema["components"]["schemas"]["ErrorEnvelope"]
        detail = schema["components"]["schemas"]["ErrorDetail"]
        assert envelope["required"] == ["error"]
        assert set(detail["required"]) == {"message", "type", "code"}
        ops = {(m.upper(), p): op for p, item in schema["paths"].items()
               for m, op in item.items()}
        for (method, path), op in ops.items():
            if path == "/health":
                continue
            for status in ("400", "401", "403"):
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorEnvelope"), (method, path, status)
        assert "application/octet-stream" in ops[("PUT", "/v2/blobs/{digest}")][
            "requestBody"]["content"]
        assert {"413", "422"} <= set(ops[("PUT", "/v2/blobs/{digest}")]["responses"])
        push = ops[("POST", "/v2/adapters/{name}/versions")]
        assert "PushRequest" in json.dumps(push["requestBody"])
        assert {"404", "409", "413"} <= set(push["responses"])
        # errors FastAPI and Starlette raise themselves wear the same envelope
        for r, status in [(http.get("/v2/nowhere"), 404), (http.patch("/v2/gc"), 405),
                          (http.post("/v2/adapters/x/versions", content=b"{oops",
                                     headers={"content-type": "application/json"}), 400),
                          (http.post("/v2/adapters/x/versions", content=b"[" * 100_000,
                                     headers={"content-type": "application/json"}), 400)]:
            assert r.status_code == status and set(r.json()["error"]) == {
                "message", "type", "code"}, r.text
