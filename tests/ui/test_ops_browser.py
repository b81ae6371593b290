"""The ops pages in a real browser: Airflow's login page, Airflow's navigation, each page in
Airflow's frame, screenshots under test-output/ui/.

Headless Debian Chromium (``scripts/browser.sh`` installs it) driven by Playwright through
``executable_path``: nothing downloads a browser. Skipped when Chromium or Playwright is missing,
except under ``CI=true``, where that fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import OUTPUT
from support import unavailable

CHROMIUM = os.environ.get("BT_CHROMIUM", "/usr/bin/chromium")
NOTICE = "Research use, not for diagnosis."
TIMEOUT_MS = 30_000


def _browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not (shutil.which(CHROMIUM) or os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} not found (install Debian's chromium: scripts/browser.sh as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return ("the playwright package is not installed (pip install playwright; "
                "no browser download)")
    return None


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Any]:
    """A headless Chromium page (skips, or fails under CI=true, without Chromium)."""
    missing = _browser_missing()
    if missing:
        unavailable(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu",
                                           "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            yield page
        finally:
            browser.close()


def open_from_navigation(page: Any, label: str) -> None:
    """Plugins → Brain tumor → label, in Airflow's left navigation."""
    page.get_by_role("button", name="Plugins").click()
    page.get_by_role("menuitem", name="Brain tumor").click()
    page.get_by_role("menuitem", name=label, exact=True).click()


def test_pages_in_airflow_ui(ops_server, filled, browser_page) -> None:
    from playwright.sync_api import expect

    OUTPUT.mkdir(parents=True, exist_ok=True)
    page = browser_page
    # Airflow's UI redirects to its login page on the client side; a navigation may be aborted
    # by the next redirect, so the test waits for the login form rather than for a page load.
    page.goto(ops_server.base_url + "/", wait_until="commit")
    expect(page.locator("input[name=username]")).to_be_visible(timeout=60_000)
    assert "/auth/login" in page.url, page.url
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(ops_server.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)

    m1, m2 = filled.models[0], filled.models[1]
    expected = {
        "Models": ("brain-tumor-models", "Models", [f"Champion: {m1}", m2, "rolled_back"]),
        "Gate decisions": ("brain-tumor-gates", "Gate decisions", ["floor_roc_auc", "FAIL"]),
        "Trends": ("brain-tumor-trends", "Trends", ["Score distribution (drift)",
                                                    filled.datasets[1]]),
        "Scoring": ("brain-tumor-scoring", "Scoring", [filled.bad_study, "Recent batches"]),
    }
    for label, (route, heading, texts) in expected.items():
        open_from_navigation(page, label)
        page.wait_for_url(f"**/plugin/{route}")
        frame = page.frame_locator("iframe")
        expect(frame.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        for text in [NOTICE, *texts]:
            expect(frame.get_by_text(text).first).to_be_visible()
        expect(frame.locator(".alert").first).to_be_visible()
        if label == "Trends":
            expect(frame.locator("svg.chart")).to_have_count(5)  # with the PSI drift chart
            expect(frame.locator("svg.chart circle").first).to_be_visible()
        page.screenshot(path=str(OUTPUT / f"{route}.png"), full_page=True)

    # a study from the Scoring page: summary and overlay pictures served by the plugin
    frame = page.frame_locator("iframe")
    study = filled.studies[-1]
    with page.expect_response(lambda r: r.url.endswith(f"/{study}/overview.png")) as picture:
        frame.locator("#studies a").filter(has_text=study).first.click()
    assert picture.value.status == 200
    assert picture.value.headers["x-research-use"] == "research use, not for diagnosis"
    expect(frame.get_by_role("heading", name=f"Study {study}")).to_be_visible()
    expect(frame.get_by_text(NOTICE).first).to_be_visible()
    image = frame.locator("img").first
    expect(image).to_be_visible()
    for _ in range(50):
        if image.evaluate("img => img.complete && img.naturalWidth > 0"):
            break
        page.wait_for_timeout(200)
    else:
        raise AssertionError("the study's overview picture did not render")
    page.screenshot(path=str(OUTPUT / "brain-tumor-study.png"), full_page=True)

    # logging out ends access to the plugin as well
    page.context.clear_cookies()
    resp = page.request.get(ops_server.base_url + "/brain-tumor/models")
    assert resp.status == 401
