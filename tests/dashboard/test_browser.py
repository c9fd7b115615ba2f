"""The dashboard in a real browser: `qctrace dashboard` on a free port over the demo dataset, driven
by Debian's headless Chromium through chromedriver (selenium).

Each page is opened the way a person opens it (log in, click the page in the sidebar), waited on
until its data is drawn, screenshotted to test-artifacts/, and checked for Streamlit's exception
box and error alerts. A technician's sidebar has no Trace page, and asking for its URL does not
show it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORDS = {"tech": "tech-demo", "compliance": "compliance-demo", "admin": "admin-demo"}
TILE_MARK = " — "  # status tiles ("**line** — **alarm**") are meant to be red; other error boxes are not


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard_url(demo_dir: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "qctrace", "dashboard", "--data-dir", str(demo_dir), "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dashboard did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()  # as a service manager stops it: SIGTERM to `qctrace dashboard` alone
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        # ...must stop its Streamlit server too (it used to live on, orphaned, holding the port).
        deadline = time.monotonic() + 15
        while _answers(url) and time.monotonic() < deadline:
            time.sleep(0.2)
        orphaned = _answers(url)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its session, before failing
        assert not orphaned, "the Streamlit server outlived `qctrace dashboard` after SIGTERM"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except WebDriverException as exc:
        pytest.fail(f"cannot start Chromium through {CHROMEDRIVER} (make system-deps installs it): {exc.msg}")
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def _wait(driver: webdriver.Chrome, css: str, timeout: float = 20) -> None:
    WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def _until(driver: webdriver.Chrome, timeout: float = 20) -> WebDriverWait:
    """Streamlit redraws elements while the page updates: a vanished element means "look again"."""
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))


def _wait_text(driver: webdriver.Chrome, text: str, timeout: float = 20) -> None:
    _until(driver, timeout).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)


def _click(driver: webdriver.Chrome, label: str) -> None:
    xpath = f"//button[.//p[text()='{label}']]"
    _until(driver).until(ec.element_to_be_clickable((By.XPATH, xpath)))
    driver.find_element(By.XPATH, xpath).click()


def _login(driver: webdriver.Chrome, url: str, user: str, path: str = "") -> None:
    driver.delete_all_cookies()
    driver.get(f"{url}/{path}")
    _wait(driver, 'input[aria-label="User name"]', 30)
    if path:  # a page the logged-out session does not have: Streamlit says so in a dialog
        _wait_text(driver, "Page not found")
        driver.save_screenshot(str(ARTIFACTS / f"dashboard-logged-out-{path}.png"))
        driver.find_element(By.CSS_SELECTOR, '[role="dialog"] button[aria-label="Close"]').click()
        _until(driver).until_not(lambda d: d.find_elements(By.CSS_SELECTOR, '[role="dialog"]'))
    driver.find_element(By.CSS_SELECTOR, 'input[aria-label="User name"]').send_keys(user)
    driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Password"]').send_keys(PASSWORDS[user])
    _click(driver, "Log in")
    _wait_text(driver, f"Logged in as {user}")


def _open(driver: webdriver.Chrome, title: str) -> None:
    driver.find_element(By.XPATH, f"//a[@data-testid='stSidebarNavLink'][.//span[@label='{title}']]").click()
    _until(driver).until(lambda d: any(h.text == title for h in d.find_elements(By.TAG_NAME, "h1")))


def _check(driver: webdriver.Chrome, name: str, *texts: str) -> None:
    for text in texts:
        _wait_text(driver, text)
    time.sleep(0.5)  # let the last element finish drawing before the screenshot
    driver.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))
    assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), name
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')
              if TILE_MARK not in e.text]
    assert not errors, (name, errors)


def test_every_page_shows_its_data_in_chromium(dashboard_url, browser):
    _login(browser, dashboard_url, "tech")
    _wait(browser, '[data-testid="stPlotlyChart"]', 30)
    _check(browser, "line-quality", "Line quality", "plant1/line1", "Control charts", "Alarms")
    _open(browser, "Cold chain")
    _wait(browser, '[data-testid="stPlotlyChart"]')
    _check(browser, "cold-chain", "Shipments", "Mean kinetic temperature", "Excursion budget used", "Custody")
    nav = browser.find_element(By.CSS_SELECTOR, '[data-testid="stSidebarNav"]').text
    assert "Trace" not in nav and "Ledger" not in nav

    _login(browser, dashboard_url, "compliance")
    _open(browser, "Trace")
    _wait(browser, '[data-testid="stGraphVizChart"] svg', 30)
    _check(browser, "trace", "chain verified", "checkpoint signed", "root anchored", "Genealogy", "Ledger events")
    _open(browser, "Ledger")
    _click(browser, "Run full verification")
    _check(browser, "ledger", "Ledger verified", "Checkpoints and anchors")


def test_a_technician_cannot_open_the_trace_page_by_url(dashboard_url, browser):
    _login(browser, dashboard_url, "tech", path="trace")
    time.sleep(1.0)
    titles = [h.text for h in browser.find_elements(By.TAG_NAME, "h1")]
    browser.save_screenshot(str(ARTIFACTS / "dashboard-tech-trace-refused.png"))
    assert "Trace" not in titles
    assert "chain verified" not in browser.find_element(By.TAG_NAME, "body").text
