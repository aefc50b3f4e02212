"""The ``symmon`` command line: ``symmon demo``, ``symmon report``, ..."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(log=args.log, steps=args.steps, overwrite=args.overwrite, report=args.report,
             seed=args.seed, full_every=args.full_every)
    return 0


def _report(args) -> int:
    from .report import run_report

    return run_report(args.logs, output=args.output, fmt=args.format, png_dir=args.png_dir,
                      thresholds=args.threshold)


def _layers(args) -> int:
    from .analyze.cli import run_layers

    return run_layers(args)


def _checkpoints(args) -> int:
    from .analyze.cli import run_checkpoints

    return run_checkpoints(args)


def _purify(args) -> int:
    from .purify import run_purify

    return run_purify(args)


def _ipi(args) -> int:
    from .ipi import run_ipi

    return run_ipi(args)


def _threshold(text: str):
    name, _, value = text.partition("=")
    if not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. forces=0.05), got {text!r}")
    return name.strip(), float(value)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="symmon", description="Measure how well ML interatomic potentials respect O(3) "
        "symmetry while they run.")
    parser.add_argument("--version", action="version", version=f"symmon {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="short monitored MD with the bundled tiny PET")
    demo.add_argument("--log", default="demo.h5", help="HDF5 log to write (default demo.h5)")
    demo.add_argument("--steps", type=int, default=200, help="MD steps (default 200)")
    demo.add_argument("--full-every", type=int, default=50,
                      help="exact quadrature + spectra every n steps (default 50)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace an existing log")
    demo.add_argument("--report", default="demo.html",
                      help="HTML report to write ('' to skip; default demo.html)")
    demo.set_defaults(run=_demo)

    report = commands.add_parser("report", help="figures and a verdict from symmon logs")
    report.add_argument("logs", nargs="+", help="log file(s); several shards are merged")
    report.add_argument("-o", "--output", default=None,
                        help="output file (default: LOG.html / stdout for json and text)")
    report.add_argument("--format", choices=("html", "json", "text"), default="html")
    report.add_argument("--png-dir", default=None, help="also save the figures as PNG here")
    report.add_argument("--threshold", type=_threshold, action="append", default=None,
                        metavar="NAME=VALUE",
                        help="verdict threshold on relative eps or contamination, e.g. "
                        "forces_rel_eps=0.02 (repeatable)")
    report.set_defaults(run=_report)

    from .analyze.cli import add_checkpoints_arguments, add_layers_arguments

    layers = commands.add_parser("layers", help="character spectra of a model's internal layers")
    add_layers_arguments(layers)
    layers.set_defaults(run=_layers)
    checkpoints = commands.add_parser(
        "checkpoints", help="layer spectra, eps and RMSE across a training run's checkpoints")
    add_checkpoints_arguments(checkpoints)
    checkpoints.set_defaults(run=_checkpoints)

    from .purify import add_purify_arguments

    purify = commands.add_parser("purify", help="fit a symmetry-purified linear readout")
    add_purify_arguments(purify)
    purify.set_defaults(run=_purify)

    from .ipi import add_ipi_arguments

    ipi = commands.add_parser("ipi", help="serve an i-PI server with the monitored model")
    add_ipi_arguments(ipi)
    ipi.set_defaults(run=_ipi)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as error:
        print(f"symmon {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
