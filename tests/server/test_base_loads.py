"""The "base never reloaded" signal can fail: an operator restart reloads the base, and the
counter, the engine-core pid and the weight-loading lines in the log all show it.

This is what makes the other tests' `base_loads(server)` comparisons meaningful: here the same
three witnesses are seen to move, on a server of this module's own (a restart must not disturb
the session server).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from loramux.support.launch import ServerProcess

pytestmark = pytest.mark.slow
USER_KEY, ADMIN_KEY = "sk-user-test", "sk-admin-test"
HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def restartable(demo_base: Path, make_adapter, tmp_path_factory):
    import loramux.registry as reg

    root = tmp_path_factory.mktemp("restart")
    registry = reg.open(root / "registry")
    for name, seed, folder in (("one", 1, "one"), ("two", 2, "two"), ("one", 3, "one-v2")):
        registry.push(make_adapter(demo_base, root / folder, seed=seed), name,
                      base_model=demo_base)
    registry.alias_set("one", "prod", 1)
    registry.close()
    keys = root / "keys.txt"
    keys.write_text(f"{USER_KEY}\n{ADMIN_KEY} admin\n")
    log = root / "server.log"
    process = ServerProcess(
        ["--base", str(demo_base), "--registry", str(root / "registry"), "--api-keys",
         str(keys), "--cache-dir", str(root / "cache"), "--max-model-len", "256",
         "--resolve-ttl-s", "0"], log=log)
    url = process.start()
    yield url, log, root, demo_base.name
    process.stop()


def _ask(url: str, model: str) -> str:
    r = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                   headers={"Authorization": f"Bearer {USER_KEY}"},
                   json={"model": model, "messages": HELLO, "max_tokens": 8, "temperature": 0})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def test_swaps_keep_the_base_and_a_restart_shows_on_every_witness(
        restartable, base_load_reader) -> None:
    import loramux.registry as reg

    url, log, root, base_name = restartable
    read_base_loads = base_load_reader
    start = read_base_loads(url, log)
    assert start.counter == 1 and start.engine_pid is not None and start.log_lines >= 1, start

    before = {m: _ask(url, m) for m in (base_name, "one@1", "one@2", "two", "one:prod")}
    # Each served its own weights: the comparisons below tell the versions apart.
    assert len({before[m] for m in (base_name, "one@1", "one@2", "two")}) == 4, before
    assert before["one:prod"] == before["one@1"], before
    registry = reg.open(root / "registry")
    registry.alias_set("one", "prod", 2)  # an alias move, as a deploy would do
    registry.close()
    assert _ask(url, "one:prod") == before["one@2"]
    assert read_base_loads(url, log) == start, "swaps and alias moves reloaded the base"
    before["one:prod"] = before["one@2"]

    r = httpx.post(f"{url}/v1/admin/engine/restart", timeout=600,
                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    after = read_base_loads(url, log)
    assert after.counter == start.counter + 1, (start, after)
    assert after.engine_pid is not None and after.engine_pid != start.engine_pid, (start, after)
    assert after.log_lines > start.log_lines, (start, after)
    # The restarted engine serves the same answers, adapters included.
    assert {m: _ask(url, m) for m in before} == before


def test_restart_needs_the_admin_scope(restartable) -> None:
    url, *_ = restartable
    user = {"Authorization": f"Bearer {USER_KEY}"}
    assert httpx.post(f"{url}/v1/admin/engine/restart", headers=user, timeout=30
                      ).status_code == 403
    assert httpx.get(f"{url}/v1/admin/engine", headers=user, timeout=30).status_code == 403
