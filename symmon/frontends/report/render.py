"""The summary rendered as JSON, terminal text or one self-contained HTML page
(inline CSS, figures as base64 PNG).  A comparison (``{"runs": [...], "labels": [...]}``)
renders as one side-by-side table followed by each run's verdict."""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Mapping, NamedTuple

from .cli import FORMATS
from .tables import Link, Table, compare_table, tables

__all__ = ["Comparison", "FORMATS", "render_html", "render_json", "render_text", "summary_line"]


class Comparison(NamedTuple):
    """Several runs' summaries side by side, with their labels."""

    runs: list
    labels: list

    def to_json(self) -> dict:
        return {"schema": COMPARE_SCHEMA, "labels": list(self.labels),
                "runs": [r.to_json() for r in self.runs]}


COMPARE_SCHEMA = "symmon-report-compare/1"


def render_json(summary) -> str:
    """The summary (a :class:`~.summary.Summary` or :class:`Comparison`) as JSON (NaN
    written as null)."""
    return json.dumps(summary.to_json(), indent=2)


def _runs(summary) -> tuple[list, list[str]]:
    if isinstance(summary, Comparison):
        return summary.runs, summary.labels
    return [summary], [", ".join(os.path.basename(p) for p in summary.logs)]


def _all_tables(summary) -> list[Table]:
    runs, labels = _runs(summary)
    if len(runs) == 1:
        return tables(runs[0])
    return [compare_table(runs, labels)]


def summary_line(summary) -> str:
    """``caution — forces: ε 0.03 eV/Å per atom, ...`` (one run) or one per run."""
    runs, labels = _runs(summary)
    lines = [f"{r.verdict.level} — {r.verdict.headline}" for r in runs]
    if len(runs) == 1:
        return lines[0]
    return "; ".join(f"{label}: {line}" for label, line in zip(labels, lines))


# ------------------------------------------------------------------ text


def render_text(summary) -> str:
    """Terminal tables, verdict first."""
    runs, labels = _runs(summary)
    lines = [f"symmon report: {', '.join(labels)}"]
    for run, label in zip(runs, labels):
        v = run.verdict
        lines += ["", f"VERDICT{f' ({label})' if len(runs) > 1 else ''}: {v.level.upper()}"
                  f" - {v.headline}"]
        lines += [f"  {i}. {r}" for i, r in enumerate(v.reasons, 1)]
        lines += [f"  what to do: {v.action.text}"]
        if v.action.code:
            lines += [f"      {v.action.code}"]
            lines += [f"      cost: {v.action.cost}"] if v.action.cost else []
        lines += [f"    other option: {a}" for a in v.action.alternatives]
        lines += [f"  note: {n}" for n in v.notes]
    for table in _all_tables(summary):
        lines += ["", table.title, *_text_table(table.header, table.rows)]
        if table.note:
            lines += [f"  ({table.note})"]
    return "\n".join(lines) + "\n"


def _text(cell) -> str:
    return cell.text if isinstance(cell, Link) else str(cell)


