"""The ADePt app (/adept, the generic WorkflowApp with ptynb.viz.adept's views) in headless
Chromium (Playwright): loads, runs the ci preset to the numbers, cancel stops a run."""
from __future__ import annotations

import re

import pytest
from servers import free_port, ptynb_serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    with ptynb_serve(port):
        yield {"url": f"http://127.0.0.1:{port}"}


def _open(page, server, preset="ci"):
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server["url"] + "/adept")
    page.locator(".ptynb-run button").wait_for(timeout=60000)
    page.locator(".ptynb-preset select").select_option(label=preset)
    return errors


def test_index_links_adept(server, page):
    page.goto(server["url"] + "/")
    page.locator("a[href$='adept']").first.wait_for(timeout=30000)


def test_adept_runs_ci_preset_and_shows_numbers(server, page):
    errors = _open(page, server)
    page.locator(".ptynb-run button").click()
    page.locator(".ptynb-progress").first.wait_for(state="visible", timeout=20000)
    page.locator(".ptynb-message").get_by_text("run complete").wait_for(timeout=180000)
    page.get_by_text("Numbers", exact=True).click()
    page.get_by_text(re.compile("BER all")).first.wait_for(timeout=30000)
    page.get_by_text("Depth slices", exact=True).click()
    page.locator(".ptynb-view canvas >> visible=true").first.wait_for(timeout=60000)
    assert not errors, errors


def test_adept_cancel_stops_a_run(server, page):
    _open(page, server, preset="default")
    page.locator(".ptynb-run button").click()
    page.locator(".ptynb-progress").first.wait_for(state="visible", timeout=20000)
    page.locator(".ptynb-cancel button").click()
    page.locator(".ptynb-message").get_by_text("run cancelled").wait_for(timeout=120000)
