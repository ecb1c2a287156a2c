"""The MSPT app (/mspt) in headless Chromium (Playwright): loads, runs the ci preset, cancel
works, bad files give specific messages."""
from __future__ import annotations

import os
import re

import pytest
from servers import free_port, open_workflow_app, ptynb_serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import numpy as np

    import ptynb
    from ptynb.workflows import mspt

    data = tmp_path_factory.mktemp("data")
    s = mspt.Settings()
    s.apply_preset("ci")
    m = mspt.simulate(s.copy(n_tilts=3))["measurement"].to_dataset()
    ptynb.io.save(m.isel(angle=0, drop=True), data / "one_tilt.h5")
    bad = m.copy(deep=True)
    bad["intensity"].values[1, 0, 0, 0] = np.nan
    ptynb.io.save(bad, data / "tilts_with_nan.h5")
    port = free_port()
    env = dict(os.environ, PTYNB_DATA_DIR=str(data))
    with ptynb_serve(port, env=env):
        yield {"url": f"http://127.0.0.1:{port}", "data": data}


def _open(page, server, preset="ci"):
    return open_workflow_app(page, server["url"], "mspt", preset)


def test_index_links_mspt(server, page):
    page.goto(server["url"] + "/")
    link = page.locator("a[href$='mspt']").first
    link.wait_for(timeout=30000)


def test_mspt_runs_ci_preset_and_shows_numbers(server, page):
    errors = _open(page, server)
    page.locator(".ptynb-run button").click()
    page.locator(".ptynb-progress").first.wait_for(state="visible", timeout=20000)
    page.locator(".ptynb-message").get_by_text("run complete").wait_for(timeout=180000)
    page.get_by_text("Numbers", exact=True).click()
    page.get_by_text(re.compile("resolution across the missing wedge")).wait_for(timeout=30000)
    page.get_by_text(re.compile("Co sites found")).wait_for(timeout=10000)
    page.get_by_text("Volume", exact=True).click()
    page.locator(".ptynb-view canvas >> visible=true").first.wait_for(timeout=60000)
    assert not errors, errors


def test_mspt_cancel_stops_a_run(server, page):
    _open(page, server, preset="laptop")
    page.locator(".ptynb-run button").click()
    page.locator(".ptynb-progress").first.wait_for(state="visible", timeout=20000)
    page.locator(".ptynb-cancel button").click()
    page.locator(".ptynb-message").get_by_text("run cancelled").wait_for(timeout=120000)


def test_mspt_bad_files_give_specific_errors(server, page):
    _open(page, server)
    page.locator(".ptynb-source select").select_option(label="file from the data directory")
    err = page.locator(".ptynb-error")
    page.locator(".ptynb-file select").select_option(label="one_tilt.h5")
    page.locator(".ptynb-run button").click()
    err.get_by_text(re.compile("not a tilt series")).wait_for(timeout=30000)
    page.locator(".ptynb-file select").select_option(label="tilts_with_nan.h5")
    page.locator(".ptynb-run button").click()
    err.get_by_text(re.compile(r"NaN/inf in the patterns of tilt")).wait_for(timeout=30000)
