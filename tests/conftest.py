"""Shared pytest configuration: GPU skipping, browser location, deterministic environment."""
from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# tests neither read nor write the user's FFTW wisdom file (hermetic; the wisdom test sets its own)
os.environ.setdefault("PTYNB_FFTW_WISDOM", "off")


#: modules whose tests are independent runs of one notebook each: spread over the xdist workers
#: one test at a time (each worker starts its own server); every other module runs whole on one
#: worker, so its module-scoped fixtures (a full workflow run, a server) are built once
_SPREAD = {"test_jupyterlab_browser.py", "test_notebook_apps_browser.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Skip GPU tests without a GPU; group tests for ``pytest -n N --dist loadgroup``.

    scripts/test.sh runs the suite on all cores with pytest-xdist. nbval runs a notebook's cells
    in order in one kernel, so each notebook (and each test module, see ``_SPREAD``) is one
    ``xdist_group``; browser and slow tests are scheduled first so that the long ones do not
    start last. tryfirst: the marks must exist before xdist reads them. Without ``-n`` the
    groups do nothing.
    """
    from ptynb.backend import gpu_available

    for item in items:  # notebooks/conftest.py groups the notebooks' cells
        path = getattr(item, "path", None)
        if path is not None and path.suffix == ".py" and path.name not in _SPREAD:
            item.add_marker(pytest.mark.xdist_group(path.name))
    rank: dict = {}
    for it in items:  # a module's rank: its "longest" kind of test; modules stay whole, in order
        r = 0 if "browser" in it.keywords else 1 if ("slow" in it.keywords or it.path.suffix == ".ipynb") else 2
        rank[it.path] = min(r, rank.get(it.path, 2))
    items.sort(key=lambda it: rank[it.path])  # stable sort: the order inside a module is kept

    if not gpu_available():
        skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU with cupy (none here)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


def chromium_path() -> str | None:
    """Path of a system Chromium (Debian's package), or None."""
    for cand in (os.environ.get("PTYNB_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                 shutil.which("chromium") or ""):
        if cand and os.path.exists(cand):
            return cand
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright: use Debian's Chromium (playwright cannot download browsers here)."""
    path = chromium_path()
    if path is None:
        pytest.skip("no system Chromium found (install Debian's 'chromium' package)")
    return {
        **browser_type_launch_args,
        "executable_path": path,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    }