def _text_table(header: list, rows: list) -> list[str]:
    rows = [[_text(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    widths[-1] = min(widths[-1], 60) if len(widths) > 2 else widths[-1]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa
    lines = [fmt(header)] if any(header) else []
    if lines:
        lines.append("  ".join("-" * w for w in widths))
    return lines + [fmt(r) for r in rows]


# ------------------------------------------------------------------ html

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1080px;padding:16px 20px;color:#222;line-height:1.4}
h1{font-size:1.35em;margin:0 0 10px;overflow-wrap:anywhere} h2{font-size:1.1em;margin:22px 0 6px}
.verdict{border-radius:8px;padding:12px 16px;margin:8px 0 16px;border:2px solid}
.verdict h2{margin:0 0 6px;font-size:1.2em}.verdict ol{margin:6px 0 0 20px;padding:0}
.verdict .action{margin-top:8px;font-weight:600}
.ok{background:#e8f6ec;border-color:#2e8b57}.caution{background:#fff5e0;border-color:#d98e04}
.problem{background:#fdecea;border-color:#c0392b}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.88em;margin:4px 0}
th,td{padding:3px 9px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap} tr:target{background:#fff3b0}
figure{margin:14px 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88em;color:#555} .small{font-size:.85em;color:#666}
pre.code{background:#fff;border:1px solid #ccc;border-radius:4px;padding:6px 10px;
margin:6px 0;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.95em}
.verdict li{margin-bottom:4px}.lv-problem{color:#c0392b}.lv-caution{color:#a86a00}
.lv-ok{color:#2e8b57}
@media (max-width:700px){body{padding:10px}.scroll table{min-width:660px}}
"""


def render_html(summary, figures: Mapping[str, object] | None = None) -> str:
    """One self-contained HTML page; ``figures`` maps names (see
    :data:`~.figures.CAPTIONS`) to Figures or PNG bytes."""
    runs, labels = _runs(summary)
    title = f"symmon report: {' vs '.join(labels) if len(runs) > 1 else labels[0]}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [_html_verdict(r.verdict, label if len(runs) > 1 else None)
              for r, label in zip(runs, labels)]
    parts += [_html_table(t) for t in _all_tables(summary)]
    parts += [_html_figure(name, fig) for name, fig in (figures or {}).items()]
    parts.append("<p class='small'>Thresholds, figures and the JSON schema are described in "
                 "symmon's docs/report.md.</p></body></html>")
    return "\n".join(parts)


def _html_verdict(v, label: str | None) -> str:
    items = "".join(_html_reason(r) for r in v.reasons)
    notes = "".join(f"<div class='small'><b>Note:</b> {html.escape(n)}</div>" for n in v.notes)
    who = f" ({html.escape(label)})" if label else ""
    action = v.action
    todo = f"<div class='action'>What to do: {html.escape(action.text)}</div>"
    if action.code:
        todo += f"<pre class='code'>{html.escape(action.code)}</pre>"
        if action.cost:
            todo += f"<div class='small'>Cost: {html.escape(action.cost)}.</div>"
    if action.alternatives:
        todo += ("<div class='small'>Other options: " + "; ".join(
            html.escape(a) for a in action.alternatives) + ".</div>")
    return (f"<div class='verdict {v.level}'><h2>Verdict{who}: {v.level.upper()} — "
            f"{html.escape(v.headline)}</h2><ol>{items}</ol>{todo}{notes}</div>")


def _html_reason(reason) -> str:
    """``level: statement`` in full, its details below in small print."""
    if not reason.level:
        return f"<li>{html.escape(reason.statement)}</li>"
    details = f"<br><span class='small'>{html.escape(reason.details)}</span>" \
        if reason.details else ""
    return (f"<li><b class='lv-{reason.level}'>{reason.level}</b>: "
            f"{html.escape(reason.statement)}{details}</li>")


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    thead = f"<thead><tr>{head}</tr></thead>" if any(table.header) else ""
    ids = table.row_ids or [None] * len(table.rows)
    columns = any(table.header)  # else a list of name: value, all aligned as text
    body = "".join((f"<tr id='{html.escape(i)}'>" if i else "<tr>")
                   + "".join(_html_cell(c, columns) for c in row) + "</tr>"
                   for i, row in zip(ids, table.rows))
    note = f"<p class='small'>{html.escape(table.note)}</p>" if table.note else ""
    return (f"<h2>{html.escape(table.title)}</h2><div class='scroll'><table>{thead}"
            f"<tbody>{body}</tbody></table></div>{note}")


def _html_cell(cell, columns: bool = True) -> str:
    """A cell; a number in a table of columns is right-aligned."""
    if isinstance(cell, Link):
        return (f"<td><a href='#{html.escape(cell.target)}'>{html.escape(cell.text)}</a>"
                "</td>")
    text = str(cell)
    if not columns:
        return f"<td>{html.escape(text)}</td>"
    try:
        float(text)
        return f"<td class='num'>{html.escape(text)}</td>"
    except ValueError:
        return f"<td>{html.escape(text)}</td>"


def _html_figure(name: str, fig) -> str:
    from .figures import CAPTIONS, figure_png

    png = fig if isinstance(fig, bytes) else figure_png(fig)
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure id='{html.escape(name)}'><img alt='{html.escape(name)}' "
            f"src=\"data:image/png;base64,{data}\"><figcaption>"
            f"{html.escape(CAPTIONS.get(name, name))}</figcaption></figure>")
