"""Headless Chromium (Debian's, or a Chrome on PATH, driven by selenium through chromedriver;
both found by tests/support/services.py) and the page checks every browser test makes: console
errors, keyboard reach, text contrast."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "support"))
import services

# For every visible element with its own text: its colour against the first opaque background
# behind it (white at the root), as WCAG 2 contrast ratios; returns the ones under `min`.
CONTRAST_JS = """
const min = arguments[0];
function rgba(s) {
  const m = s.match(/rgba?\\(([^)]+)\\)/);
  if (!m) return null;
  const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
  return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
}
function lum(c) {
  const f = (v) => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
}
function background(el) {
  for (let e = el; e; e = e.parentElement) {
    const c = rgba(getComputedStyle(e).backgroundColor);
    if (c && c[3] > 0.5) return c;
  }
  return [255, 255, 255, 1];
}
const bad = [];
let checked = 0;
for (const el of document.body.querySelectorAll("*")) {
  const own = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own || !el.getClientRects().length) continue;
  const style = getComputedStyle(el);
  if (style.visibility === "hidden" || style.opacity === "0") continue;
  const fg = rgba(style.color), bg = background(el);
  if (!fg) continue;
  const a = fg[3], mixed = [0, 1, 2].map((i) => fg[i] * a + bg[i] * (1 - a));
  const [l1, l2] = [lum(mixed), lum(bg)].sort((x, y) => y - x);
  const ratio = (l1 + 0.05) / (l2 + 0.05);
  checked += 1;
  const text = el.textContent.trim().slice(0, 40);
  if (ratio < min) bad.push(el.tagName + " '" + text + "' " + ratio.toFixed(2));
}
return [checked, bad];
"""


def require_chromium() -> tuple[str, str]:
    """The browser and its driver; a skip (a developer without root) or a failure (CI set, or
    root) when either is missing."""
    return services.require("chromium"), services.require("chromedriver")


def start_chromium(downloads: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = require_chromium()
    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run",
                f"--user-data-dir={downloads / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver,
                      log_output=str(downloads / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    return driver


def console_errors(driver) -> list[str]:
    """SEVERE console entries since the last call (reading the log empties it)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def contrast_failures(driver, minimum: float = 4.5) -> tuple[int, list[str]]:
    checked, bad = driver.execute_script(CONTRAST_JS, minimum)
    return checked, bad


def tab_to(driver, element, limit: int = 80) -> int:
    """Press Tab from the top of the page until ``element`` has focus; the number of presses.
    Also checks that the focused element shows a focus ring."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.activeElement && document.activeElement.blur();"
                          "window.scrollTo(0, 0);")
    for presses in range(1, limit + 1):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.switch_to.active_element == element:
            outline = driver.execute_script(
                "const s = getComputedStyle(document.activeElement);"
                "return [s.outlineStyle, s.outlineWidth];")
            assert outline[0] != "none" and outline[1] != "0px", f"no visible focus: {outline}"
            return presses
    raise AssertionError(f"Tab never reached {element.tag_name} {element.text!r} "
                         f"in {limit} presses")


def press_enter(driver) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).send_keys(Keys.ENTER).perform()


def screenshot(driver, path: Path, *, full: bool = True) -> Path:
    """A PNG of the page, tall enough for all of it when ``full``."""
    if full:
        height, chrome = driver.execute_script(
            "return [document.documentElement.scrollHeight, "
            "window.outerHeight - window.innerHeight]")
        driver.set_window_size(1280, min(max(int(height) + int(chrome) + 20, 600), 4000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    assert path.read_bytes()[:4] == b"\x89PNG"
    return path



def keep_for_docs(shot: Path, name: str) -> None:
    """With LORAMUX_UI_SHOTS=DIR, also copy a screenshot there: how docs/ui-*.png are made
    (`LORAMUX_UI_SHOTS=docs pytest tests/ui`)."""
    folder = os.environ.get("LORAMUX_UI_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(shot.read_bytes())
