"""``symmon report RUN_DIR``: a batched run (``TorchSimMonitor``) -- one verdict per system.

A run directory (:mod:`symmon.io.run_index`) holds one ordinary symmon log per system.
Each system's log is judged exactly as ``symmon report system-XXXX.h5`` judges it
(:func:`~.summary.summarize`: the same thresholds, statistics and verdict); this module
adds the run-level view:

* how many systems are ok / caution / problem (and how many were never monitored);
* the systems worst first: by grade, then by the ratio of the graded ε (the 95th
  percentile over the system's monitored steps, per atom) to its error scale (the
  model's own error where given, else a typical MLIP error);
* one figure, ``eps_systems``: each quantity's graded ε of every system, sorted, coloured
  by the system's grade, with the error scale it is judged against.

The JSON (``--format json``) is ``{"schema": "symmon-run-report/1", "counts": ...,
"systems": [...]}``, each system with ``id``, ``formula``, ``n_atoms``, ``level``,
``headline``, ``log`` and per quantity ``eps`` (graded), ``max``, ``ratio``, ``unit``.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field

from ...core.outputs import pretty_unit
from ...monitoring.thresholds import LEVELS

SCHEMA = "symmon-run-report/1"
COLOURS = {"ok": "#2a9d4a", "caution": "#e0a100", "problem": "#c8322d"}


@dataclass
class SystemVerdict:
    """One system: its index entry, and its log's verdict (``None``: not monitored)."""

    id: int
    formula: str
    n_atoms: int
    log: str | None
    level: str | None = None
    headline: str = "never monitored"
    steps: int = 0
    ratio: float = 0.0  # the worst quantity's graded ε / its error scale
    quantities: dict = field(default_factory=dict)  # q -> {eps, max, ratio, unit, level}

    @property
    def severity(self) -> int:
        return -1 if self.level is None else LEVELS.index(self.level)

    def to_json(self) -> dict:
        return {"id": self.id, "formula": self.formula, "n_atoms": self.n_atoms,
                "log": self.log, "level": self.level, "headline": self.headline,
                "monitored_steps": self.steps, "ratio": self.ratio,
                "quantities": self.quantities}


@dataclass
class RunVerdicts:
    directory: str
    systems: list          # [SystemVerdict], worst first
    metadata: dict

    @property
    def counts(self) -> dict:
        counts = {level: 0 for level in LEVELS}
        counts["not monitored"] = 0
        for system in self.systems:
            counts[system.level or "not monitored"] += 1
        return counts

    @property
    def level(self) -> str:
        judged = [s.severity for s in self.systems if s.level is not None]
        return LEVELS[max(judged)] if judged else "ok"

    def line(self) -> str:
        counts = self.counts
        words = ", ".join(f"{n} {level}" for level, n in counts.items() if n)
        worst = self.systems[0] if self.systems else None
        tail = (f"; worst: system {worst.id} ({worst.formula}): {worst.headline}"
                if worst is not None and worst.level not in (None, "ok") else "")
        return f"{len(self.systems)} systems: {words}{tail}"

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "directory": self.directory, "level": self.level,
                "counts": self.counts, "metadata": self.metadata,
                "systems": [s.to_json() for s in self.systems]}


def judge_systems(directory, thresholds=None, model_error=None,
                  progress: bool = False) -> RunVerdicts:
    """Every system's verdict (its log summarised as ``symmon report LOG`` does)."""
    from ...io.run_index import read_index
    from .summary import summarize

    index = read_index(directory)
    systems = []
    entries = index["systems"]
    if progress:
        from tqdm import tqdm

        entries = tqdm(entries, desc="systems", unit="log", leave=False)
    for entry in entries:
        system = SystemVerdict(entry["id"], entry["formula"], entry["n_atoms"], entry["path"])
        if entry["path"] is not None:
            _judge(system, summarize(entry["path"], thresholds, model_error))
        systems.append(system)
    systems.sort(key=lambda s: (-s.severity, -s.ratio, s.id))
    return RunVerdicts(os.fspath(directory), systems, index.get("metadata", {}))


def _judge(system: SystemVerdict, summary) -> None:
    verdict = summary.verdict
    system.level, system.headline = verdict.level, verdict.headline
    system.steps = max((check.n for check in verdict.checks), default=0)
    for check in verdict.checks:
        system.quantities[check.quantity] = {
            "eps": check.eps, "max": check.max, "ratio": check.grade.ratio,
            "scale": check.grade.scale, "unit": pretty_unit(check.unit),
            "level": check.level}
    system.ratio = max((q["ratio"] for q in system.quantities.values()
                        if q["ratio"] is not None), default=0.0)


