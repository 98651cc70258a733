"""Idle connections outlive the client's own pool expiry (loramux.wire.KEEP_ALIVE_S).

With uvicorn's default (5 s, exactly httpx's expiry) a request sent on a connection that had
been idle for about 5 s could meet the server closing it: the client gets "Server disconnected
without sending a response" and the `openai` client, retries off, raises APIConnectionError
(CI saw it once in tests/e2e/test_real_model.py, between two batches of requests). Here a
connection idle past 5 s must be the same connection when it is used again: httpx checks an
idle connection before reuse and opens a new one if the server closed it, so a server that
closes early shows as a new local port."""

from __future__ import annotations

import time

import httpx

from loramux.support.launch import RegistryProcess
from loramux.wire import KEEP_ALIVE_S

IDLE_S = 6.5  # past uvicorn's 5 s default, well short of KEEP_ALIVE_S


def _local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def _same_connection_after_idle(url: str, path: str) -> tuple[int, int]:
    """Local ports of two requests IDLE_S apart on a client that would keep the connection."""
    with httpx.Client(base_url=url, timeout=30,
                      limits=httpx.Limits(keepalive_expiry=KEEP_ALIVE_S - 10)) as http:
        ports = []
        for pause in (0, IDLE_S):
            time.sleep(pause)
            response = http.get(path)
            response.raise_for_status()
            ports.append(_local_port(response))  # now: a closed stream has no address
        return ports[0], ports[1]


def test_the_server_keeps_an_idle_connection_past_the_clients_expiry(server) -> None:
    first, second = _same_connection_after_idle(server.url, "/health")
    assert first == second, "loramux serve closed an idle connection within the client's expiry"


def test_the_registry_keeps_an_idle_connection_past_the_clients_expiry(tmp_path) -> None:
    registry = RegistryProcess(tmp_path / "store", tmp_path / "registry.log",
                               args=["--anonymous-read"])
    with registry as url:
        first, second = _same_connection_after_idle(url, "/health")
    assert first == second, "the registry closed an idle connection within the client's expiry"


def test_a_shorter_keep_alive_is_a_setting_and_closes_early(tmp_path) -> None:
    """The check above can fail: the same registry told to keep 1 s closes the connection."""
    registry = RegistryProcess(tmp_path / "store", tmp_path / "registry.log",
                               args=["--anonymous-read", "--keep-alive-s", "1"])
    with registry as url:
        first, second = _same_connection_after_idle(url, "/health")
    assert first != second
