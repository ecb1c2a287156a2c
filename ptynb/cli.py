"""Command line: ``ptynb serve``, ``ptynb run <workflow>``, ``ptynb simulate``, ``ptynb info``."""
from __future__ import annotations

import argparse
import sys


def _serve(args) -> int:
    import os

    import panel as pn

    from .apps import routes

    if args.data_dir:
        os.environ["PTYNB_DATA_DIR"] = args.data_dir
    origins = args.allow_websocket_origin or [f"{args.address}:{args.port}", f"localhost:{args.port}"]
    print(f"ptynb: serving apps at http://{args.address}:{args.port}/ (Ctrl+C to stop)", flush=True)
    pn.serve(routes(), address=args.address, port=args.port, show=args.show, title="ptynb",
             websocket_origin=origins, threaded=False)
    return 0


def _simulate(args) -> int:
    from . import io, simulate

    ds = simulate.demo(kind=args.kind, seed=args.seed, progress=not args.quiet)
    if str(args.output).lower().endswith(".cxi"):
        path = io.write_cxi(ds, args.output)
    else:
        path = io.save(ds, args.output)
    print(f"wrote {path} ({ds.sizes['scan']} patterns, {ds.sizes['qy']}x{ds.sizes['qx']} px)")
    return 0


WORKFLOWS = {"stereo": "ptynb.workflows.stereo"}


def _parse_value(text: str):
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _run(args) -> int:
    import importlib

    from . import io

    if args.workflow not in WORKFLOWS:
        print(f"ptynb run: unknown workflow {args.workflow!r}; available: {', '.join(WORKFLOWS)}",
              file=sys.stderr)
        return 2
    wf = importlib.import_module(WORKFLOWS[args.workflow])
    settings = wf.Settings()
    known = {k for k in settings.param if k != "name"}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            print(f"ptynb run: bad --set {item!r}; use NAME=VALUE with NAME one of: "
                  f"{', '.join(sorted(known))}", file=sys.stderr)
            return 2
        try:
            setattr(settings, key, _parse_value(value))
        except ValueError as exc:
            print(f"ptynb run: {key}: {exc}", file=sys.stderr)
            return 2
    measurement = None
    if args.input:
        from .apps.explorer import load_any

        measurement = load_any(args.input)
    tree = wf.run(settings, measurement, progress=not args.quiet)
    path = io.save(tree, args.output)
    status = tree.attrs.get("status")
    print(f"{args.workflow}: {status}; wrote {path}")
    for key in ("stereo_depth_limit", "measured_layer_shift_px"):
        if key in tree.attrs:
            print(f"  {key} = {tree.attrs[key]:.4g}")
    return 0 if status == "complete" else 1


def _info(_args) -> int:
    from . import __version__, backend

    print(f"ptynb {__version__}")
    print(f"CPU FFT library: {backend.fft_backend()} with {backend.cpu_workers()} threads")
    print(f"GPU (cupy + CUDA): {'available' if backend.gpu_available() else 'not available'}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptynb", description="3D ptychography workflows")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the web apps (index page at /)")
    s.add_argument("--port", type=int, default=5006, help="port (default 5006)")
    s.add_argument("--address", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; use 0.0.0.0 to expose on the network)")
    s.add_argument("--show", action="store_true", help="open a browser tab")
    s.add_argument("--data-dir", default=None,
                   help="root directory of the apps' file pickers (default $PTYNB_DATA_DIR or ~/ptynb-data)")
    s.add_argument("--allow-websocket-origin", action="append", default=None,
                   help="extra allowed websocket origin host:port (repeatable)")
    s.set_defaults(func=_serve)
    m = sub.add_parser("simulate", help="write the built-in demo measurement to a file")
    m.add_argument("output", help="output path (.h5, .nc, .zarr or .cxi)")
    m.add_argument("--kind", choices=["xray", "electron"], default="xray")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=_simulate)
    r = sub.add_parser("run", help="run a workflow (on its built-in demo or a file) and save the result tree")
    r.add_argument("workflow", help=f"one of: {', '.join(WORKFLOWS)}")
    r.add_argument("output", help="result file (.h5, .nc or .zarr)")
    r.add_argument("--input", default=None, help="measurement file (default: the workflow's simulated demo)")
    r.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a workflow setting (repeatable), e.g. --set n_beams=2 --set theta_s=1.5")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_run)
    i = sub.add_parser("info", help="versions, FFT library and GPU availability")
    i.set_defaults(func=_info)
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
