"""The report's tables (title, header, rows, a note below), shared by the text and HTML
renderings; they read the typed :class:`~.summary.Summary`.

Units are pretty here (``eV/Å``) and in file spelling in the JSON; cells may be
:class:`Link` (an in-page link in HTML, plain text in the terminal).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

from ...core.outputs import pretty_unit
from ...core.quantities import QUANTITY
from ...monitoring.thresholds import DOMINANT_RATIO, DOMINANT_SHARE
from .criteria import channel_words
from .numbers import fmt, fmt_fraction, percent
from .summary import NET_SIGNALS



class Link(NamedTuple):
    """A cell linking to the element with id ``target`` of the same page."""

    text: str
    target: str


@dataclass
class Table:
    title: str
    header: list
    rows: list
    row_ids: list = field(default_factory=list)
    note: str = ""


def tables(summary) -> list[Table]:
    """Every non-empty table of one run's summary, in reading order."""
    made = (checks_table(summary), run_table(summary), eps_table(summary),
            contamination_table(summary), worst_steps_table(summary),
            worst_atoms_table(summary), species_table(summary), logged_error_table(summary))
    return [t for t in made if t.rows]


def checks_table(s) -> Table:
    rows = []
    for c in s.verdict.checks:
        g, unit = c.grade, pretty_unit(c.unit)
        ratio, rel = g.limits["ratio"], g.limits["relative"]
        relative = (f"{fmt(g.relative)} (caution > {fmt(rel.caution)}, problem > "
                    f"{fmt(rel.problem)})" if g.judged else f"{fmt(g.relative)} (not judged)")
        rows.append([c.name, c.level, f"{fmt(g.eps)} {unit}",
                     f"{fmt(g.scale)} {unit} ({g.scale_source})",
                     f"{fmt(g.ratio)} (caution > {fmt(ratio.caution)}, problem > "
                     f"{fmt(ratio.problem)})",
                     f"{fmt(g.rms)} {unit}" if g.rms is not None else "–",
                     f"{fmt(g.floor)} {unit}", relative, fmt(g.share), c.explanation])
    note = ("ε, relative ε and share are each the 95th percentile over monitored steps of "
            "that step's number; |Q| is the median orbit RMS (the size of the output). "
            "relative ε = ε / max(|Q|, floor): the floor keeps a vanishing quantity (zero "
            "pressure, forces at a minimum) from turning a tiny ε into a large relative "
            f"one. share = ε / max(|Q|, typical error): at least {percent(DOMINANT_SHARE)} % "
            f"with ε above {fmt(DOMINANT_RATIO)}× the typical error is a problem however "
            "small the quantity (the breaking is the quantity).")
    return Table("What the verdict judged (95th percentiles over monitored steps)",
                 ["check", "level", "ε", "error scale", "ε / scale (limits)", "size |Q|",
                  "floor", "relative ε (limits)", "share", "what it means"], rows, note=note)


def _net_meaning(forces: str) -> str:
    if forces == "returned forces":
        return ("the returned forces; 0 for an exactly symmetric conservative model "
                "(translation invariance)")
    return ("the model's direct forces before the calculator removes their mean; a "
            "direct-force model need not sum to 0, the forces the MD used do")


def run_table(s) -> Table:
    run = s.run
    span = "–"
    if run.time_start_ps is not None:
        span = f"{fmt(run.time_start_ps, 4)} – {fmt(run.time_end_ps, 4)} ps"
    meta = run.metadata
    settings = ", ".join(f"{k}={meta[k]}" for k in ("mode", "every", "overhead", "full_every",
                                                    "random_rotations", "l_max", "seed",
                                                    "thresholds")
                         if meta.get(k) not in (None, {})) or "–"
    rows = [["logs", ", ".join(os.path.basename(p) for p in s.logs)],
            ["atoms", f"{run.n_atoms} (" + ", ".join(
                f"{n} {el}" for el, n in run.composition.items()) + ")"],
            ["steps monitored", f"{run.steps_monitored} (steps {run.first_step}"
                                f"–{run.last_step})"],
            ["full-orbit steps", str(run.full_orbit_steps)],
            ["time span", span],
            ["model", str(meta.get("model_file") or meta.get("base_calculator") or "–")],
            ["monitor", settings]]
    if s.cost is not None:
        rows.append(['cost of mode="average"', s.cost.words()])
    net = s.net
    for name, unit in NET_SIGNALS.items():
        v = getattr(net, name)
        if v is not None:
            rows.append([name.replace("_", " "), f"median {fmt(v.median)}, max {fmt(v.max)} "
                         f"{pretty_unit(unit)} over {v.n} steps ({_net_meaning(net.forces)})"])
    return Table("Run", ["", ""], rows)


def eps_table(s) -> Table:
    rows = []
    for q, e in s.eps.items():
        unit = pretty_unit(e.unit)
        rows.append([QUANTITY[q].eps_label, unit, *(fmt(getattr(e.abs, k)) for k in
                                           ("median", "p95", "max")),
                     *(fmt(getattr(e.rel, k)) for k in ("median", "p95", "max")),
                     fmt(e.rms.median), f"{fmt(e.floor)} {unit}"])
        if e.abs_gpa is not None:
            rows.append([QUANTITY[q].eps_label, "GPa", *(fmt(getattr(e.abs_gpa, k)) for k in
                                                ("median", "p95", "max")),
                         "", "", "", "", ""])
    header = ["output", "unit", "ε median", "ε p95", "ε max", "relative median",
              "relative p95", "relative max", "size |Q| (orbit RMS) median", "floor"]
    return Table("Equivariance error ε (all monitored steps)", header, rows,
                 note="relative ε = ε / max(|Q|, floor) at each step, the number the "
                      "verdict, the histogram and the JSON hold for that step.")


