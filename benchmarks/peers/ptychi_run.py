"""Run a pty-chi (``ptychi`` 2.2) LSQ-ML reconstruction on a benchmark input; use the torch venv.

Usage::

    python ptychi_run.py IN.npz OUT.npz --iterations 30 [--threads 2] [--batch 100]

IN/OUT formats: see ``_common.py``; OUT also gets the final ``probe`` (M, n, n) in ptynb's
scale (times n). pty-chi's conventions, converted here: positions in
pixels relative to an origin (``position_origin_coords``, SPECIFIED) chosen so that its object
buffer is the benchmark's truth grid (a patch of n pixels centred on pty-chi position ``p``
starts at ``p + origin - (n - 1) / 2``, ptynb's at ``pos_px - n // 2``); diffraction data as
measured (DC centred, ``fft_shift=True`` shifts it for its corner-DC forward model); the probe
divided by n for its unnormalised FFT. Noise model Gaussian (pty-chi's default), CPU, float32,
probe updated from the first epoch, positions fixed, object initialised to ones.
"""
import argparse
import os
import sys
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Recorder, save_result, set_threads, snapshot_iterations


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=100, help="LSQ-ML batch size (pty-chi default)")
    ap.add_argument("--noise", default="gaussian", choices=["gaussian", "poisson"])
    a = ap.parse_args()
    set_threads(a.threads)

    import numpy as np
    import ptychi
    import torch
    from ptychi import api
    from ptychi.api.task import PtychographyTask

    if a.threads:
        torch.set_num_threads(a.threads)
    d = np.load(a.data)
    inten = np.asarray(d["intensity"], np.float32)
    n = inten.shape[-1]
    pos = np.asarray(d["pos_px"], np.float64)
    H, W = (int(v) for v in d["object_shape"])
    S = int(d["n_slices"])
    c = pos.mean(0)
    origin = c - n // 2 + (n - 1) / 2.0

    o = api.LSQMLOptions()
    o.data_options.wavelength_m = float(d["wavelength_m"])
    o.data_options.fft_shift = True
    o.object_options.pixel_size_m = float(d["pixel_size_m"])
    if S > 1:
        o.object_options.slice_spacings_m = np.full(S - 1, float(d["slice_thickness_m"]))
    o.object_options.optimizable = True
    o.object_options.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    o.object_options.position_origin_coords = origin
    o.probe_options.optimizable = True
    o.probe_position_options.optimizable = False
    o.reconstructor_options.num_epochs = a.iterations
    o.reconstructor_options.batch_size = min(a.batch, len(pos))
    o.reconstructor_options.default_device = api.Devices.CPU
    o.reconstructor_options.noise_model = (api.NoiseModels.POISSON if a.noise == "poisson"
                                           else api.NoiseModels.GAUSSIAN)
    o.reconstructor_options.random_seed = 0
    o.reconstructor_options.displayed_loss_function = None

    probe = np.asarray(d["probe"], np.complex64)[None] / n  # (opr, modes, n, n)
    obj = np.ones((S, H, W), np.complex64)
    task = PtychographyTask(o, diffraction_data=inten, object_data=obj, probe_data=probe,
                            probe_position_x_px=pos[:, 1] - c[1],
                            probe_position_y_px=pos[:, 0] - c[0])
    setup = time.perf_counter() - T_START
    rec = Recorder(a.iterations, snapshot_iterations(a.iterations))
    rec.start()
    for _ in range(a.iterations):
        task.run(1)
        rec.tick(lambda: task.get_data_to_cpu("object", as_numpy=True))
    probe_out = task.get_data_to_cpu("probe", as_numpy=True)[0] * n  # back to ptynb's scale
    save_result(a.out, rec, setup_time=setup, offset=(0, 0),
                version=getattr(ptychi, "__version__", "2.2"),
                note=f"LSQ-ML {a.noise}, batch {o.reconstructor_options.batch_size}",
                probe=probe_out.astype(np.complex64))
    print(f"pty-chi LSQ-ML: {a.iterations} iterations in {rec.elapsed:.2f} s (setup {setup:.1f} s)")


if __name__ == "__main__":
    main()
