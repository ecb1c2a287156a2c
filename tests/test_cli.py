"""Command line: simulate, run a workflow, info, and clear errors for bad arguments."""
import subprocess
import sys

import pytest

import ptynb
from ptynb.cli import main


def test_simulate_writes_a_valid_measurement(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "demo.h5"), "--quiet"]) == 0
    m = ptynb.io.load(tmp_path / "demo.h5")
    ptynb.data.validate(m)
    assert m.sizes["scan"] == 100
    assert main(["simulate", str(tmp_path / "demo.cxi"), "--kind", "electron", "--quiet"]) == 0
    e = ptynb.io.read_cxi(tmp_path / "demo.cxi")
    assert e.attrs["radiation"] == "electron"


@pytest.mark.slow
def test_run_stereo_quick(tmp_path, capsys):
    out = tmp_path / "stereo.h5"
    code = main(["run", "stereo", str(out), "--quiet", "--set", "n_beams=2", "--set", "scan_grid=8",
                 "--set", "epie_iterations=10", "--set", "lsqml_iterations=5"])
    assert code == 0
    tree = ptynb.io.load(out)
    assert tree.attrs["status"] == "complete"
    assert tree.attrs["setting_n_beams"] == 2
    assert "stereo_depth_limit" in capsys.readouterr().out


def test_run_rejects_bad_arguments(tmp_path, capsys):
    assert main(["run", "nosuch", str(tmp_path / "x.h5")]) == 2
    assert "unknown workflow 'nosuch'" in capsys.readouterr().err
    assert main(["run", "stereo", str(tmp_path / "x.h5"), "--set", "bogus=1"]) == 2
    assert "bogus: unknown setting" in capsys.readouterr().err
    assert main(["run", "stereo", str(tmp_path / "x.h5"), "--set", "n_beams=7"]) == 2
    assert "n_beams" in capsys.readouterr().err


def test_info_and_help():
    out = subprocess.run([sys.executable, "-m", "ptynb.cli", "info"], capture_output=True, text=True, check=True)
    assert "CPU FFT library" in out.stdout
    out = subprocess.run([sys.executable, "-m", "ptynb.cli", "serve", "--help"], capture_output=True, text=True,
                         check=True)
    assert "127.0.0.1" in out.stdout and "--port" in out.stdout
