"""End to end in a real headless Chromium (Debian's chromium and chromedriver, driven by Selenium):
sign in, start a round, watch simulated devices join and the round commit on the live overview,
promote a version, revoke a device. Screenshots of the overview and the round page are saved to the
test's temporary folder (and to FEDFACE_CONSOLE_SCREENSHOTS, when set, for the docs)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import ADMIN_TOKEN
from tests.support.fleet import Device, delta_bytes, enroll, get_round, register_model
from tests.support.live import LiveServer

CHROMIUM = Path(os.environ.get("FEDFACE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FEDFACE_CHROMEDRIVER", "/usr/bin/chromedriver"))
WAIT_S = 40


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"Chromium is not installed here ({', '.join(missing)} missing): "
                    "`apt-get install -y chromium chromium-driver` (.ci/run does so as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1360,1000", "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, what: str, check: Callable[[WebDriver], object]) -> None:
    def safe(d: WebDriver) -> object:
        try:
            return check(d)
        except (StaleElementReferenceException, WebDriverException):
            return False  # the live fragment replaced the element between find and read

    WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(safe, message=f"waiting for {what}")


def _text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text).strip()


def _screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page: the window grows to the document's height first."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1360, min(max(height, 700), 6000))
    # The second animation frame after the resize comes once the page is laid out and painted at the
    # new size: waiting for it, rather than for a fixed delay, keeps the screenshot whole on a slow host.
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; requestAnimationFrame(() => requestAnimationFrame(done));")
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1360, 1000)
    out = os.environ.get("FEDFACE_CONSOLE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


def _submit(device: Device, round_id: int, version: int, i: int) -> None:
    r = device.submit(round_id, delta_bytes(i), num_samples=4 + i, base_version=version,
                      metrics={"loss_before": 0.9 - 0.05 * i, "loss_after": 0.45 - 0.04 * i})
    assert r.status_code == 200, r.text


def test_operator_runs_a_round_in_the_browser(server: LiveServer, browser: webdriver.Chrome, tmp_path: Path) -> None:
    started = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=30) as api:
        v1 = register_model(api, extra_manifest={"thresholds": {"0.001": 0.61}})
        devices = enroll(api, 6)

        # Sign in: the console sends an anonymous visitor to its sign-in form, then back.
        browser.get(server.url + "/console/rounds")
        _wait(browser, "the sign-in form", lambda d: d.find_element(By.ID, "token"))
        browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        _wait(browser, "the rounds page", lambda d: d.current_url.endswith("/console/rounds"))
        assert ADMIN_TOKEN not in browser.current_url

        # Start a round from the form.
        browser.find_element(By.ID, "start-round").click()
        _wait(browser, "the round form", lambda d: d.find_element(By.ID, "round-form"))
        for name, value in (("algorithm", "fedavg"), ("target_devices", "5"), ("min_devices", "3"),
                            ("deadline_s", "300")):
            field = browser.find_element(By.NAME, name)
            field.clear()
            field.send_keys(value)
        Select(browser.find_element(By.NAME, "optimizer")).select_by_visible_text("sgd")
        browser.find_element(By.ID, "start").click()
        _wait(browser, "the new round's page", lambda d: "/console/rounds/" in d.current_url)
        round_id = int(browser.current_url.rsplit("/", 1)[1])
        assert get_round(api, round_id)["state"] == "collecting"

        # Watch the overview (no reload: the live fragment) while devices join and submit.
        browser.get(server.url + "/console")
        _wait(browser, "the overview", lambda d: _text(d, "#round-state") == "collecting")
        for d in devices[:3]:
            assert d.check_in()["status"] == "task"
        _wait(browser, "three devices checked in", lambda d: _text(d, "#round-selected") == "3")
        stale = devices[5].check_in()
        assert stale["status"] == "task"
        assert devices[5].submit(round_id, delta_bytes(9), base_version=v1["id"] + 7).status_code == 409
        for i, d in enumerate(devices[:3]):
            _submit(d, round_id, v1["id"], i)
        _wait(browser, "three updates accepted", lambda d: _text(d, "#round-accepted") == "3")
        assert "left" in _text(browser, "time.countdown")  # the deadline counts down in the page
        _screenshot(browser, tmp_path / "overview.png")

        for i, d in enumerate(devices[3:5], start=3):
            assert d.check_in()["status"] == "task"
            _submit(d, round_id, v1["id"], i)
        _wait(browser, "the round to commit", lambda d: _text(d, "#round-state") == "committed")
        v2 = get_round(api, round_id)["result_version_id"]
        assert v2 and f"version {v2}" in _text(browser, "#served")

        # The round's page: parameters, refusals by code, plots.
        browser.get(f"{server.url}/console/rounds/{round_id}")
        _wait(browser, "the round report", lambda d: d.find_element(By.CSS_SELECTOR, "#loss svg"))
        assert "stale_base_version" in _text(browser, "#failures")
        assert _text(browser, "#robust-clipped") == "0"
        _screenshot(browser, tmp_path / "round.png")

        # Promote version 1 back, through the confirmation page.
        browser.get(server.url + "/console/models")
        browser.find_element(By.CSS_SELECTOR, f"#version-{v1['id']} a.button").click()
        _wait(browser, "the confirmation", lambda d: d.find_element(By.ID, "confirm"))
        browser.find_element(By.ID, "confirm").click()
        _wait(browser, "version 1 served", lambda d: "served" in _text(d, f"#version-{v1['id']}"))
        served = [v["id"] for v in api.get("/v1/admin/models", headers={
            "Authorization": f"Bearer {ADMIN_TOKEN}"}).json() if v["served"]]
        assert served == [v1["id"]]

        # Revoke a device.
        victim = devices[4]
        browser.get(server.url + "/console/devices")
        browser.find_element(By.CSS_SELECTOR, f"#device-{victim.device_id} a.button").click()
        _wait(browser, "the confirmation", lambda d: d.find_element(By.ID, "confirm"))
        browser.find_element(By.ID, "confirm").click()
        _wait(browser, "the device revoked", lambda d: "revoked" in _text(d, f"#device-{victim.device_id}"))
        assert api.post("/v1/check-in", headers=victim.auth).json()["code"] == "credential_revoked"

        # Nothing the pages do needs an exception to the Content-Security-Policy.
        violations = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
        assert violations == []
    for name in ("overview.png", "round.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    print(f"browser test: {time.perf_counter() - started:.1f} s")
