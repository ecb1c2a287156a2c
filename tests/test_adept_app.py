"""The ADePt app (/adept, ptynb.apps.adept: the WorkflowApp with ptynb.viz.adept's views and a
live view of the training) in headless Chromium (Playwright): loads, runs the ci preset to the
numbers with the live loss curve and depth slices updating during the training, cancel stops a
run."""
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
    return open_workflow_app(page, server["url"], "adept", preset)


def test_index_links_adept(server, page):
    page.goto(server["url"] + "/")
    page.locator("a[href$='adept']").first.wait_for(timeout=30000)


def _ci_iterations() -> int:
    from ptynb.workflows.adept import Settings

    return int(Settings.presets["ci"]["iterations"])


def test_adept_runs_ci_preset_and_shows_numbers(server, page):
    errors = _open(page, server)
    total = _ci_iterations()
    page.locator(".ptynb-run button").click()
    page.locator(".ptynb-progress").first.wait_for(state="visible", timeout=20000)
    # while the network trains: the live loss curve and depth slices appear ...
    live = page.locator(".ptynb-live")
    live.locator(".ptynb-live-plot canvas >> visible=true").first.wait_for(timeout=180000)
    status = live.locator(".ptynb-live-status")
    shown = status.get_by_text(re.compile(rf"iteration \d+ of {total}")).first
    shown.wait_for(timeout=30000)
    first = int(re.search(r"iteration (\d+)", shown.text_content()).group(1))
    assert first < total, "the first live view came with the last iteration: nothing was shown during training"
    # ... and are redrawn with later iterations before the run completes (the live view is
    # only visible while the run goes on, so a visible match is a live update)
    later = re.compile(rf"iteration (?!{first}\b)\d+ of {total}")
    status.get_by_text(later).wait_for(state="visible", timeout=120000)
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
