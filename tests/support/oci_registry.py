"""The session's OCI registry (CNCF distribution) for tests: ``oci_registry``.

A conftest makes it available with ``from oci_registry import oci_registry`` after putting this
folder on ``sys.path``. Each test should use its own repository (``fresh_repository``), so the
session-wide process needs no cleaning between tests.

Without docker-registry installed: a non-root developer's run skips (with that reason); as root
(CI, a fresh machine) it fails, because ``.ci/system-deps`` installs it there.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from loramux.support.oci_registry import OciRegistry, binary

_counter = itertools.count()


def require_docker_registry() -> None:
    if binary() is not None:
        return
    if os.geteuid() == 0:
        pytest.fail("docker-registry (CNCF distribution) is missing: run .ci/system-deps")
    pytest.skip("docker-registry (CNCF distribution) is not installed; only a non-root "
                "developer may skip this (CI installs it with .ci/system-deps)")


def fresh_repository(prefix: str = "loramux/t") -> str:
    """A repository name no other test of this session uses."""
    return f"{prefix}{os.getpid()}-{next(_counter)}"


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    """A running registry: ``.host``, ``.port``, ``.location(repo)``, ``.storage`` (its files),
    ``.blob_data(hex)`` to flip bytes, ``.stop()``/``.start()`` for an outage on the same port."""
    require_docker_registry()
    registry = OciRegistry(tmp_path_factory.mktemp("oci-registry"))
    registry.start()
    yield registry
    registry.stop()
