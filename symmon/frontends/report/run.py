"""``run_report``: log(s) -> summary -> figures -> one written report (+ one line on
stdout saying what was written and the verdict)."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack

from ...io.run_index import is_run_directory
from .criteria import load_model_error, resolve_thresholds
from .render import FORMATS, Comparison, render_html, render_json, render_text, summary_line
from .series import read_run
from .summary import as_paths, build_summary, guarded, open_reader


def run_report(paths, output: str | None = None, fmt: str = "html",
               png_dir: str | None = None, thresholds=None, model_error=None,
               compare: bool = False) -> int:
    """Summarise log(s) ``paths`` and write the report; returns the exit code 0.

    Several ``paths`` are shards of one run, or with ``compare=True`` separate runs
    shown side by side; one batched run's directory (``TorchSimMonitor``) gives one
    verdict per system (:mod:`.systems`).  ``fmt`` is ``"html"`` (default output ``<first log stem>.html``
    next to the log), ``"json"`` or ``"text"`` (default: stdout).  ``png_dir`` also
    saves every figure as PNG.  ``thresholds``: see
    :func:`~.criteria.resolve_thresholds`; ``model_error``: the path of a ``symmon eval
    --format json`` file or ``{quantity: RMSE}``.  Raises ``ValueError``
    (``LogFormatError`` for unreadable or non-symmon logs) and ``FileNotFoundError``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if png_dir is not None and os.path.exists(png_dir) and not os.path.isdir(png_dir):
        raise ValueError(f"png_dir {os.fspath(png_dir)!r} is a file; give a directory (made "
                         "if missing) for the PNG figures")
    paths = as_paths(paths)
    if compare and len(paths) < 2:
        raise ValueError("--compare needs at least two logs (one per run)")
    overrides = resolve_thresholds(thresholds)
    if isinstance(model_error, (str, os.PathLike)):
        model_error = _model_error_file(model_error)
    if len(paths) == 1 and not compare and is_run_directory(paths[0]):  # TorchSimMonitor
        from .systems import run_systems_report

        return run_systems_report(paths[0], output, fmt, png_dir, thresholds, model_error)
    groups = [[p] for p in paths] if compare else [paths]
    labels = _labels(groups)
    need_figures = fmt == "html" or png_dir is not None
    with ExitStack() as stack:
        readers = [stack.enter_context(open_reader(g)) for g in groups]
        data = [guarded(g, lambda r=r: read_run(r, overrides))
                for g, r in zip(groups, readers)]
        summaries = [guarded(g, lambda d=d, r=r: build_summary(d, model_error, r))
                     for g, d, r in zip(groups, data, readers)]
    figures = _figures(data, summaries, labels) if need_figures else {}
    summary = summaries[0] if not compare else Comparison(summaries, labels)
    if png_dir is not None:
        from .figures import save_pngs

        save_pngs(figures, png_dir)
    text = {"html": lambda: render_html(summary, figures), "json": lambda: render_json(summary),
            "text": lambda: render_text(summary)}[fmt]()
    if output is None and fmt == "html":
        output = os.path.splitext(paths[0])[0] + ".html"
    _write_output(text, output)
    if output is not None:
        print(f"wrote {output}: {summary_line(summary)}")
    return 0


def _model_error_file(path) -> dict[str, float]:
    """:func:`~.criteria.load_model_error`, a binary file (an HDF5 log, a model) refused
    in one sentence."""
    try:
        return load_model_error(path)
    except UnicodeDecodeError:
        raise ValueError(f"--model-error {os.fspath(path)}: not a JSON file; give the model "
                         "errors that 'symmon eval MODEL STRUCTURES -o eval.json' writes"
                         ) from None


def _figures(data, summaries, labels) -> dict[str, bytes]:
    """Every figure as PNG bytes (rendered once, figures then released)."""
    from .figures import figure_png, make_figures

    figures = make_figures(data, summaries, labels=labels)
    pngs = {name: figure_png(fig) for name, fig in figures.items()}
    for fig in figures.values():
        fig.clear()
    return pngs


def _labels(groups: list[list[str]]) -> list[str]:
    """Each run's name: its file's base name, or its path where base names repeat."""
    names = [", ".join(os.path.basename(p) for p in g) for g in groups]
    if len(set(names)) < len(names):
        names = [", ".join(g) for g in groups]
    return names


def _write_output(text: str, output: str | None) -> None:
    """``text`` to ``output`` (written whole: a temporary file renamed) or stdout."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    from ...io.files import write_atomically

    write_atomically(output, text)
