"""The ``symmon`` command line: ``symmon demo``, ``symmon report``, ...

Each subcommand lives in its own front-end module, which defines its arguments and
runs it; only the module of the command being run is imported (``symmon report
--help`` imports neither torch nor ASE).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings
from typing import List, Optional

#: command -> (module, function adding its arguments, function running it, one-line help)
COMMANDS = {
    "demo": ("symmon.frontends.demo", "add_demo_arguments", "demo_command",
             "short monitored MD with the bundled tiny PET"),
    "report": ("symmon.frontends.report.cli", "add_report_arguments", "report_command",
               "figures and a verdict from symmon logs"),
    "layers": ("symmon.frontends.analyze.cli", "add_layers_arguments", "run_layers",
               "character spectra of a model's internal layers"),
    "checkpoints": ("symmon.frontends.analyze.cli", "add_checkpoints_arguments",
                    "run_checkpoints",
                    "layer spectra, eps and RMSE across a training run's checkpoints"),
    "purify": ("symmon.frontends.purify", "add_purify_arguments", "run_purify",
               "fit a symmetry-purified linear readout"),
    "eval": ("symmon.frontends.eval", "add_eval_arguments", "run_eval",
             "symmetry error against the model's own error on a labelled set (Fig. 2)"),
    "ipi": ("symmon.frontends.ipi", "add_ipi_arguments", "run_ipi",
            "serve an i-PI server with the monitored model"),
    "export": ("symmon.frontends.export", "add_export_arguments", "export_command",
               "structures of the worst steps with per-atom eps (extxyz, chemiscope)"),
}


#: exceptions that mean "bad input": one sentence on stderr, exit code 2
INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError,
                IsADirectoryError, NotADirectoryError)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``symmon ipi: error: ... (see symmon ipi --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (a library's multi-line text joined)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) \
        or type(error).__name__


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to define its arguments."""
    from .. import __version__

    parser = Parser(
        prog="symmon", description="Measure how well ML interatomic potentials respect O(3) "
        "symmetry while they run.")
    parser.add_argument("--version", action="version", version=f"symmon {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, add_arguments, run, text) in COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=text)
        if name == command:
            module = importlib.import_module(module_name)
            getattr(module, add_arguments)(sub)
            sub.set_defaults(run=getattr(module, run))
    return parser


def _command(argv: List[str]) -> Optional[str]:
    return next((word for word in argv if word in COMMANDS), None)


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; bad input is one sentence on stderr and exit code 2 (argument
    errors too), another failing system call (a full disk) or an orbit that does not fit
    in memory one sentence and code 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(_command(argv)).parse_args(argv)
    except SystemExit as done:  # --help, --version, or an argument error (printed)
        return done.code if isinstance(done.code, int) else 2
    try:
        with _notes_on_one_line(f"symmon {args.command}"):
            return int(args.run(args) or 0)
    except INPUT_ERRORS as error:
        print(f"symmon {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as error:  # a full disk; a structure that does not fit
        print(f"symmon {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _notes_on_one_line(prog: str):
    """Show a log's notes (:class:`symmon.io.reader.LogNote`) as ``prog: note: ...``."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if getattr(category, "__name__", "") == "LogNote":
            print(f"{prog}: note: {one_line(message)}", file=file or sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