def contamination_table(s) -> Table:
    rows = []
    for q, c in s.contamination.items():
        if c is None:
            continue
        of = "the traceless stress" if c.traceless else ""
        top = "; ".join(f"{channel_words(t['irrep'], of)}: {fmt_fraction(t['mean_power'])}"
                        for t in c.top)
        rows.append([q, str(c.stats.n), fmt_fraction(c.stats.mean),
                     fmt_fraction(c.stats.max), fmt_fraction(c.residual_mean),
                     " + ".join(c.targets), top or "none"])
    header = ["output", "full steps", "mean", "max", "beyond l_max", "target channels",
              "largest wrong channels (mean share of power)"]
    note = ("Contamination is the share of an output's power (its mean square over all "
            "orientations) in channels an exactly equivariant model leaves empty; the "
            "relative ε compares the size of the orientation-dependent part with the "
            "output's size. Both are 0 for an exact model; they are different measures "
            "(the contamination of a small output can be large while its ε is below a "
            "typical error), and only ε is graded. (l,σ): how the part transforms, "
            "l = 0 does not rotate, l = 1 rotates like a vector; σ = −1 has the wrong "
            "sign under reflections.")
    return Table("Contamination (full-orbit steps)", header, rows, note=note)


def worst_steps_table(s) -> Table:
    rows, ids = [], []
    atoms = {a.index for a in s.worst_atoms}
    quantities = s.run.quantities
    for r in s.worst_steps:
        atom = r.worst_atom
        cell = "–"
        if atom:
            text = f"{atom['symbol']}{atom['index']} ({fmt(atom['eps'])} eV/Å)"
            cell = Link(text, f"atom-{atom['index']}") if atom["index"] in atoms else text
        rows.append([str(r.step), fmt(r.time_ps, 4), *(fmt(r.eps[q]) for q in quantities),
                     "yes" if r.full_orbit else "no", cell])
        ids.append(f"step-{r.step}")
    units = {q: pretty_unit(s.eps[q].unit) for q in quantities}
    header = ["step", "time (ps)", *(f"{QUANTITY[q].eps_label} ({units[q]})" for q in quantities),
              "full orbit", "worst atom"]
    return Table("Worst steps (the top 5 by forces ε per atom, and each worst atom's worst "
                 "step)", header, rows, ids)


def worst_atoms_table(s) -> Table:
    steps = {r.step for r in s.worst_steps}
    rows, ids = [], []
    for a in s.worst_atoms:
        step = str(a.worst_step)
        rows.append([str(a.index), a.symbol, fmt(a.median_eps), fmt(a.p95_eps),
                     fmt(a.max_eps), Link(step, f"step-{step}") if a.worst_step in steps
                     else step])
        ids.append(f"atom-{a.index}")
    title = f"Worst atoms (forces ε in eV/Å over {s.per_atom_sampled_steps} sampled steps)"
    return Table(title, ["atom", "element", "median", "p95", "max", "its worst step"],
                 rows, ids)


def species_table(s) -> Table:
    rows = [[el, str(v.n_atoms), fmt(v.stats.median), fmt(v.stats.p95), fmt(v.stats.max)]
            for el, v in s.species_eps.items()]
    return Table("Forces ε by element (eV/Å)", ["element", "atoms", "median", "p95", "max"],
                 rows)


def logged_error_table(s) -> Table:
    rows = [[q, m.observable, f"{fmt(m.error.median)} {pretty_unit(m.unit)}",
             fmt(m.eps_over_error.median), fmt(m.eps_over_error.max)]
            for q, m in s.logged_model_error.items()]
    return Table("ε against the model error logged per step",
                 ["output", "observable", "error median", "ε/error median", "ε/error max"],
                 rows)


def compare_table(summaries: list, labels: list[str]) -> Table:
    """Several runs side by side: one column per run."""
    def row(name, get):
        return [name, *(get(s) for s in summaries)]

    rows = [row("verdict", lambda s: s.verdict.level),
            row("headline", lambda s: s.verdict.headline),
            row("mode", lambda s: str(s.run.metadata.get("mode", "–"))),
            row("steps monitored", lambda s: str(s.run.steps_monitored)),
            row("full-orbit steps", lambda s: str(s.run.full_orbit_steps))]
    quantities = list(dict.fromkeys(q for s in summaries for q in s.eps))
    for q in quantities:
        unit = next(pretty_unit(s.eps[q].unit) for s in summaries if q in s.eps)
        rows.append(row(f"{QUANTITY[q].eps_label} p95 ({unit})",
                        lambda s: fmt(s.eps[q].abs.p95) if q in s.eps else "–"))
        rows.append(row(f"{q} relative ε p95", lambda s: fmt(s.eps[q].rel.p95)
                        if q in s.eps else "–"))
    return Table("Runs side by side", ["", *labels], rows)
