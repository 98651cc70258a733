"""The server's playground in headless Chromium against a real `loramux serve` (vLLM, the
trained demo adapters): log in with an API key, pick an adapter, send a chat and get the answer
only that adapter knows, compare two adapters side by side, watch the live metrics; then promote
the better version with the eval-gated `loramux registry promote` on the same server and see it
on the registry's page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from ui_browser import (
    console_errors,
    contrast_failures,
    keep_for_docs,
    press_enter,
    screenshot,
    tab_to,
)
from ui_sites import READER, Playground, serve_registry

from loramux.demo.tasks import load_eval, normalize

pytestmark = pytest.mark.slow


def _answer(page, side: str) -> str:
    box = page.find_element(By.ID, f"answer-{side}")
    WebDriverWait(page, 240).until(lambda _: box.get_attribute("data-state") in ("done",
                                                                                  "error"))
    assert box.get_attribute("data-state") == "done", box.text
    return box.text


def _login(page, url: str, key: str) -> None:
    page.get(f"{url}/ui")
    field = page.find_element(By.ID, "token")
    assert page.find_element(By.CSS_SELECTOR, "label[for=token]").text == "API key"
    field.send_keys(key)
    field.submit()
    WebDriverWait(page, 30).until(lambda p: p.current_url.endswith("/ui"))


def test_chat_with_the_chosen_adapter_and_compare(page, playground: Playground,
                                                   demo_data: dict[str, Path], tmp_path) -> None:
    item = load_eval(demo_data["codeword"] / "eval.jsonl")[0]  # only the codeword adapter knows
    _login(page, playground.url, playground.key)
    options = [o.text for o in Select(page.find_element(By.ID, "model-a")).options]
    assert {"ui-demo@1", "ui-demo@2", "ui-demo:prod"} <= set(options)
    Select(page.find_element(By.ID, "model-a")).select_by_value("ui-demo@2")
    page.find_element(By.ID, "message").send_keys(item.messages[-1]["content"])
    tab_to(page, page.find_element(By.ID, "send"))
    press_enter(page)  # Enter on the focused button sends
    assert normalize(_answer(page, "a")) == normalize(item.expected)
    assert page.find_element(By.ID, "served-a").text == "ui-demo@2"

    # side by side: the codeword version and the caps version of the same adapter
    tab_to(page, page.find_element(By.ID, "compare"))
    page.switch_to.active_element.send_keys(" ")  # Space toggles the focused checkbox
    assert page.find_element(By.ID, "panel-b").is_displayed()
    Select(page.find_element(By.ID, "model-b")).select_by_value("ui-demo:prod")
    page.find_element(By.ID, "send").click()
    assert normalize(_answer(page, "a")) == normalize(item.expected)
    other = _answer(page, "b")
    assert page.find_element(By.ID, "served-b").text == "ui-demo@1"  # prod, resolved
    assert normalize(other) != normalize(item.expected), "v1 never learned the code words"

    # live metrics: the adapter's row counts the three requests, both versions when labelled.
    # The table is rebuilt every 2 s, so it is read in one script call: element handles taken
    # one by one can go stale between two reads.
    def counted(_) -> bool:
        rows = page.execute_script(
            "return [...document.querySelectorAll('#metrics tr')]"
            ".map(r => [...r.querySelectorAll('td')].map(c => c.textContent.trim()));")
        row = next((r for r in rows if r and r[0] == "ui-demo"), None)
        return row is not None and len(row) > 2 and float(row[2]) >= 3

    WebDriverWait(page, 15).until(counted)
    checked, bad = contrast_failures(page)
    assert checked > 10 and not bad, bad
    assert not console_errors(page)
    keep_for_docs(screenshot(page, tmp_path / "playground.png"), "ui-playground.png")


def test_promote_through_the_gate_and_see_it_on_the_registry_page(
        page, playground: Playground, demo_data: dict[str, Path], tmp_path) -> None:
    lines = (demo_data["codeword"] / "eval.jsonl").read_text().splitlines()[:8]
    (tmp_path / "eval.jsonl").write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "loramux.cli", "registry", "--registry",
         str(playground.registry_dir), "promote", "ui-demo@2", "--alias", "prod", "--eval",
         str(tmp_path / "eval.jsonl"), "--server", playground.url, "--min-exact", "0.75",
         "--api-key", playground.key], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    with serve_registry(playground.registry_dir, tmp_path) as url:
        page.get(f"{url}/ui/login")
        page.find_element(By.ID, "token").send_keys(READER)
        page.find_element(By.ID, "token").submit()
        WebDriverWait(page, 30).until(lambda p: p.current_url.endswith("/ui"))
        row = page.find_element(By.XPATH, "//td/a[text()='ui-demo']/../..").text
        assert "prod → v2" in row
        evals = page.find_element(By.CSS_SELECTOR, "#evaluations + table").text
        assert "ui-demo:prod" in evals and "passed" in evals
        page.find_element(By.LINK_TEXT, "ui-demo").click()
        newest = page.find_elements(By.CSS_SELECTOR, "#history + table tbody tr")[0].text
        assert "promoted (eval gate passed)" in newest and "v1 v2" in newest
        checked, bad = contrast_failures(page)
        assert checked > 10 and not bad, bad
        assert not console_errors(page)
        keep_for_docs(screenshot(page, tmp_path / "registry.png"), "ui-registry.png")
