"""The session's OCI registry (CNCF distribution) for tests: ``oci_registry``.

A conftest makes it available with ``from oci_registry import oci_registry`` after putting this
folder on ``sys.path``. Each test should use its own repository (``fresh_repository``), so the
session-wide process needs no cleaning between tests.

The registry program (Debian's ``docker-registry``, or distribution's own ``registry``) is found
by ``services``; missing, it is a skip for a developer without root and a failure with CI set or
as root (``services.unavailable``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
import services  # this folder is on sys.path wherever this module is importable

import loramux.support.oci_registry as oci
from loramux.support.oci_registry import OciRegistry

_counter = itertools.count()


def require_docker_registry() -> None:
    """Point ``OciRegistry`` at the program ``services`` found (it runs ``oci.BINARY``, a
    name or a path); skip or fail (``services.unavailable``) when there is none."""
    oci.BINARY = services.require("oci-registry")


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
