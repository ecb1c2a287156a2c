"""Test helpers shared by the served-app and browser tests: free ports, a server subprocess that
is waited for and always stopped, and a cancel Event set from a callback."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(args, *, ready_url: str, env=None, timeout: float = 60.0, cwd=None, log=None):
    """Run ``args`` (a server) until the ``with`` block ends; wait until ``ready_url`` answers.

    Yields the ``subprocess.Popen``. Its output goes to the file ``log`` if given (kept for
    debugging), else to a pipe. Raises RuntimeError with the server's output if it exits or does
    not answer within ``timeout`` seconds. The server is terminated (killed after 10 s) on exit.
    """
    out = open(log, "w") if log is not None else subprocess.PIPE
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, text=True, cwd=cwd)

    def output():
        return open(log).read() if log is not None else (proc.stdout.read() if proc.poll() is not None else "")

    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{args[:4]} exited:\n" + output()) from None
                if time.time() > deadline:
                    raise RuntimeError(f"{args[:4]} did not answer {ready_url} in {timeout:.0f} s:\n"
                                       + (open(log).read() if log is not None else "")) from None
                time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log is not None:
            out.close()


def ptynb_serve(port: int, *, env=None, timeout: float = 60.0):
    """``ptynb serve`` on 127.0.0.1:``port`` (a context manager, see :func:`running`)."""
    return running([sys.executable, "-m", "ptynb.cli", "serve", "--port", str(port), "--address", "127.0.0.1"],
                   ready_url=f"http://127.0.0.1:{port}/", env=env, timeout=timeout)


def cancel_at(k):
    """An Event, a callback ``cb(i, info)`` that sets it at iteration/round ``k``, and the list of
    iterations the callback saw."""
    ev = threading.Event()
    seen = []

    def cb(i, info):
        seen.append(i)
        if i == k:
            ev.set()

    return ev, cb, seen


# ----------------------------------------------------------------------------- notebooks
#: the tutorial notebooks, found by name: a new ``notebooks/NN_*.ipynb`` is tested without a test edit
NOTEBOOK_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "notebooks"


def notebook_names() -> list[str]:
    """Stems of ``notebooks/*.ipynb``, sorted (``00_getting_started``, ...)."""
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))


def notebook_title(name: str) -> str:
    """The first markdown heading of notebook ``name`` (without the ``#``)."""
    import json
    import re

    for cell in json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            m = re.search(r"^#+\s*(.+)$", "".join(cell["source"]), re.M)
            if m:
                return m.group(1).strip()
    return name


def copy_notebook(name: str, dest, preset: str = "ci"):
    """Copy notebook ``name`` into the folder ``dest`` with ``PRESET = "<preset>"`` in its
    parameters cell (the one tagged ``parameters``), as papermill would; cell count and order
    are unchanged. Returns the copy's path."""
    import json
    import re
    from pathlib import Path

    nb = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"])
            cell["source"] = re.sub(r"^PRESET\s*=\s*([\"'])\w+\1", f'PRESET = "{preset}"', src, flags=re.M)
    out = Path(dest) / f"{name}.ipynb"
    out.write_text(json.dumps(nb, indent=1))
    return out


def panel_serve(names, root, port: int, *, env=None, timeout: float = 60.0, log=None):
    """``panel serve`` of the notebooks ``names`` (stems, in the folder ``root``) on
    127.0.0.1:``port``; ready when the server answers a static file (asking for an app's page
    would run its notebook)."""
    return running([sys.executable, "-m", "panel", "serve", *[f"{n}.ipynb" for n in names], "--address", "127.0.0.1",
                    "--port", str(port), "--allow-websocket-origin", f"127.0.0.1:{port}"],
                   ready_url=f"http://127.0.0.1:{port}/static/js/bokeh.min.js", env=env, timeout=timeout, cwd=root,
                   log=log)


def open_workflow_app(page, url: str, name: str, preset: str = "ci") -> list:
    """Open the served workflow app ``url + "/" + name`` in ``page``, wait for its Run button
    and choose ``preset``; returns the list that collects the page's JavaScript errors."""
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/{name}")
    page.locator(".ptynb-run button").wait_for(timeout=60000)
    page.locator(".ptynb-preset select").select_option(label=preset)
    return errors
