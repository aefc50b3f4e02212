"""The report's tables (title, header, rows), shared by the text and HTML renderings.

Units are pretty here (``eV/Å``) and in file spelling in the JSON; cells may be
:class:`Link` (an in-page link in HTML, plain text in the terminal).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

from ...core.outputs import pretty_unit
from .numbers import fmt, fmt_fraction

EPS_NAMES = {"energy": "energy ε per atom", "forces": "forces ε per atom",
             "stress": "stress ε"}


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


def tables(summary: dict) -> list[Table]:
    """Every non-empty table of one run's summary, in reading order."""
    made = (checks_table(summary), run_table(summary), eps_table(summary),
            contamination_table(summary), worst_steps_table(summary),
            worst_atoms_table(summary), species_table(summary), logged_error_table(summary))
    return [t for t in made if t.rows]


def checks_table(s) -> Table:
    rows = [[c["name"], c["level"], f"{fmt(c['eps'])} {pretty_unit(c['unit'])}",
             f"{fmt(c['scale'])} {pretty_unit(c['unit'])} ({c['scale_source']})", fmt(c["ratio"]),
             fmt(c["relative"]), c["explanation"]] for c in s["verdict"]["checks"]]
    return Table("What the verdict judged (95th percentile over monitored steps)",
                 ["check", "level", "ε", "error scale", "ε / scale", "relative ε",
                  "what it means"], rows)


def run_table(s) -> Table:
    run = s["run"]
    span = "–"
    if run["time_start_ps"] is not None:
        span = f"{fmt(run['time_start_ps'], 4)} – {fmt(run['time_end_ps'], 4)} ps"
    meta = run["metadata"]
    settings = ", ".join(f"{k}={meta[k]}" for k in ("mode", "every", "overhead", "full_every",
                                                    "random_rotations", "l_max", "seed")
                         if meta.get(k) is not None) or "–"
    rows = [["logs", ", ".join(os.path.basename(p) for p in s["logs"])],
            ["atoms", f"{run['n_atoms']} (" + ", ".join(
                f"{n} {el}" for el, n in run["composition"].items()) + ")"],
            ["steps monitored", f"{run['steps_monitored']} (steps {run['first_step']}"
                                f"–{run['last_step']})"],
            ["full-orbit steps", str(run["full_orbit_steps"])],
            ["time span", span],
            ["model", str(meta.get("model_file") or meta.get("base_calculator") or "–")],
            ["monitor", settings]]
    net = s.get("net", {})
    for name, label in (("net_force_per_atom", "net force per atom"),
                        ("net_torque", "net torque")):
        if name in net:
            v = net[name]
            meaning = ("0 for an exactly symmetric conservative model"
                       if net["forces"] == "returned forces" else
                       "of the unrotated copy, before the mean is removed")
            rows.append([label, f"median {fmt(v['median'])}, max {fmt(v['max'])} "
                                f"{pretty_unit(v['unit'])} over {v['n']} steps ({net['forces']}; "
                                f"{meaning})"])
    return Table("Run", ["", ""], rows)


def eps_table(s) -> Table:
    rows = []
    for q, e in s["eps"].items():
        rows.append([EPS_NAMES[q], pretty_unit(e["unit"]),
                     *(fmt(e["abs"][k]) for k in ("median", "p95", "max")),
                     *(fmt(e["rel"][k]) for k in ("median", "p95", "max")),
                     fmt(e["rms"]["median"])])
        if "abs_gpa" in e:
            rows.append([EPS_NAMES[q], "GPa", *(fmt(e["abs_gpa"][k]) for k in
                                                ("median", "p95", "max")), "", "", "", ""])
    header = ["output", "unit", "ε median", "ε p95", "ε max", "relative median",
              "relative p95", "relative max", "orbit RMS median"]
    return Table("Equivariance error ε (all monitored steps)", header, rows)


