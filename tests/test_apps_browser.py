"""Served apps in headless Chromium (Playwright): index, explorer, errors shown in the page."""
from __future__ import annotations

import os
import re
import time
import urllib.request

import pytest
from servers import free_port, ptynb_serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    data = tmp_path_factory.mktemp("data")
    (data / "not_a_measurement.h5").write_bytes(b"this is not HDF5")
    import ptynb
    from ptynb.workflows import stereo

    ptynb.io.save(ptynb.simulate.demo(kind="xray"), data / "single_beam.h5")
    bad = stereo.simulate(stereo.Settings(n_beams=2, scan_grid=4))
    ptynb.io.save(bad, data / "stereo_2beams.h5")
    zeros = bad.isel(beam=0, drop=True).drop_vars(["true_probe"], errors="ignore")
    zeros["intensity"] = zeros["intensity"] * 0
    ptynb.io.save(zeros, data / "all_zero.h5")
    bad.intensity.values[0, 0, 0, 0] = float("nan")
    ptynb.io.save(bad, data / "stereo_with_nan.h5")
    env = dict(os.environ, PTYNB_DATA_DIR=str(data))
    with ptynb_serve(port, env=env) as proc:
        yield {"url": f"http://127.0.0.1:{port}", "data": data, "pid": proc.pid, "port": port}


