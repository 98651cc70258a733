"""Pinned references are checked, not trusted, by every client (`Registry.resolve`).

A real `loramux registry serve` behind a real HTTP proxy that lies where a test says
(lying_registry.py): it asks the registry for another reference than the client did, or edits
the manifest on its way back. The client must refuse an answer that is not what the reference
pins, and a manifest whose digest its own files do not give; a moving reference (a name, an
alias) is the store's to point, but never at another name. The server's and the vLLM
resolver's sides of the same check are in tests/server/test_lying_registry_serve.py and
tests/server/test_vllm_resolver.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lying_registry import LyingRegistry, lying_in_front_of

import loramux.registry as reg
from loramux.registry import IntegrityError
from loramux.registry.manifest import Manifest
from loramux.registry.remote import RemoteRegistry


@pytest.fixture
def pets(adapters, tmp_path: Path) -> tuple[Manifest, Manifest, Manifest]:
    """pets@1 (alias prod), pets@2 and alien@1 in a local store."""
    with reg.open(tmp_path / "store") as store:
        return (store.push(adapters["a"], "pets", alias="prod"),
                store.push(adapters["b"], "pets"),
                store.push(adapters["c8"], "alien"))


@pytest.fixture
def proxy(pets, tmp_path: Path) -> Iterator[LyingRegistry]:
    """The store served by `loramux registry serve`, behind a proxy that starts honest."""
    with lying_in_front_of(tmp_path / "store", tmp_path / "registry.log") as lying:
        yield lying


@pytest.fixture
def client(proxy: LyingRegistry) -> Iterator[RemoteRegistry]:
    with RemoteRegistry(proxy.url) as remote:
        yield remote


def test_an_honest_proxy_passes_every_reference_form(pets, proxy, client) -> None:
    v1, v2, alien = pets
    for ref, expected in (("pets@1", v1), ("pets:prod", v1), (f"pets@{v1.digest[:19]}", v1),
                          (f"pets@{v1.digest}", v1), ("pets", v2), ("alien@1", alien)):
        assert client.resolve(ref) == expected, ref
    assert client.resolve_split("pets:prod").stable == v1
    assert proxy.asked[0] == "pets@1"  # the resolves did go through the proxy


def test_another_version_for_a_pinned_reference_is_refused(pets, proxy, client,
                                                           tmp_path: Path) -> None:
    v1, v2, _ = pets
    proxy.ask_instead = lambda ref: "pets@2"
    for ref in ("pets@1", f"pets@{v1.digest[:19]}", f"pets@{v1.digest}"):
        with pytest.raises(IntegrityError, match=rf"answered pets@2 .* for `{ref}`"):
            client.resolve(ref)
    with pytest.raises(IntegrityError, match="answered pets@2"):
        client.pull("pets@1", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
    # A moving reference is the store's to point: the same answers are taken for them.
    assert client.resolve("pets") == v2 and client.resolve("pets:prod") == v2


def test_another_name_is_refused_even_for_a_moving_reference(pets, proxy, client) -> None:
    proxy.ask_instead = lambda ref: "alien"
    for ref in ("pets", "pets:prod"):
        with pytest.raises(IntegrityError, match=rf"answered alien@1 .* for `{ref}`"):
            client.resolve(ref)
    with pytest.raises(IntegrityError, match="answered alien@1"):
        client.resolve_split("pets:prod")


def test_a_manifest_claiming_a_digest_its_files_do_not_give_is_refused(pets, proxy,
                                                                       client) -> None:
    """pets@2's files under pets@1's number and digest: name, number and digest all match
    what the client pinned; only the files give the lie away."""
    v1, _, _ = pets
    proxy.ask_instead = lambda ref: "pets@2"
    proxy.edit_answer = lambda ref, answer: {**answer, "version": 1, "digest": v1.digest}
    with pytest.raises(IntegrityError, match=r"says digest sha256:\w+… but its files give"):
        client.resolve(f"pets@{v1.digest}")


def test_the_cli_refuses_a_lie_in_one_line(pets, proxy, tmp_path: Path) -> None:
    proxy.ask_instead = lambda ref: "pets@2"
    pulled = subprocess.run(
        [sys.executable, "-m", "loramux.cli", "registry", "pull", "pets@1", "--to",
         str(tmp_path / "out"), "--registry", proxy.url], capture_output=True, text=True,
        timeout=120)
    assert pulled.returncode == IntegrityError.exit_code, pulled.stderr
    lines = pulled.stderr.strip().splitlines()
    assert len(lines) == 1 and "answered pets@2" in lines[0], pulled.stderr
    assert "Traceback" not in pulled.stderr and not (tmp_path / "out").exists()
