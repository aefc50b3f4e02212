"""``symmon report``: a verdict, tables and figures from symmon logs.

One call, :func:`run_report`, turns one log (or several shards of one run, or several
runs side by side) into a self-contained HTML page, a JSON summary or terminal tables.
The pieces, one concept per module:

* :mod:`.series` -- :func:`read_run`: a log's per-step numbers in per-atom-normalised
  units (:class:`~.series.RunSeries`), read once;
* :mod:`.criteria` -- the graded verdict on the one thresholds table;
* :mod:`.summary` -- :func:`build_summary` (a RunSeries) and :func:`summarize` (a log)
  -> :class:`~.summary.Summary`, whose ``to_json()`` is the JSON (docs/report.md);
* :mod:`.figures` -- :func:`make_figures` (series and summary) -> ``{name: Figure}``;
* :mod:`.tables`, :mod:`.render` -- :func:`render_text`, :func:`render_html`,
  :func:`render_json`;
* :mod:`.run` -- :func:`run_report`; :mod:`.cli` -- the command's arguments.

Names are imported on first use (``symmon report --help`` imports none of them).
"""

_PUBLIC = {"run_report": "run", "summarize": "summary", "build_summary": "summary",
           "Summary": "summary", "read_run": "series", "make_figures": "figures",
           "render_text": "render", "render_html": "render", "render_json": "render",
           "resolve_thresholds": "criteria", "load_model_error": "criteria",
           "FORMATS": "render"}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'symmon.frontends.report' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
