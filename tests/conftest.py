"""Shared pytest configuration: GPU skipping, browser location, deterministic environment."""
from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# tests neither read nor write the user's FFTW wisdom file (hermetic; the wisdom test sets its own)
os.environ.setdefault("PTYNB_FFTW_WISDOM", "off")


def pytest_collection_modifyitems(config, items):
    from ptynb.backend import gpu_available

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
