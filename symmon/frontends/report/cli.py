"""``symmon report`` arguments; the modules that read logs and draw figures (h5py,
matplotlib) are imported only when the command runs, so ``symmon report --help`` is
instant."""

from __future__ import annotations

import argparse

#: report formats (render.py reads them from here: this module must stay light)
FORMATS = ("html", "json", "text")


def _threshold(text: str):
    name, _, value = text.partition("=")
    if not value:
        raise argparse.ArgumentTypeError(f"expected QUANTITY=VALUE (e.g. forces=0.05), got "
                                         f"{text!r}")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None


def _directory(text: str) -> str:
    """``--png-dir``: a directory, or a path where one can be made (not a file)."""
    import os

    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file; give a directory (made if "
                                         "missing) for the PNG figures")
    return text


def add_report_arguments(parser) -> None:
    parser.add_argument("logs", nargs="+",
                        help="log file(s): shards of one run, or runs with --compare; or "
                        "a batched run's directory (TorchSimMonitor): one verdict per system")
    parser.add_argument("-o", "--output", default=None,
                        help="output file (default: LOG.html / stdout for json and text)")
    parser.add_argument("--format", choices=FORMATS, default="html")
    parser.add_argument("--png-dir", default=None, type=_directory, metavar="DIRECTORY",
                        help="also save the figures as PNG in this directory (made if "
                        "missing)")
    parser.add_argument("--compare", action="store_true",
                        help="the logs are separate runs: show them side by side")
    parser.add_argument("--model-error", default=None, metavar="EVAL.json",
                        help="judge ε against the model's own error (the JSON written by "
                        "'symmon eval --format json')")
    parser.add_argument("--threshold", type=_threshold, action="append", default=None,
                        metavar="QUANTITY=VALUE",
                        help="problem limit on a quantity's relative ε, e.g. forces=0.02 "
                        "(repeatable)")


def report_command(args) -> int:
    """``symmon report``."""
    from .run import run_report

    return run_report(args.logs, output=args.output, fmt=args.format, png_dir=args.png_dir,
                      thresholds=args.threshold, model_error=args.model_error,
                      compare=args.compare)