def _collect_errors(page):
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def test_serve_binds_loopback_only(server):
    """The server's listening sockets, read from the OS (not from the URL the fixture built):
    every one is on a loopback address, and the served port is among them."""
    import ipaddress

    import psutil

    listening = [c.laddr for c in psutil.Process(server["pid"]).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert any(a.port == server["port"] for a in listening), listening
    assert all(ipaddress.ip_address(a.ip).is_loopback for a in listening), listening


def test_index_lists_apps(server, page):
    errors = _collect_errors(page)
    page.goto(server["url"] + "/")
    page.get_by_text("Getting started: measurement explorer").wait_for(timeout=30000)
    link = page.locator("a", has_text="Getting started: measurement explorer")
    assert link.get_attribute("href").endswith("explorer")
    assert not errors, errors


def test_explorer_loads_demo_and_switches(server, page):
    errors = _collect_errors(page)
    page.goto(server["url"] + "/explorer")
    info = page.locator(".ptynb-info")
    info.get_by_text(re.compile(r"xray.*8\.0 keV")).wait_for(timeout=60000)
    info.get_by_text(re.compile(r"100 positions, detector 64 x 64 px")).wait_for(timeout=10000)
    page.locator(".ptynb-scan canvas").first.wait_for(timeout=60000)
    # switch to the electron demo and load it
    page.locator(".ptynb-source select").select_option(label="Electron demo (200 keV, 4D-STEM)")
    page.locator(".ptynb-load button").click()
    info.get_by_text(re.compile(r"electron.*200\.0 keV")).wait_for(timeout=60000)
    assert not errors, errors


def test_explorer_shows_clear_error_for_bad_file(server, page):
    page.goto(server["url"] + "/explorer")
    page.locator(".ptynb-info").get_by_text(re.compile("xray")).wait_for(timeout=60000)
    page.locator(".ptynb-source select").select_option(label="file from the data directory")
    page.locator(".ptynb-load button").click()  # nothing chosen yet
    err = page.locator(".ptynb-error")
    err.get_by_text(re.compile("choose a file")).wait_for(timeout=20000)
    page.locator(".ptynb-file select").select_option(label="not_a_measurement.h5")
    page.locator(".ptynb-load button").click()
    err.get_by_text(re.compile(r"FileFormatError: .*not_a_measurement\.h5")).wait_for(timeout=20000)
    # the app keeps working: the demo still loads afterwards
    page.locator(".ptynb-source select").select_option(label="X-ray demo (8 keV, zone-plate probe)")
    page.locator(".ptynb-load button").click()
    page.locator(".ptynb-info").get_by_text(re.compile("xray")).wait_for(timeout=60000)


def test_explorer_all_zero_and_multi_beam_files(server, page):
    errors = _collect_errors(page)
    page.goto(server["url"] + "/explorer")
    page.locator(".ptynb-scan canvas").first.wait_for(timeout=60000)  # the demo is drawn
    page.locator(".ptynb-source select").select_option(label="file from the data directory")
    page.locator(".ptynb-file select").select_option(label="all_zero.h5")
    page.locator(".ptynb-load button").click()
    page.locator(".ptynb-error").get_by_text(re.compile(r"every one of the 16 diffraction patterns is zero")) \
        .wait_for(timeout=30000)
    page.locator(".ptynb-info").get_by_text("Nothing loaded").wait_for(timeout=10000)
    assert page.locator(".ptynb-scan").count() == 0  # no stale plots of the demo
    assert page.locator(".ptynb-status").get_by_text(re.compile(r"^done$")).count() == 0
    page.locator(".ptynb-file select").select_option(label="stereo_2beams.h5")
    page.locator(".ptynb-load button").click()
    page.locator(".ptynb-warning").get_by_text(
        re.compile(r"this measurement has 2 beams \(left, right\); only beam left is shown here")) \
        .wait_for(timeout=30000)
    page.locator(".ptynb-scan canvas").first.wait_for(timeout=60000)
    assert not errors, errors


# ----------------------------------------------------------------------------- stereo app
def _stereo(page, server, preset="quick look (seconds)"):
    errors = _collect_errors(page)
    page.goto(server["url"] + "/stereo")
    page.locator(".ptynb-run button").wait_for(timeout=60000)
    page.locator(".ptynb-preset select").select_option(label=preset)
    return errors


def test_stereo_run_progress_and_anaglyph_slider(server, page):
    errors = _stereo(page, server)
    page.locator(".ptynb-run button").click()
    page.locator(".ptynb-progress").first.wait_for(state="visible", timeout=20000)
    page.locator(".ptynb-message").get_by_text("run complete").wait_for(timeout=120000)
    page.get_by_text("Views and anaglyph").click()
    caption = page.locator(".ptynb-anaglyph-caption")
    caption.get_by_text(re.compile(r"extra shift \+0\.0 px; difference rms (\d\.\d+)")).wait_for(timeout=30000)
    before = page.get_by_text(re.compile("difference rms")).inner_text()
    handle = page.locator(".ptynb-shift .noUi-handle").first
    handle.focus()
    for _ in range(5):
        handle.press("ArrowRight")
    page.get_by_text(re.compile(r"extra shift \+0\.5 px; difference rms")).wait_for(timeout=30000)
    after = page.get_by_text(re.compile("difference rms")).inner_text()
    assert after != before
    page.get_by_text("Depth numbers").click()
    page.get_by_text(re.compile("stereo depth limit")).wait_for(timeout=10000)
    assert not errors, errors


def test_stereo_cancel_stops_a_run(server, page):
    _stereo(page, server, preset="standard (about a minute)")
    page.locator(".ptynb-run button").click()
    page.locator(".ptynb-progress").first.wait_for(state="visible", timeout=20000)
    page.locator(".ptynb-cancel button").click()
    page.locator(".ptynb-message").get_by_text("run cancelled").wait_for(timeout=120000)


def test_stereo_bad_files_give_specific_errors(server, page):
    _stereo(page, server)
    page.locator(".ptynb-source select").select_option(label="file from the data directory")
    err = page.locator(".ptynb-error")
    page.locator(".ptynb-file select").select_option(label="single_beam.h5")
    page.locator(".ptynb-run button").click()
    err.get_by_text(re.compile("no beam axis")).wait_for(timeout=30000)
    page.locator(".ptynb-file select").select_option(label="stereo_with_nan.h5")
    page.locator(".ptynb-run button").click()
    err.get_by_text(re.compile(r"intensity: contains 1 NaN")).wait_for(timeout=30000)
    # the app keeps working: the demo still runs
    page.locator(".ptynb-source select").select_option(label="simulated demo")
    page.locator(".ptynb-run button").click()
    page.locator(".ptynb-message").get_by_text("run complete").wait_for(timeout=120000)


# ----------------------------------------------------------------------------- settings typed in the page
def test_stereo_typed_setting_out_of_bounds_shows_the_bound(server, page):
    errors = _stereo(page, server)
    box = page.locator(".ptynb-setting-theta_s input")
    box.fill("20")
    box.press("Enter")
    alert = page.locator(".ptynb-setting-error")
    alert.get_by_text(re.compile(r"20 deg is not allowed; it must be in \[0\.1, 10\] deg\. Kept 1\.5 deg")) \
        .wait_for(timeout=20000)
    assert box.input_value() == "1.5"  # the page shows the value actually used
    px = page.locator(".ptynb-setting-pixel_size input")
    assert px.input_value() == "8.1"  # shown in nm: label "Pixel size (nm)"
    page.get_by_text("Pixel size (nm)").first.wait_for(state="attached", timeout=5000)  # collapsed card
    box.fill("2.5")
    box.press("Enter")
    alert.wait_for(state="hidden", timeout=20000)
    assert not errors, errors


def test_stereo_progress_bar_never_goes_backwards(server, page):
    _stereo(page, server)
    page.locator(".ptynb-run button").click()
    bar = page.locator(".ptynb-progress progress").first
    bar.wait_for(state="attached", timeout=20000)
    values = []
    done = page.locator(".ptynb-message").get_by_text("run complete")
    deadline = time.time() + 120
    while time.time() < deadline and not done.count():
        try:
            v = bar.get_attribute("value", timeout=1000)
        except Exception:  # noqa: BLE001 - the bar is hidden (removed) at the end
            v = None
        if v is not None:
            values.append(float(v))
        time.sleep(0.1)
    assert done.count()
    assert values and values == sorted(values) and max(values) <= 1000, values


# ----------------------------------------------------------------------------- under load
N_SESSIONS = 10


@pytest.mark.timeout(300)
def test_ten_concurrent_sessions_run_the_quick_preset(server, browser):
    """10 browser sessions (contexts) of /stereo run the quick preset at once, each with its own
    seed; every one completes, saves its own result (with its own seed), and the server still
    answers afterwards."""
    t0 = time.time()
    pages = []
    contexts = []
    for k in range(N_SESSIONS):
        ctx = browser.new_context()
        contexts.append(ctx)
        pg = ctx.new_page()
        pg.set_default_timeout(180000)
        pg.goto(server["url"] + "/stereo")
        pages.append(pg)
    for k, pg in enumerate(pages):
        pg.locator(".ptynb-run button").wait_for()
        pg.locator(".ptynb-preset select").select_option(label="quick look (seconds)")
        seed = pg.locator(".ptynb-setting-seed input")
        seed.fill(str(100 + k))
        seed.press("Enter")
    for pg in pages:  # start them all before waiting for any
        pg.locator(".ptynb-run button").click()
    t_started = time.time()
    for pg in pages:
        pg.locator(".ptynb-message").get_by_text("run complete").wait_for(timeout=240000)
    t_done = time.time()
    saved = []
    for pg in pages:
        pg.locator(".ptynb-save button").click()
        msg = pg.locator(".ptynb-message").get_by_text(re.compile(r"saved to"))
        msg.wait_for(timeout=60000)
        saved.append(re.search(r"saved to\s*(\S+\.h5)", msg.inner_text()).group(1).strip("`"))
    import ptynb

    assert len(set(saved)) == N_SESSIONS, saved  # no save overwrote another
    seeds = sorted(int(ptynb.io.load(p).attrs["setting_seed"]) for p in saved)
    assert seeds == list(range(100, 100 + N_SESSIONS))  # each session ran its own settings
    for ctx in contexts:
        ctx.close()
    # the server still answers
    with urllib.request.urlopen(server["url"] + "/", timeout=30) as r:
        assert r.status == 200
    print(f"\n{N_SESSIONS} sessions: pages ready + settings {t_started - t0:.1f} s, "
          f"runs {t_done - t_started:.1f} s, total {time.time() - t0:.1f} s")
