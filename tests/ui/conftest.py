"""The web pages' browser tests: one headless Chromium per session, a real `loramux registry
serve` with the trained demo adapters, and (slow) a real `loramux serve` for the playground,
the session server of tests/server when that one is already running."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loramux.support.launch import ServerProcess

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ui_browser import console_errors, require_chromium, start_chromium  # noqa: E402
from ui_sites import (  # noqa: E402
    Playground,
    RegistrySite,
    publish_demo,
    running_session_server,
    serve_registry,
)

USER_KEY = "sk-ui-user"


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory):
    require_chromium()
    driver = start_chromium(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()


@pytest.fixture
def page(browser):
    """The session's browser, its console emptied, cookies cleared; the test checks the
    console itself (`console_errors`)."""
    browser.delete_all_cookies()  # every loopback port's: cookies are per host, not port
    browser.get("about:blank")  # no page of an earlier test keeps polling without its cookie
    console_errors(browser)
    yield browser


@pytest.fixture(scope="module")
def registry_site(tmp_path_factory, demo_adapters: dict[str, Path]) -> Iterator[RegistrySite]:
    """`loramux registry serve` on loopback: `demo` v1 is the caps adapter, v2 the codeword
    one (a retrain on other data), both published with their lineage, report and loss curve
    the way `loramux train --publish` does; `demo:prod` points at v1."""
    from loramux.trainer.publish import publish_trained

    root = tmp_path_factory.mktemp("ui-registry")
    store = root / "store"
    publish_demo(store, demo_adapters, "demo")
    publish_trained(demo_adapters["codeword"], "codeword", store, force=True)
    with serve_registry(store, root) as url:
        yield RegistrySite(url, store)


@pytest.fixture(scope="session")
def playground(request, demo_base: Path, demo_adapters: dict[str, Path],
               tmp_path_factory) -> Iterator[Playground]:
    """`loramux serve` on loopback with the vLLM engine: the session server of tests/server
    when it already runs, else one started here the same way."""
    shared = running_session_server(request.session)
    if shared is not None:
        key = (shared.registry_dir.parent / "keys.txt").read_text().split()[0]
        publish_demo(shared.registry_dir, demo_adapters, "ui-demo")
        yield Playground(shared.url, shared.registry_dir, key)
        return
    root = tmp_path_factory.mktemp("ui-serve")
    publish_demo(root / "registry", demo_adapters, "ui-demo")
    keys = root / "keys.txt"
    keys.write_text(f"{USER_KEY} name=ui-user\n")
    process = ServerProcess(
        ["--base", str(demo_base), "--registry", str(root / "registry"), "--api-keys",
         str(keys), "--cache-dir", str(root / "cache"), "--max-model-len", "512",
         "--max-loras", "2"], log=root / "server.log")
    url = process.start()
    yield Playground(url, root / "registry", USER_KEY)
    process.stop()
