"""The registry's web pages in headless Chromium: log in with a token, click through adapter →
version → lineage, compare two versions, move an alias with the CLI and see it, and see the
eval results and canary state the rollout commands record. Every page: no console error,
text contrast >= 4.5:1, links and buttons reachable by Tab and followed by Enter."""

from __future__ import annotations

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from ui_browser import console_errors, contrast_failures, press_enter, screenshot, tab_to
from ui_sites import ADMIN, READER, RegistrySite

import loramux.registry as reg


def _checked(page, shots, name: str) -> None:
    """The page's common promises, and a screenshot in the test's temporary folder."""
    checked, bad = contrast_failures(page)
    assert checked > 5 and not bad, f"{name}: text under 4.5:1 contrast: {bad}"
    assert not console_errors(page), f"{name}: console errors"
    screenshot(page, shots / f"{name}.png")


def _login(page, site: RegistrySite, token: str) -> None:
    page.get(f"{site.url}/ui")
    assert "/ui/login" in page.current_url
    field = page.find_element(By.ID, "token")
    label = page.find_element(By.CSS_SELECTOR, "label[for=token]")
    assert label.text == "Token"
    field.send_keys(token)
    field.submit()
    WebDriverWait(page, 10).until(lambda p: (p.execute_script("return document.readyState")
                                  == "complete" and "/ui/login" not in p.current_url)
                                  or p.find_elements(By.CSS_SELECTOR, "[role=alert]"))


def test_click_through_adapter_version_lineage_and_diff(page, registry_site: RegistrySite,
                                                        tmp_path) -> None:
    _login(page, registry_site, "not-a-token")
    assert "invalid bearer token" in page.find_element(By.CSS_SELECTOR, "[role=alert]").text
    console_errors(page)  # the refused login answered 401, which the console reports
    page.find_element(By.ID, "token").send_keys(READER)
    page.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(page, 10).until(lambda p: p.current_url.endswith("/ui"))
    assert "Signed in as reader" in page.find_element(By.CSS_SELECTOR, "header").text
    _checked(page, tmp_path, "index")

    # adapter, by keyboard: Tab to its link, Enter follows it
    tab_to(page, page.find_element(By.LINK_TEXT, "demo"))
    press_enter(page)
    WebDriverWait(page, 10).until(ec.url_contains("/ui/adapters/demo"))
    assert page.find_element(By.TAG_NAME, "h1").text == "demo"
    _checked(page, tmp_path, "adapter")

    page.find_element(By.LINK_TEXT, "v2").click()
    WebDriverWait(page, 10).until(ec.url_contains("/versions/2"))
    manifest = reg.open(registry_site.root).show("demo@2")
    lineage = manifest.lineage
    body = page.find_element(By.ID, "main").text
    assert lineage.dataset_digest in body
    rows = {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text
            for r in page.find_elements(By.CSS_SELECTOR, "#main table tr")
            if r.find_elements(By.TAG_NAME, "th") and r.find_elements(By.TAG_NAME, "td")}
    assert rows["learning_rate"] == str(lineage.hyperparameters["learning_rate"])
    assert rows["steps"] == str(lineage.metrics["steps"])  # training report figure
    curve = page.find_element(By.CSS_SELECTOR, "figure img")
    width = page.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                curve)
    assert width and width > 100, "the loss curve did not load"
    _checked(page, tmp_path, "version")

    # diff v1 -> v2 through the adapter page's form, submitted from the keyboard
    page.back()
    tab_to(page, page.find_element(By.CSS_SELECTOR, "#main form button"))
    press_enter(page)
    WebDriverWait(page, 10).until(ec.url_contains("/diff"))
    changed = {r.find_element(By.TAG_NAME, "th").text
               for r in page.find_elements(By.CSS_SELECTOR, "tr.changed")}
    assert {"digest", "lineage.dataset_digest"} <= changed
    assert "lora.r" not in changed  # both demo adapters share the LoRA shape
    _checked(page, tmp_path, "diff")


def test_alias_moved_with_the_cli_shows_on_the_page(page, registry_site: RegistrySite,
                                                    tmp_path) -> None:
    _login(page, registry_site, ADMIN)
    registry_site.cli("alias", "set", "demo", "prod", "2")
    page.get(f"{registry_site.url}/ui/adapters/demo")
    cells = [[td.text for td in r.find_elements(By.TAG_NAME, "td")[:2]]
             for r in page.find_elements(By.CSS_SELECTOR, "#versions + table tbody tr")]
    versions = dict(cells)
    assert versions == {"v2": "prod", "v1": ""}
    newest = page.find_elements(By.CSS_SELECTOR, "#history + table tbody tr")[0].text
    assert "ui-admin" in newest and "moved prod v1 v2" in newest
    _checked(page, tmp_path, "alias-history")


def test_eval_results_and_canary_state(page, registry_site: RegistrySite, tmp_path) -> None:
    """Rows the rollout commands write (recorded through the registry's API, as `loramux
    registry promote` and `alias set --canary` do) appear on the index and adapter pages."""
    api = httpx.Client(base_url=registry_site.url, timeout=30,
                       headers={"Authorization": f"Bearer {ADMIN}"})
    v1 = reg.open(registry_site.root).show("codeword@1")
    evaluation = {
        "alias": "prod", "scorer": "exact", "threshold": 0.8, "max_regression": 0.05,
        "passed": False, "eval_digest": "sha256:" + "e" * 64, "server": "http://127.0.0.1:1",
        "candidate": {"version": 1, "digest": v1.digest, "score": 0.5, "exact": 0.5, "n": 12},
        "current": None, "base_fingerprint": v1.base_fingerprint,
        "reason": "exact match 50% is under the threshold 80%"}
    recorded = api.post("/v2/adapters/codeword/evaluations", json=evaluation)
    assert recorded.status_code != 404 or "evaluations" in api.get("/openapi.json").text, (
        "the registry has no evaluations route (POST /v2/adapters/{name}/evaluations, which "
        f"`loramux registry promote` records through): {recorded.status_code} {recorded.text}")
    assert recorded.status_code == 201, recorded.text
    moved = api.put("/v2/adapters/demo/aliases/prod/canary",
                    json={"stable": 2, "canary": 1, "weight": 0.25, "reason": None})
    assert moved.status_code == 200, moved.text

    _login(page, registry_site, READER)
    evals = page.find_element(By.CSS_SELECTOR, "#evaluations + table").text
    assert "codeword:prod" in evals and "score 50%" in evals and "failed" in evals
    assert "at least 80%" in evals and "under the threshold" in evals
    canaries = page.find_element(By.CSS_SELECTOR, "#canaries + table").text
    assert "demo:prod v2 v1 25%" in canaries
    _checked(page, tmp_path, "rollout")
    page.get(f"{registry_site.url}/ui/adapters/codeword/versions/1")
    assert "failed" in page.find_element(By.CSS_SELECTOR, "#evaluations + table").text
    assert not console_errors(page)