def contamination_table(s) -> Table:
    rows = []
    for q, c in s["contamination"].items():
        if c is None:
            continue
        top = ", ".join(f"{t['irrep']} {fmt_fraction(t['mean_power'])}"
                        for t in c["top_irreps"])
        rows.append([q, str(c["n"]), fmt_fraction(c["mean"]), fmt_fraction(c["max"]),
                     fmt_fraction(c["residual_mean"]), " + ".join(c["targets"]),
                     top or "none"])
    header = ["output", "full steps", "mean", "max", "beyond l_max", "targets",
              "top off-target irreps (mean c̃)"]
    return Table("Contamination (power fraction outside the target irreps, full-orbit "
                 "steps)", header, rows)


def worst_steps_table(s) -> Table:
    rows, ids = [], []
    atoms = {a["index"] for a in s["worst_atoms"]}
    quantities = s["run"]["quantities"]
    for r in s["worst_steps"]:
        atom = r.get("worst_atom")
        cell = "–"
        if atom:
            text = f"{atom['symbol']}{atom['index']} ({fmt(atom['eps'])} eV/Å)"
            cell = Link(text, f"atom-{atom['index']}") if atom["index"] in atoms else text
        rows.append([str(r["step"]), fmt(r["time_ps"], 4),
                     *(fmt(r[f"{q}_eps"]) for q in quantities),
                     "yes" if r["full_orbit"] else "no", cell])
        ids.append(f"step-{r['step']}")
    units = {q: pretty_unit(s["eps"][q]["unit"]) for q in quantities}
    header = ["step", "time (ps)", *(f"{EPS_NAMES[q]} ({units[q]})" for q in quantities),
              "full orbit", "worst atom"]
    return Table("Worst steps (the top 5 by forces ε per atom, and each worst atom's worst "
                 "step)", header, rows, ids)


def worst_atoms_table(s) -> Table:
    steps = {r["step"] for r in s["worst_steps"]}
    rows, ids = [], []
    for a in s["worst_atoms"]:
        step = str(a["worst_step"])
        rows.append([str(a["index"]), a["symbol"], fmt(a["median_eps"]), fmt(a["p95_eps"]),
                     fmt(a["max_eps"]),
                     Link(step, f"step-{step}") if a["worst_step"] in steps else step])
        ids.append(f"atom-{a['index']}")
    title = f"Worst atoms (forces ε in eV/Å over {s['per_atom_sampled_steps']} sampled steps)"
    return Table(title, ["atom", "element", "median", "p95", "max", "its worst step"],
                 rows, ids)


def species_table(s) -> Table:
    rows = [[el, str(v["n_atoms"]), fmt(v["median"]), fmt(v["p95"]), fmt(v["max"])]
            for el, v in s["species_eps"].items()]
    return Table("Forces ε by element (eV/Å)", ["element", "atoms", "median", "p95", "max"],
                 rows)


def logged_error_table(s) -> Table:
    rows = [[q, m["observable"], f"{fmt(m['error']['median'])} {pretty_unit(m['unit'])}",
             fmt(m["eps_over_error"]["median"]), fmt(m["eps_over_error"]["max"])]
            for q, m in s["logged_model_error"].items()]
    return Table("ε against the model error logged per step",
                 ["output", "observable", "error median", "ε/error median", "ε/error max"],
                 rows)


def compare_table(summaries: list[dict], labels: list[str]) -> Table:
    """Several runs side by side: one column per run."""
    def row(name, get):
        return [name, *(get(s) for s in summaries)]

    rows = [row("verdict", lambda s: s["verdict"]["level"]),
            row("headline", lambda s: s["verdict"]["headline"]),
            row("mode", lambda s: str(s["run"]["metadata"].get("mode", "–"))),
            row("steps monitored", lambda s: str(s["run"]["steps_monitored"])),
            row("full-orbit steps", lambda s: str(s["run"]["full_orbit_steps"]))]
    quantities = list(dict.fromkeys(q for s in summaries for q in s["eps"]))
    for q in quantities:
        unit = next(pretty_unit(s["eps"][q]["unit"]) for s in summaries if q in s["eps"])
        rows.append(row(f"{EPS_NAMES[q]} p95 ({unit})",
                        lambda s: fmt(s["eps"][q]["abs"]["p95"]) if q in s["eps"] else "–"))
        rows.append(row(f"{q} relative ε p95", lambda s: fmt(s["eps"][q]["rel"]["p95"])
                        if q in s["eps"] else "–"))
    return Table("Runs side by side", ["", *labels], rows)
