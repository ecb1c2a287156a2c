"""Command line: ``ptynb serve``, ``ptynb simulate``, ``ptynb info``."""
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
    i = sub.add_parser("info", help="versions, FFT library and GPU availability")
    i.set_defaults(func=_info)
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