# -- output ------------------------------------------------------------------------------
def systems_figure(run: RunVerdicts):
    """``eps_systems``: per quantity, every system's graded ε (sorted), coloured by grade."""
    from ..figure_file import new_figure

    quantities = [q for q in ("energy", "forces", "stress")
                  if any(q in s.quantities for s in run.systems)]
    if not quantities:
        return None
    fig = new_figure(4.2 * len(quantities), 3.4)
    for i, quantity in enumerate(quantities):
        ax = fig.add_subplot(1, len(quantities), i + 1)
        rows = sorted((s for s in run.systems if quantity in s.quantities),
                      key=lambda s: s.quantities[quantity]["eps"])
        values = [max(s.quantities[quantity]["eps"], 1e-300) for s in rows]
        ax.scatter(range(len(rows)), values, s=14 if len(rows) > 50 else 28,
                   c=[COLOURS[s.level] for s in rows], zorder=3)
        scales = {round(s.quantities[quantity]["scale"], 12) for s in rows}
        for scale in scales:
            ax.axhline(scale, color="0.4", lw=0.8, ls="--", zorder=2)
        ax.set_yscale("log")
        ax.set_xlabel("systems, sorted by ε")
        unit = rows[0].quantities[quantity]["unit"] if rows else ""
        ax.set_ylabel(f"{quantity} ε (p95 over steps) [{unit}]")
        ax.set_title(f"{quantity}: dashed = error scale", fontsize=9)
        if len(rows) <= 16:
            ax.set_xticks(range(len(rows)), [str(s.id) for s in rows], fontsize=7)
    return fig


def render_text(run: RunVerdicts) -> str:
    lines = [f"symmon report: {run.directory}", run.line(), "",
             f"{'id':>5} {'formula':<14} {'atoms':>5} {'level':<8} {'steps':>5}  headline"]
    for s in run.systems:
        lines.append(f"{s.id:>5} {s.formula[:14]:<14} {s.n_atoms:>5} "
                     f"{s.level or '-':<8} {s.steps:>5}  {s.headline}")
    return "\n".join(lines) + "\n"


def render_html(run: RunVerdicts, figure_png: bytes | None) -> str:
    import base64

    from .render import _CSS

    title = f"symmon report: {run.directory}"
    counts = run.counts
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<div class='verdict {run.level}'><h2>Run: {run.level.upper()} — "
             f"{html.escape(run.line())}</h2><ol>"
             + "".join(f"<li>{n} systems {html.escape(level)}</li>"
                       for level, n in counts.items() if n)
             + "</ol><div class='small'>Each system is judged as <code>symmon report "
             "system-XXXX.h5</code> judges its log; run that for its full report.</div>"
             "</div>"]
    if figure_png is not None:
        data = base64.b64encode(figure_png).decode()
        parts.append("<figure><img alt='eps across systems' src='data:image/png;base64,"
                     f"{data}'><figcaption>Graded ε (95th percentile over each system's "
                     "monitored steps, per atom) of every system, sorted; colour: the "
                     "system's grade (green ok, amber caution, red problem); dashed: the "
                     "error scale ε is judged against.</figcaption></figure>")
    quantities = [q for q in ("energy", "forces", "stress")
                  if any(q in s.quantities for s in run.systems)]
    head = "".join(f"<th>{h}</th>" for h in
                   ["system", "formula", "atoms", "grade", "steps"]
                   + [f"{q} ε" for q in quantities] + ["verdict", "log"])
    rows = []
    for s in run.systems:
        cells = [str(s.id), html.escape(s.formula), str(s.n_atoms), s.level or "—",
                 str(s.steps)]
        for q in quantities:
            value = s.quantities.get(q)
            cells.append("—" if value is None else
                         f"{value['eps']:.3g} {html.escape(value['unit'])}")
        cells += [html.escape(s.headline),
                  html.escape(os.path.basename(s.log)) if s.log else "—"]
        rows.append(f"<tr class='{s.level or ''}'>" + "".join(f"<td>{c}</td>" for c in cells)
                    + "</tr>")
    parts.append(f"<h2>Systems, worst first</h2><table><thead><tr>{head}</tr></thead>"
                 f"<tbody>{''.join(rows)}</tbody></table>")
    parts.append("<p class='small'>The run directory's format: docs/log-format.md; the "
                 "TorchSim monitor: docs/torchsim.md.</p></body></html>")
    return "\n".join(parts)


def run_systems_report(directory, output=None, fmt: str = "html", png_dir=None,
                       thresholds=None, model_error=None) -> int:
    """Write the run's report (default ``RUN_DIR/report.html``; json/text: stdout)."""
    import json

    from ...io.files import jsonable, write_atomically

    run = judge_systems(directory, thresholds, model_error, progress=True)
    figure = systems_figure(run) if fmt == "html" or png_dir is not None else None
    png = None
    if figure is not None:
        from .figures import figure_png, save_pngs

        png = figure_png(figure)
        if png_dir is not None:
            save_pngs({"eps_systems": png}, png_dir)
    if fmt == "json":
        text = json.dumps(jsonable(run.to_json()), indent=1)
    elif fmt == "text":
        text = render_text(run)
    else:
        text = render_html(run, png)
        if output is None:
            output = os.path.join(directory, "report.html")
    if output is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        write_atomically(output, text)
        print(f"wrote {output}: {run.line()}")
    return 0
