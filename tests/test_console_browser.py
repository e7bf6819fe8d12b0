"""Every console page in headless Chromium: no console errors, the store's numbers on screen, a screenshot each."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from console_harness import ROUNDS, TOKEN, LiveConsole

from fedelta.common.report import human_bytes, read_rows

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,900")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("no headless Chromium on this machine: `apt-get install chromium chromium-driver` "
                    "(make test installs them when it runs as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.TemporaryDirectory(prefix="fedelta-chromium-")
    options.add_argument(f"--user-data-dir={profile.name}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        if service.process is not None and service.process.poll() is None:
            os.kill(service.process.pid, signal.SIGKILL)
        profile.cleanup()


def _text(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector).text.strip()


def _all(driver: Any, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [element.text.strip() for element in driver.find_elements(By.CSS_SELECTOR, selector)]


def _overview(driver: Any, console: LiveConsole) -> None:
    summary = json.loads((console.out / "summary.json").read_text())
    assert _text(driver, "#head-version") == f"v{summary['final_version']}"
    assert _text(driver, "#head-sha") == summary["final_version_sha256"]
    assert _text(driver, "#latest-accuracy") == f"{summary['final_accuracy']:.4f}"
    assert _text(driver, "#total-upload") == human_bytes(summary["total_upload_bytes"])
    assert _text(driver, "#total-downlink") == human_bytes(summary["total_downlink_bytes"])
    assert _text(driver, "#upload-reduction") == f"{summary['upload_reduction']:,.1f}×"
    assert (_text(driver, "#rejected"), _text(driver, "#recent-sites"), _text(driver, "#round-state")) == ("0", "2", "finished")


def _rounds(driver: Any, console: LiveConsole) -> None:
    rows = read_rows(console.out)
    assert _all(driver, "#rounds-table td.accuracy") == [f"{row['accuracy']:.4f}" for row in rows]
    assert _all(driver, "#rounds-table td.upload") == [human_bytes(row["upload_bytes"]) for row in rows]
    assert _all(driver, "#rounds-table td.accepted") == [str(row["sites"]) for row in rows]
    assert len(_all(driver, "svg.chart")) == 3  # accuracy, bytes, seconds by phase
    assert len(_all(driver, "svg.chart circle")) == len(rows) + ROUNDS
    assert len(_all(driver, "svg.chart rect[height]")) >= 2 * ROUNDS


def _sites(driver: Any, console: LiveConsole) -> None:
    sites = console.get("/api/sites")
    assert [_text(driver, f"#site-{s['site']} td.bytes") for s in sites] == [human_bytes(s["upload_bytes"]) for s in sites]
    assert [_text(driver, f"#site-{s['site']} td.rounds") for s in sites] == [str(ROUNDS)] * 2
    assert all(_text(driver, f"#site-{s['site']} td.version") == f"v{ROUNDS + 1} current" for s in sites)
    assert [_text(driver, f"#site-{s['site']} td.blocked") for s in sites] == ["no"] * len(sites)


def _versions(driver: Any, console: LiveConsole) -> None:
    versions = console.get("/api/versions")
    assert len(_all(driver, "#versions-table tbody tr")) == len(versions) == ROUNDS + 2
    rolled = next(v for v in versions if v["kind"] == "rollback")
    assert f"= v{rolled['rollback_of']}" in _text(driver, f"#version-{rolled['version']}")
    assert _text(driver, "#version-1 td.size") == human_bytes(versions[-2]["delta_bytes"])


def _rejections(driver: Any, console: LiveConsole) -> None:
    assert _all(driver, "#rejections-table tbody tr") == ["no update has been rejected"]


def _actions(driver: Any, console: LiveConsole) -> None:
    outcomes = [c["outcome"] for c in console.get("/api/actions")]
    assert [row.split(" ", 1)[0] for row in _all(driver, "#controls-table tbody tr")] == ["3", "2", "1"]
    assert all(outcome in page for outcome, page in zip(outcomes, _all(driver, "#controls-table tbody tr")))
    for action in ("block", "unblock"):
        form = f"form[action$='/actions/{action}']"
        assert _all(driver, f"{form} input[name=site]") == [""] and _all(driver, f"{form} input[name=token]") == [""]


PAGES: dict[str, tuple[str, Callable[[Any, LiveConsole], None]]] = {
    "overview": ("/", _overview), "rounds": ("/rounds", _rounds), "sites": ("/sites", _sites),
    "versions": ("/versions", _versions), "rejections": ("/rejections", _rejections), "actions": ("/actions", _actions),
}


def _problems(driver: Any) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def _screenshot(driver: Any, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(900, int(height)))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 900)
    assert path.read_bytes()[:8] == PNG


@pytest.mark.parametrize("name", list(PAGES))
def test_page_loads_cleanly_and_shows_the_store(browser, live_console, tmp_path, name):
    from selenium.webdriver.support.ui import WebDriverWait

    path, check = PAGES[name]
    browser.get(live_console.url + path)
    # on a loaded 2-core machine the title can lag the load event: wait for it rather than read it once
    WebDriverWait(browser, 30).until(lambda driver: driver.title.startswith(name.capitalize()),
                                     f"the {name} page's title never began with {name.capitalize()!r}")
    assert _problems(browser) == []
    check(browser, live_console)
    _screenshot(browser, tmp_path / f"{name}.png")


def test_an_action_form_with_a_wrong_token_is_refused_and_changes_nothing(browser, live_console, tmp_path):
    from selenium.webdriver.common.by import By

    before = live_console.get("/api/actions")
    browser.get(live_console.url + "/actions")
    form = browser.find_element(By.CSS_SELECTOR, "form[action$='/pause']")
    form.find_element(By.NAME, "token").send_keys("not-the-token")
    form.find_element(By.ID, "pause-button").click()
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(expected_conditions.presence_of_element_located((By.ID, "action-error")))
    assert _text(browser, "#action-error") == "a valid token is required for actions"
    assert [e for e in _problems(browser) if "401" not in e["message"]] == []
    assert live_console.get("/api/actions") == before
    _screenshot(browser, tmp_path / "actions-refused.png")


def test_the_versions_page_exports_a_version_once_the_token_is_entered(browser, live_console, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    browser.get(live_console.url + "/versions")
    browser.find_element(By.ID, "export-token").send_keys("not-the-token")
    browser.find_element(By.ID, "export-1").click()
    WebDriverWait(browser, 20).until(lambda driver: driver.find_elements(By.ID, "export-error"))
    assert _text(browser, "#export-error") == "a valid token is required for exports"
    browser.find_element(By.ID, "export-token").send_keys(TOKEN)
    browser.find_element(By.ID, "export-1").click()
    archive = tmp_path / "fedelta-v1.zip"
    WebDriverWait(browser, 120).until(lambda _: archive.is_file())
    assert "fedelta-v1/model.safetensors" in zipfile.ZipFile(archive).namelist()
    assert [e for e in _problems(browser) if "401" not in e["message"]] == []
