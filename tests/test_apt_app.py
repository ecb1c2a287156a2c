"""The APT app (/apt) in headless Chromium (Playwright): loads, runs the ci preset with the shipped
weights, cancel stops a long run."""
from __future__ import annotations

import re

import pytest
from servers import free_port, open_workflow_app, ptynb_serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    with ptynb_serve(port):
        yield {"url": f"http://127.0.0.1:{port}"}


def _open(page, server, preset="ci"):
    return open_workflow_app(page, server["url"], "apt", preset)


def test_index_links_apt(server, page):
    page.goto(server["url"] + "/")
    page.locator("a[href$='apt']").first.wait_for(timeout=30000)


def test_apt_runs_ci_preset_and_shows_metrics(server, page):
    errors = _open(page, server)
    page.locator(".ptynb-run button").click()
    page.locator(".ptynb-message").get_by_text("run complete").wait_for(timeout=120000)
    page.get_by_text("Metrics", exact=True).click()
    page.get_by_text(re.compile("MS-SSIM")).first.wait_for(timeout=30000)
    page.get_by_text("Slices", exact=True).click()
    page.locator(".ptynb-view canvas >> visible=true").first.wait_for(timeout=60000)
    assert not errors, errors


def test_apt_cancel_stops_a_run(server, page):
    _open(page, server, preset="paper")
    page.locator(".ptynb-run button").click()
    page.locator(".ptynb-progress").first.wait_for(state="visible", timeout=20000)
    page.locator(".ptynb-cancel button").click()
    page.locator(".ptynb-message").get_by_text("run cancelled").wait_for(timeout=120000)
