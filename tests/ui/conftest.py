"""The web pages' browser tests: one headless Chromium per session, a real `loramux registry
serve` with the trained demo adapters, and (slow) a real `loramux serve` for the playground,
the session server of tests/server when that one is already running."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ui_browser import console_errors, require_chromium, start_chromium  # noqa: E402
from ui_sites import ADMIN, READER, RegistrySite  # noqa: E402


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
    console_errors(browser)
    browser.delete_all_cookies()
    yield browser


@pytest.fixture(scope="module")
def registry_site(tmp_path_factory, demo_adapters: dict[str, Path]) -> Iterator[RegistrySite]:
    """`loramux registry serve` on loopback: `demo` v1 is the caps adapter, v2 the codeword
    one (a retrain on other data), both published with their lineage, report and loss curve
    the way `loramux train --publish` does; `demo:prod` points at v1."""
    import loramux.registry as reg
    from loramux.support.launch import RegistryProcess
    from loramux.trainer.publish import publish_trained

    root = tmp_path_factory.mktemp("ui-registry")
    store = root / "store"
    publish_trained(demo_adapters["caps"], "demo", store, alias="prod", force=True)
    publish_trained(demo_adapters["codeword"], "demo", store, force=True)
    publish_trained(demo_adapters["codeword"], "codeword", store, force=True)
    reg.open(store).close()
    tokens = root / "tokens.txt"
    tokens.write_text(f"{ADMIN}:admin:ui-admin\n{READER}:read:reader\n")
    with RegistryProcess(store, root / "registry.log", ["--tokens", str(tokens)]) as url:
        yield RegistrySite(url, store)
