"""Command line: ``ptynb serve``, ``ptynb run <workflow>``, ``ptynb workflows``, ``ptynb simulate``,
``ptynb info``.

Every workflow of the registry (:mod:`ptynb.workflows`) runs with ``ptynb run <name> OUTPUT``;
``ptynb run <name> --help`` lists its settings with types, defaults and bounds. Errors are one
line on stderr and exit code 2 (``--debug`` shows the traceback); a run stopped with Ctrl+C
saves its partial result and exits with 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: result formats ``ptynb run`` writes (checked before the workflow starts)
RESULT_SUFFIXES = (".h5", ".nc", ".zarr")


class UsageError(Exception):
    """A bad command-line argument (printed as one line, exit code 2)."""


def _serve(args) -> int:
    import os
    import socket

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    with socket.socket() as probe:
        try:
            probe.bind((args.address, args.port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.address}:{args.port}: {exc.strerror or exc} "
                             "(is another server running there? choose another --port)") from None
    import panel as pn

    from .apps import routes, use_server_resources

    use_server_resources()  # every JS/CSS file from this server (installed packages), no CDN

    if args.data_dir:
        os.environ["PTYNB_DATA_DIR"] = args.data_dir
    origins = list(args.allow_websocket_origin or [])
    origins += [f"{args.address}:{args.port}", f"localhost:{args.port}", f"127.0.0.1:{args.port}"]
    if args.address in ("0.0.0.0", "::"):  # reachable under this machine's names and addresses
        host = socket.gethostname()
        names = {host, socket.getfqdn()}
        try:
            names.update(socket.gethostbyname_ex(host)[2])
        except OSError:
            pass
        origins += [f"{n}:{args.port}" for n in sorted(names) if n]
    print(f"ptynb: serving apps at http://{args.address}:{args.port}/ (Ctrl+C to stop)", flush=True)
    pn.serve(routes(), address=args.address, port=args.port, show=args.show, title="ptynb",
             websocket_origin=sorted(set(origins)), threaded=False)
    return 0


def _simulate(args) -> int:
    from . import io, simulate

    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    suffix = Path(args.output).suffix.lower()
    if suffix not in RESULT_SUFFIXES + (".cxi",):
        raise UsageError(f"output {args.output!r}: use one of {', '.join(RESULT_SUFFIXES + ('.cxi',))}")
    ds = simulate.demo(kind=args.kind, seed=args.seed, progress=not args.quiet)
    path = io.write_cxi(ds, args.output) if suffix == ".cxi" else io.save(ds, args.output)
    print(f"wrote {path} ({ds.sizes['scan']} patterns, {ds.sizes['qy']}x{ds.sizes['qx']} px)")
    return 0


def _workflow(name: str):
    from .workflows import UnknownWorkflowError, get

    try:
        return get(name)
    except UnknownWorkflowError as exc:
        raise UsageError(str(exc)) from None


def _settings_help(wf) -> str:
    s = wf.settings
    lines = [f"ptynb run {wf.name}: {wf.title}", "", wf.description, "",
             f"usage: ptynb run {wf.name} OUTPUT [--input FILE] [--preset NAME] [--from RESULT] "
             "[--set NAME=VALUE ...] [--quiet] [--debug]", "",
             f"OUTPUT: {', '.join(RESULT_SUFFIXES)}"]
    if s.presets:
        lines += ["", "presets (--preset):"] + [f"  {name!r}: {changes or 'the defaults'}"
                                                for name, changes in s.presets.items()]
    group = None
    for title, name, kind, doc in s.describe():
        if title != group:
            lines += ["", f"{title}:"]
            group = title
        lines.append(f"  {name} ({kind})")
        if doc:
            lines.append(f"      {doc}")
    return "\n".join(lines)


def _check_output(path: str) -> Path:
    p = Path(path)
    if p.suffix.lower() not in RESULT_SUFFIXES:
        raise UsageError(f"output {path!r}: the result is a tree; use a {', '.join(RESULT_SUFFIXES)} file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output {path!r}: folder {str(parent)!r} does not exist")
    import os

    if not os.access(parent, os.W_OK):
        raise UsageError(f"output {path!r}: folder {str(parent)!r} is not writable")
    return p


def _run(args) -> int:
    from . import io

    wf = _workflow(args.workflow)
    if args.help:
        print(_settings_help(wf))
        return 0
    if not args.output:
        raise UsageError(f"ptynb run {wf.name}: give the OUTPUT file ({', '.join(RESULT_SUFFIXES)}); "
                         f"see ptynb run {wf.name} --help")
    out = _check_output(args.output)
    if args.from_result:
        prev = io.load(args.from_result)
        settings = wf.settings.from_attrs(prev.attrs)
    else:
        settings = wf.settings()
    if args.preset:
        settings.apply_preset(args.preset)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"bad --set {item!r}; use NAME=VALUE (see ptynb run {wf.name} --help)")
        settings.set_text(key.strip(), value.strip())
    measurement = io.load_any(args.input) if args.input else None
    if measurement is not None and wf.check_measurement is not None:
        wf.check_measurement(measurement)
    tree = wf.run(settings, measurement, progress=not args.quiet)
    path = io.save(tree, out)
    status = tree.attrs.get("status")
    print(f"{wf.name}: {status}; wrote {path}")
    for key, label, scale, unit in wf.summary_keys:
        if key in tree.attrs:
            print(f"  {label} ({key}) = {float(tree.attrs[key]) * scale:.4g} {unit}")
    return 0 if status == "complete" else 1


def _train(args) -> int:
    """``ptynb train apt``: train a network from simulated data and write its weights file."""
    if args.model != "apt":  # pragma: no cover - argparse restricts the choices
        raise UsageError(f"unknown model {args.model!r}")
    from .workflows.apt import TrainSettings, train_model
    from .workflows.apt_steps import PTYCHO_WEIGHTS, SHIPPED_WEIGHTS

    settings = TrainSettings()
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"bad --set {item!r}; use NAME=VALUE (fields of ptynb.workflows.apt.TrainSettings)")
        key, value = key.strip(), value.strip()
        if key not in settings.fields():
            raise UsageError(f"unknown training setting {key!r}; known: {', '.join(settings.fields())}")
        import json

        try:
            v = json.loads(value)
        except ValueError:
            v = value
        setattr(settings, key, tuple(v) if isinstance(v, list) else v)
    default = PTYCHO_WEIGHTS if settings.approximant == "ptychography" else SHIPPED_WEIGHTS
    out = Path(args.out) if args.out else default
    if not out.parent.is_dir():
        raise UsageError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist")
    command = " ".join(["ptynb train", args.model, *(f"--set {item}" for item in args.set or []),
                        *([f"--out {args.out}"] if args.out else [])])
    r = train_model(settings, out=out, checkpoint=args.checkpoint, progress=not args.quiet, command=command)
    m = r["meta"]
    print(f"train {args.model}: {m['status']}; wrote {r['path']} ({out.stat().st_size / 1e6:.2f} MB)")
    print(f"  loss (NPCC) first 10 iterations {m['loss_first10']:.4f}, last 10 {m['loss_last10']:.4f}; "
          f"validation NPCC {m['val_npcc']:.4f} (Approximant {m['val_npcc_approximant']:.4f})")
    print(f"  data {m['seconds_data']:.0f} s, training {m['seconds_train']:.0f} s "
          f"({m['seconds_per_epoch']:.0f} s per epoch of {m['patches']} patches)")
    return 0 if m["status"] == "complete" else 1


def _workflows(_args) -> int:
    from .workflows import get, names

    for n in names():
        wf = get(n)
        print(f"{n:12s} {wf.title}")
    return 0


def _info(_args) -> int:
    from . import __version__, backend

    print(f"ptynb {__version__}")
    print(f"CPU FFT library: {backend.fft_backend()} with {backend.cpu_workers()} threads")
    print(f"GPU (cupy + CUDA): {'available' if backend.gpu_available() else 'not available'}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="ptynb", description="3D ptychography workflows")
    p.add_argument("--version", action="version", version=f"ptynb {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the web apps (index page at /)")
    s.add_argument("--port", type=int, default=5006, help="port (default 5006)")
    s.add_argument("--address", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the apps on your network "
                        "and allows this machine's host names as websocket origins)")
    s.add_argument("--show", action="store_true", help="open a browser tab")
    s.add_argument("--data-dir", default=None,
                   help="root directory of the apps' file pickers (default $PTYNB_DATA_DIR or ~/ptynb-data)")
    s.add_argument("--allow-websocket-origin", action="append", default=None,
                   help="extra allowed websocket origin host:port (repeatable), e.g. a proxy's name")
    s.set_defaults(func=_serve)
    m = sub.add_parser("simulate", help="write the built-in demo measurement to a file")
    m.add_argument("output", help="output path (.h5, .nc, .zarr or .cxi)")
    m.add_argument("--kind", choices=["xray", "electron"], default="xray")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=_simulate)
    r = sub.add_parser("run", add_help=False,
                       help="run a workflow (on its simulated demo or a file) and save the result tree")
    r.add_argument("workflow", help="a registered workflow (see `ptynb workflows`)")
    r.add_argument("output", nargs="?", help=f"result file ({', '.join(RESULT_SUFFIXES)})")
    r.add_argument("-h", "--help", action="store_true", help="the workflow's settings")
    r.add_argument("--input", default=None, help="measurement file (default: the workflow's simulated demo)")
    r.add_argument("--preset", default=None, help="a named preset of the workflow's settings")
    r.add_argument("--from", dest="from_result", default=None, metavar="RESULT",
                   help="start from the settings stored in an earlier result file")
    r.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a workflow setting (repeatable), e.g. --set n_beams=2 --set theta_s=1.5")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    r.set_defaults(func=_run)
    t = sub.add_parser("train", help="train a network from simulated data (ptynb train apt --out apt.pt)")
    t.add_argument("model", choices=["apt"], help="which network (apt: the APT 3D U-Net)")
    t.add_argument("--out", default=None, help=(
        "weights file (default: the shipped ptynb/learn/weights/apt_small.pt, or apt_ptycho_small.pt "
        "with --set approximant=ptychography)"))
    t.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a training setting (repeatable), e.g. --set iterations=200 --set width=0.25")
    t.add_argument("--checkpoint", default=None, help="checkpoint file (resumed when it exists)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    t.set_defaults(func=_train)
    w = sub.add_parser("workflows", help="list the registered workflows")
    w.set_defaults(func=_workflows)
    i = sub.add_parser("info", help="versions, FFT library and GPU availability")
    i.set_defaults(func=_info)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    if not (getattr(args, "debug", False) or "--debug" in argv):
        import warnings

        # warnings about the user's data or settings: one line each, like errors
        warnings.showwarning = (lambda message, category, *a, **k:
                                print(f"ptynb {args.command}: warning: {message}", file=sys.stderr))
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"ptynb {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line for users, the traceback with --debug
        if getattr(args, "debug", False) or "--debug" in argv:
            raise
        from .data import ValidationError

        kind = "" if isinstance(exc, ValidationError) else f"{type(exc).__name__}: "
        print(f"ptynb {args.command}: {kind}{exc} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
