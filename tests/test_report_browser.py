"""The pipeline report rendered by a real browser: headless Chromium (Debian packages `chromium`
and `chromium-driver`) through selenium. Every image decoded, no console error, the tables there,
and a screenshot that is a real picture. Skipped without Chromium, except under CI (CI=...)."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from compress.report.pipeline import FIGURE_NAMES, write_pipeline_report
from tests.test_pipeline_report import OUTPUTS, VARIANTS, make_run

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1600")


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            return f"{path} not found (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    """The report of a synthetic run, opened from disk: (driver, console log, report folder)."""
    out, state = make_run(tmp_path_factory.mktemp("run"))
    html_path, _md = write_pipeline_report(out, state)
    shutil.rmtree(out / "report_files")  # the page must not need the PNG files beside it
    browser.get(html_path.resolve().as_uri())
    browser.execute_script("return document.readyState")
    return browser, browser.get_log("browser"), out


def test_every_image_decoded(page):
    driver, _log, _out = page
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);")
    assert len(images) == len(FIGURE_NAMES)
    for complete, width, height, alt in images:
        assert complete and width > 100 and height > 100 and alt


def test_no_console_error(page):
    _driver, log, _out = page
    assert [e for e in log if e.get("level") == "SEVERE"] == []


def test_tables_rendered(page):
    driver, _log, _out = page
    variants = driver.execute_script(
        "return Array.from(document.querySelectorAll('#variants tbody tr')).map(r => r.cells[0].textContent);")
    assert variants == [v[0] for v in VARIANTS]
    stages = driver.execute_script(
        "return Array.from(document.querySelectorAll('#stages tbody tr')).map(r => r.cells[0].textContent);")
    assert stages == list(OUTPUTS)
    assert driver.title.startswith("compress pipeline")


def test_screenshot_is_a_picture(page):
    from PIL import Image

    driver, _log, out = page
    shot = out / "report-screenshot.png"
    assert driver.save_screenshot(str(shot))
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.width >= 800 and image.height >= 600
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20  # text, table rules and plots, not one blank colour
