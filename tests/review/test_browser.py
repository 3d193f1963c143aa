"""The real thing: ``promptcam-review`` served by uvicorn, driven by headless Chromium through Selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and the ``selenium`` package; without
them the browser test skips and says which is missing. Screenshots are written to the test's
temporary folder (and copied to ``$PROMPTCAM_REVIEW_SCREENSHOTS`` when set).
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import run_cli

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(results_copy: Path) -> Iterator[str]:
    """``promptcam-review RESULTS --port P`` (the installed command), until the test ends."""
    with review_server(results_copy) as base:
        yield base


@contextlib.contextmanager
def review_server(results: Path) -> Iterator[str]:
    """``promptcam-review RESULTS --port P`` (the installed command) until the block ends; yields its URL."""
    port = free_port()
    exe = Path(sys.executable).parent / "promptcam-review"
    process = subprocess.Popen([str(exe), str(results), "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"promptcam-review did not start: {process.stdout.read()}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def raw_get(base: str, path: str, host: str | None = None) -> tuple[int, str]:
    """A GET with the path sent byte for byte (no client-side ``..`` folding)."""
    address, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"{address}:{port}")
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_live_server_refuses_traversal_and_foreign_hosts(server: str) -> None:
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/photo/../../../../etc/passwd",
                 "/photo/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "//etc/passwd", "/static//etc/passwd", "/item/1%00"):
        status, body = raw_get(server, path)
        assert 400 <= status < 500, (path, status)
        assert "root:" not in body and "def create_app" not in body
    assert raw_get(server, "/", host="attacker.example")[0] == 400  # DNS rebinding: a local server, local names only
    assert raw_get(server, "/", host="localhost")[0] == 200


def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            pytest.skip(f"{path} not found: apt-get install {package}")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"promptcam-review-chromium-{os.getpid()}-{time.time_ns()}"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    return driver, profile


def keep_screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    target = os.environ.get("PROMPTCAM_REVIEW_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def test_review_in_a_real_browser(server: str, results_copy: Path, tmp_path: Path) -> None:
    driver, profile = browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(driver, 20)
    try:
        # the grid renders, thumbnails included
        driver.get(server + "/")
        cards = driver.find_elements(By.CSS_SELECTOR, "#grid a.card")
        assert len(cards) == 10
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#grid a.ok img')].every(i => i.complete && i.naturalWidth > 0)"))
        keep_screenshot(driver, tmp_path, "review-grid.png")

        # a filter narrows it
        Select(driver.find_element(By.ID, "f-source")).select_by_visible_text("camA")
        driver.find_element(By.ID, "f-apply").click()
        wait.until(lambda d: "source=camA" in d.current_url)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid a.card")) == 5
        Select(driver.find_element(By.ID, "f-status")).select_by_value("ok")
        driver.find_element(By.ID, "f-apply").click()
        wait.until(lambda d: "status=ok" in d.current_url)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid a.card")) == 4

        # open an image: photo, heatmap crossfade, top-k
        driver.find_elements(By.CSS_SELECTOR, "#grid a.card")[0].click()
        wait.until(lambda d: d.execute_script("const p = document.getElementById('photo'); "
                                              "return p && p.complete && p.naturalWidth > 0"))
        item_url = driver.current_url.split("?")[0]
        opacity = "return document.getElementById('overlay').style.opacity"
        assert driver.execute_script(opacity) == "0.7"  # the slider's start value (the fade runs in CSS)
        driver.find_element(By.TAG_NAME, "body").send_keys("h")
        assert driver.execute_script(opacity) == "0"
        driver.find_element(By.TAG_NAME, "body").send_keys("h")
        wait.until(lambda d: d.find_element(By.ID, "overlay").value_of_css_property("opacity") == "0.7")
        predicted = driver.find_element(By.ID, "predicted").text
        keep_screenshot(driver, tmp_path, "review-item.png")

        # mark it wrong with the keyboard and pick the right class from the searchable list
        driver.find_element(By.TAG_NAME, "body").send_keys("w")
        search = driver.find_element(By.ID, "class-search")
        wait.until(lambda d: search.is_displayed())
        options = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#class-options li")]
        right = next(name for name in options if name != predicted)
        search.send_keys(right)
        assert [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#class-options li")][0] == right
        search.send_keys("\n")
        wait.until(lambda d: d.current_url.split("?")[0] != item_url)  # saved, and on to the next image

        # the correction survives a reload
        driver.get(item_url)
        assert driver.find_element(By.ID, "verdict").text == f"corrected to: {right}"
        driver.get(server + "/?reviewed=corrected")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid a.card")) == 1
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

    # and it is in the export
    out = tmp_path / "export"
    result = run_cli("promptcam-review", "export", results_copy, "--out", out)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "corrections.csv").open(encoding="utf-8")))
    assert [(r["verdict"], r["label"], r["predicted"]) for r in rows] == [("corrected", right, predicted)]
    exported = out / rows[0]["exported_as"]
    assert exported.parent.name.endswith(f".{right}") and exported.is_file()


def test_an_event_is_corrected_in_one_click(event_results: Path, tmp_path: Path) -> None:
    """Paging by event (``--events`` results with a clip): the burst's label typed once, applied to its
    three photos by one click, in the page at once and in the export."""
    driver, profile = browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 20)
    burst = "cam1@2026-05-01T06:00:00"
    try:
        with review_server(event_results) as base:
            driver.get(base + "/")
            driver.find_element(By.ID, "by-event").click()
            wait.until(lambda d: "by=event" in d.current_url)
            assert len(driver.find_elements(By.CSS_SELECTOR, "article.event")) == 4
            wait.until(lambda d: d.execute_script(  # every file's heatmap (a clip: its strip) as a thumbnail
                "return [...document.querySelectorAll('article.event img')].every(i => i.complete && i.naturalWidth)"))
            event = next(a for a in driver.find_elements(By.CSS_SELECTOR, "article.event")
                         if a.find_element(By.CSS_SELECTOR, ".event-id").text == burst)
            assert len(event.find_elements(By.CSS_SELECTOR, "a.card")) == 3
            classes = driver.execute_script("return JSON.parse(document.getElementById('page-data').textContent)"
                                            ".classes")
            right = next(c for c in classes if c != event.get_attribute("data-verdict"))
            event.find_element(By.CSS_SELECTOR, ".event-label").send_keys(right)
            event.find_element(By.CSS_SELECTOR, ".event-apply").click()  # the one action
            state = event.find_element(By.CSS_SELECTOR, ".event-state")
            wait.until(lambda d: state.text == f"reviewed: {right} (3 files)")
            cards = event.find_elements(By.CSS_SELECTOR, "a.card")
            assert all("unreviewed" not in c.get_attribute("class") for c in cards)
            keep_screenshot(driver, tmp_path, "review-events.png")
            driver.get(base + "/?by=event&reviewed=no")  # it is saved: the other three events are left
            assert len(driver.find_elements(By.CSS_SELECTOR, "article.event")) == 3
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    result = run_cli("promptcam-review", "export", event_results, "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "export" / "corrections.csv").open(encoding="utf-8")))
    assert [(r["label"], r["event_id"], r["labelled_by"]) for r in rows] == [(right, burst, "event")] * 3
