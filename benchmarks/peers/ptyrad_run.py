"""Run a PtyRAD (1.0) reconstruction (automatic differentiation, Adam) on a benchmark input.

Use the torch venv's python::

    python ptyrad_run.py IN.npz OUT.npz --iterations 30 [--threads 2] [--lr-scale 1] [--batch 32]

IN/OUT formats: see ``_common.py``. PtyRAD is fed through its ``custom`` sources (arrays):
the patterns (detector centred, as its forward model ``fftshift(|fft2(psi, ortho)|^2)``
expects), the initial probe, and positions as the top-left corners of the probe windows in
object pixels (``pos_px - n // 2``), so its object grid is the benchmark's truth grid (PtyRAD
pads the canvas to 1.2 x the scanned extent; pixel (0, 0) is shared). Its random position
jitter (``pos_scan_rand_std``, default 0.15 px) is switched off, and so are saving and figures.

PtyRAD 1.0's X-ray mode fails at initialisation, so both cases run in its electron mode with
the pixel size given (``meas_calibration`` mode ``dx``); for one slice this is the same
far-field model (the wavelength only enters the propagation between slices, and the
accelerating voltage is derived from the wavelength for electrons). Learning rates: PtyRAD's
defaults (Adam: object amplitude and phase 5e-4, probe 1e-4, position shifts 5e-4) times
``--lr-scale``; default loss ``loss_single`` (amplitude NRMSE) and constraints.
"""
import argparse
import os
import sys
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Recorder, save_result, set_threads, snapshot_iterations


def electron_kv(wavelength_m: float) -> float:
    """Accelerating voltage (kV) of electrons of relativistic wavelength ``wavelength_m``."""
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    p = h / wavelength_m
    # p^2 = 2 m0 e V (1 + e V / (2 m0 c^2)) -> solve e V
    mc2 = m0 * c * c
    ev = -mc2 + (mc2 * mc2 + (p * c) ** 2) ** 0.5
    return ev / e / 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32, help="mini-batch size (PtyRAD default 32)")
    ap.add_argument("--lr-scale", type=float, default=1.0,
                    help="multiply PtyRAD's default learning rates")
    a = ap.parse_args()
    set_threads(a.threads)

    import numpy as np
    import ptyrad
    import ptyrad.solver.reconstruction as recon_mod
    import torch
    from ptyrad.params import PtyRADParams
    from ptyrad.solver import PtyRADSolver

    if a.threads:
        torch.set_num_threads(a.threads)
    d = np.load(a.data)
    inten = np.asarray(d["intensity"], np.float32)
    N, n, _ = inten.shape
    pos = np.asarray(d["pos_px"], np.float64) - n // 2
    S = int(d["n_slices"])
    dx_A = float(d["pixel_size_m"]) * 1e10
    dz_A = float(d["slice_thickness_m"]) * 1e10 if S > 1 else 1.0
    probe = np.asarray(d["probe"], np.complex64)
    gy, gx = (int(v) for v in d["grid"])
    if gy * gx != N:
        gy, gx = 1, N
    kv = electron_kv(float(d["wavelength_m"]))
    semi = float(d["semiangle_rad"])
    lr = {"obja": 5e-4, "objp": 5e-4, "probe": 1e-4, "probe_pos_shifts": 5e-4}
    params = {
        "init_params": {
            "random_seed": 0,
            "probe_illum_type": "electron",
            "probe_kv": kv,
            "probe_conv_angle": semi * 1e3 if np.isfinite(semi) else 20.0,  # unused: probe given
            "meas_Npix": n,
            "pos_N_scans": N,
            "pos_N_scan_slow": gy,
            "pos_N_scan_fast": gx,
            "pos_scan_step_size": dx_A,  # unused: positions given
            "meas_calibration": {"mode": "dx", "value": dx_A},
            "probe_pmode_max": probe.shape[0],
            "obj_Nlayer": S,
            "obj_slice_thickness": dz_A,
            "meas_flipT": None,
            "pos_scan_rand_std": None,
            "meas_source": "custom",
            "meas_params": inten,
            "probe_source": "custom",
            "probe_params": probe,
            "pos_source": "custom",
            "pos_params": pos,
        },
        "model_params": {
            "update_params": {k: {"start_iter": 1, "lr": v * a.lr_scale} for k, v in lr.items()},
        },
        "recon_params": {
            "NITER": a.iterations,
            "BATCH_SIZE": {"size": a.batch, "grad_accumulation": 1},
            "SAVE_ITERS": None,
            "copy_params": False,
            "compiler_configs": {"enable": False},
        },
    }
    params = PtyRADParams(**params).model_dump()
    params["params_path"] = None
    solver = PtyRADSolver(params, device=torch.device("cpu"), seed=0)

    rec = Recorder(a.iterations, snapshot_iterations(a.iterations))
    orig_step = recon_mod.recon_step

    def current_object(model):
        m = model.module if hasattr(model, "module") else model
        with torch.no_grad():
            o = (m.opt_obja * torch.exp(1j * m.opt_objp))[0]  # (Nz, Ny, Nx), object mode 0
        return o.detach().cpu().numpy()

    t_run = {}

    def step(batches, grad_accumulation, model, *args, **kw):
        if rec._t0 is None:  # model, optimizer and batches were built since solver.run()
            t_run["pre"] = time.perf_counter() - t_run["t"]
            rec.start()
        out = orig_step(batches, grad_accumulation, model, *args, **kw)
        rec.tick(lambda: current_object(model))
        return out

    recon_mod.recon_step = step
    setup = time.perf_counter() - T_START
    t_run["t"] = time.perf_counter()
    solver.run()
    setup += t_run["pre"]
    save_result(a.out, rec, setup_time=setup, offset=(0, 0), version=ptyrad.__version__,
                note=f"Adam lr x{a.lr_scale:g}, batch {a.batch}, electron mode")
    print(f"PtyRAD: {a.iterations} iterations in {rec.elapsed:.2f} s (setup {setup:.1f} s)")


if __name__ == "__main__":
    main()
