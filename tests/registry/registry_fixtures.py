"""Fixtures: tiny adapters, a real HTTP registry server, and every backend combination.

The registry's tests get them through conftest.py; tests of code that reads a registry (the
server's adapter cache and vLLM resolver plugin, release management) import them from here, with
this folder on ``sys.path``, so that they run against every backend too.

The server is started once per session (uvicorn in a thread on a free loopback port); each
test gets a fresh store which the fixture swaps into the running app, so tests stay isolated
while the server is real. ``backend`` runs each contract test once per entry of ``COMBOS``:
the client (local or remote) times the index (SQLite, or a fresh PostgreSQL database); a new
dimension is one more field in :class:`Combo` and one more argument to :func:`make_store`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Appended, not inserted: an importing folder's own `conftest` stays first by name.
sys.path.append(str(Path(__file__).parent))
sys.path.append(str(Path(__file__).parent.parent / "support"))

import registry_support
from oci_registry import require_docker_registry
from postgres import postgres_dsn, postgres_server  # noqa: F401  (fixtures, registered here)
from registry_support import ADMIN_TOKEN, write_adapter

from loramux.registry.http.auth import TokenAuth, parse_tokens
from loramux.registry.index import ENV_INDEX
from loramux.registry.remote import RemoteRegistry
from loramux.registry.store import LocalRegistry
from loramux.registry.validate import Limits
from loramux.support.oci_registry import OciRegistry
from loramux.support.ports import InProcessServer

TOKENS = parse_tokens(registry_support.TOKENS)


class ServerHandle(InProcessServer):
    def __init__(self, root: Path) -> None:
        import uvicorn

        from loramux.registry.http.app import create_app

        self.default_store = LocalRegistry(root)
        self.app = create_app(self.default_store, TokenAuth(TOKENS))
        super().__init__(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning"))

    def use(self, store: LocalRegistry, *, anonymous_read: bool = False) -> None:
        self.app.state.registry = store
        self.app.state.auth = TokenAuth(TOKENS, anonymous_read=anonymous_read)

    def stop(self) -> None:
        super().stop()
        self.default_store.close()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = ServerHandle(tmp_path_factory.mktemp("server-default"))
    yield handle
    handle.stop()


@dataclass(frozen=True)
class Combo:
    """One backend combination the contract runs against."""

    kind: str  # "local" (the store itself) or "remote" (through the HTTP server)
    index: str  # "sqlite" or "postgresql"
    blobs: str = "folder"  # or "oci": a repository in a docker-registry of the test's own

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.index}" + ("-oci" if self.blobs == "oci" else "")


COMBOS = [Combo(kind, index) for index in ("sqlite", "postgresql") for kind in ("local", "remote")]
# OCI blobs: embedded, and the several-servers setup (remote, PostgreSQL); not all four again
COMBOS += [Combo("local", "sqlite", "oci"), Combo("remote", "postgresql", "oci")]
OCI_REPOSITORY = "loramux/contract"


def make_store(root: Path, *, index: str | None = None, **kwargs: object) -> LocalRegistry:
    """The store of one combination: ``index`` None is SQLite in ``root``, else a DSN."""
    return LocalRegistry(root, index=index, **kwargs)  # type: ignore[arg-type]


def index_spec(request: pytest.FixtureRequest, index: str) -> str | None:
    """The ``--index`` value for a combination's index (a fresh database for PostgreSQL)."""
    return request.getfixturevalue("postgres_dsn") if index == "postgresql" else None


@dataclass
class Backend:
    """The registry under test plus what the tests need to look behind it."""

    kind: str
    root: Path
    store: LocalRegistry
    registry: LocalRegistry | RemoteRegistry
    server: ServerHandle | None = None
    index: str | None = None  # the index spec (None: SQLite in root)
    oci: OciRegistry | None = None  # the blob store's registry (None: the folder)

    def with_limits(self, limits: Limits) -> LocalRegistry | RemoteRegistry:
        store = make_store(self.root, index=self.index, limits=limits, actor="tester")
        if self.server is None:
            return store
        self.server.use(store)
        return self.registry

    def client(self, token: str | None) -> RemoteRegistry:
        assert self.server is not None
        return RemoteRegistry(self.server.url, token=token or "")

    def blob_files(self) -> set[str]:
        """Blobs the store holds: files in its folder, or blobs it uploaded that the OCI
        repository links (each version's artifact config is not a file blob)."""
        if self.oci is None:
            return {p.name for p in (self.root / "blobs" / "sha256").iterdir()}
        return set(self.store.blobs.all_hex()) & self.oci.linked_blobs(OCI_REPOSITORY)

    def blob_data(self, hex_: str) -> Path:
        """The file holding a blob's bytes (to flip one)."""
        if self.oci is None:
            return self.root / "blobs" / "sha256" / hex_
        return self.oci.blob_data(hex_)

    def temp_files(self) -> list[Path]:
        """Leftovers of pushes: temp files, staged copies, open OCI upload sessions."""
        if self.oci is None:
            return list((self.root / "tmp").iterdir())
        return [*self.store.blobs.temp_files(), *self.oci.uploads(OCI_REPOSITORY)]


def _own_oci_registry(tmp_path: Path) -> OciRegistry:
    """A registry per test: flipped bytes and deleted blobs stay in the test that made them."""
    require_docker_registry()
    oci = OciRegistry(tmp_path / "oci")
    oci.start()
    return oci


@pytest.fixture(params=COMBOS, ids=lambda c: c.id)
def backend(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    combo: Combo = request.param
    root = tmp_path / "store"
    index = index_spec(request, combo.index)
    if index is not None:  # processes a test starts on the folder find the same index
        monkeypatch.setenv(ENV_INDEX, index)
    oci = _own_oci_registry(tmp_path) if combo.blobs == "oci" else None
    if oci is not None:
        make_store(root, index=index, blobs=oci.location(OCI_REPOSITORY)).close()  # remembered
    store = make_store(root, index=index, actor="tester")
    if combo.kind == "local":
        yield Backend("local", root, store, store, index=index, oci=oci)
    else:
        server: ServerHandle = request.getfixturevalue("http_server")
        server.use(store)
        # admin: the contract covers gc, verify and forced deletes (test_scopes checks write)
        client = RemoteRegistry(server.url, token=ADMIN_TOKEN, actor="tester")
        yield Backend("remote", root, store, client, server, index=index, oci=oci)
        client.close()
    store.close()
    if oci is not None:
        oci.stop()


@pytest.fixture(scope="session")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Valid adapters: ``a`` and ``b`` differ only in weights; ``c8`` has rank 8."""
    base = tmp_path_factory.mktemp("adapters")
    made = {
        "a": write_adapter(base / "a", seed=1),
        "b": write_adapter(base / "b", seed=2),
        "c8": write_adapter(base / "c8", seed=3, r=8),
    }
    for path in made.values():
        for f in path.iterdir():
            f.chmod(0o444)  # a test that changes a source would corrupt the others
    return made


@pytest.fixture
def make_adapter(tmp_path: Path):
    counter = iter(range(1_000_000))

    def make(**kwargs: object) -> Path:
        return write_adapter(tmp_path / f"adapter-{next(counter)}", **kwargs)  # type: ignore[arg-type]

    return make
