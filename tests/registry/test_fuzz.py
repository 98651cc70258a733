"""Schema fuzzing of the registry's HTTP server (schemathesis, from its own OpenAPI schema).

The real server on 127.0.0.1 (the session's ``http_server``) holds one known adapter; every
operation of the schema is called over HTTP with generated arguments and bodies (an admin token,
so that nothing is refused before it is parsed) within a fixed example budget. The schema is
built from the app factory at import (schemathesis' fixture-based loader breaks on pytest 9), and
a test checks it is the one the server publishes at /openapi.json. Pass criteria: no 5xx,
the status and body each documented by the schema, every error in the registry's envelope, and
afterwards the registry still serves the known adapter byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from registry_support import ADMIN_TOKEN, READ_TOKEN, folder_bytes
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from loramux.registry import RemoteRegistry
from loramux.registry.http.app import create_app
from loramux.registry.http.auth import TokenAuth
from loramux.registry.store import LocalRegistry

pytestmark = pytest.mark.timeout(300)
EXAMPLES_PER_OPERATION = 12
KNOWN = "known-adapter"


@pytest.fixture(scope="module")
def fuzz_store(http_server, tmp_path_factory: pytest.TempPathFactory, adapters):
    store = LocalRegistry(tmp_path_factory.mktemp("fuzz") / "store", actor="fuzz")
    store.push(adapters["a"], KNOWN, alias="prod")
    http_server.use(store)
    yield store
    store.close()


OPENAPI = create_app(None, TokenAuth()).openapi()  # type: ignore[arg-type]  # routes only
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_the_fuzzed_schema_is_the_published_one(http_server) -> None:
    import httpx

    assert httpx.get(f"{http_server.url}/openapi.json").json() == OPENAPI


def registry_error_shape(ctx, response, case) -> bool:
    """Every error answers {"error": {"message", "type", "code"}} (HEAD answers carry none)."""
    if response.status_code >= 400 and case.method.upper() != "HEAD":
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "code"}, body
        assert all(isinstance(v, str) and v for v in body["error"].values()), body
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, registry_error_shape]


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_registry_schema_fuzz(case, fuzz_store, http_server) -> None:
    response = case.call(base_url=http_server.url, timeout=30,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    case.validate_response(response, checks=CHECKS)


def test_registry_still_serves_after_fuzzing(fuzz_store, http_server, adapters,
                                             tmp_path: Path) -> None:
    """Runs after the fuzz test (file order); on its own it checks the same, unfuzzed."""
    with RemoteRegistry(http_server.url, token=READ_TOKEN) as reader:
        assert reader.resolve(f"{KNOWN}:prod").version == 1
        pulled = reader.pull(f"{KNOWN}:prod", tmp_path / "pulled")
    assert folder_bytes(pulled) == folder_bytes(adapters["a"])
    assert fuzz_store.verify().ok
