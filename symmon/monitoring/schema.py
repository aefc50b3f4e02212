"""The log's observables as one table, :data:`OBSERVABLES`: name -> :class:`Observable`.

A row says what an observable is (shape, unit, description), when it is written, which
quantity it belongs to (declared only when that quantity is monitored) and whether the
front-ends hand it on: in the ASE calculator's ``results`` (``results``) and in the
i-PI extras (``extras``). The per-quantity names are built once, here
(:data:`NAMES`: ``NAMES["forces"].rel_eps == "forces_rel_eps"``); the diagnostics, the
policy, the monitor and the front-ends read them from this module, and the recorder
refuses a value whose name is in no row (nor in a front-end's ``extra_specs``).

What is written when (:attr:`Observable.written`):

* every step (monitored or not): the zero-cost signals ``net_force_per_atom`` (and
  ``net_torque`` without periodicity) of the returned forces -- for direct forces,
  returned without their mean, of the unrotated copy's raw forces instead, on the steps
  that evaluate it in the batched call (monitored steps) --, ``calls`` and
  ``call_kind``, ``averaged``, and the base predictions;
* every monitored step: ε of each quantity (raw and per-atom normalised) with error bars
  and the method that made them, relative ε, ratio to the error scale and grade, the per-atom force ε, and the step's
  ``level`` / ``violation``;
* full-orbit steps: character spectra, residual and contamination;
* ``mode="random_frame"``, monitored steps: ``frame_noise_<q>``, the distance of the
  returned random-frame prediction from the unrotated one;
* once, at the step the monitor switched to averaging: ``mode_switch``;
* every monitored step: ``monitor_stride``, the steps since the previous monitored step
  (with ``every="auto"`` chosen by the overhead budget, :mod:`.budget`).

A new observable is one row here and the code that computes it (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from .. import __version__
from ..core.intervals import INTERVAL_METHODS
from ..core.irreps import irrep_labels, irreps_up_to
from ..core.quantities import QUANTITIES, QUANTITY, Quantity
from ..io.files import file_sha256
from ..io.log import ObservableSpec
from . import thresholds

#: when an observable is written (:attr:`Observable.written`)
ALWAYS, MONITORED, FULL_ORBIT, RANDOM_FRAME, EVENT = (
    "every step", "monitored steps", "full-orbit steps", "random-frame monitored steps",
    "once (an event)")
#: what each interval method is, in the words of the log's descriptions
INTERVAL_METHOD_WORDS = {
    "student_t_log_pairs": "data-only Student-t on log eps^2 (no calibration yet; "
                           "approximate)",
    "calibrated_bootstrap": "pivot law of the calibration references (calibration_step)",
    "bootstrap": "bootstrap of the step's own pairs (a calibration step without earlier "
                 "references)",
    "exact_quadrature": "exact quadrature (zero width)",
    "aliasing_bound": "quadrature that failed its exactness check (+- the aliasing bound, "
                      "no stated coverage)"}
#: call_kind values: how the logged calculation came about
CALL_KINDS = {"driver_step": 0, "single_point": 1}
#: symbolic shape entries of :attr:`Observable.shape`
ATOMS, IRREPS = "atoms", "irreps"


@dataclass(frozen=True)
class Observable:
    """One row of :data:`OBSERVABLES`; ``shape`` may hold :data:`ATOMS` (one entry per
    atom) and :data:`IRREPS` (one per irrep up to ``l_max``)."""

    name: str
    shape: Tuple = ()
    unit: str = "1"
    description: str = ""
    written: str = MONITORED
    quantity: Optional[str] = None  # declared only when this quantity is monitored
    results: bool = False  # in the ASE calculator's ``results`` (NaN when not computed)
    extras: bool = False  # in the i-PI extras (NaN when not computed)
    dtype: str = "float64"
    molecules_only: bool = False  # declared only without periodicity

    @property
    def per_atom(self) -> bool:
        return ATOMS in self.shape

    def spec(self, n_atoms: int, labels) -> ObservableSpec:
        """The declaration of this observable for ``n_atoms`` atoms and irrep ``labels``."""
        shape = tuple(n_atoms if s == ATOMS else len(labels) if s == IRREPS else s
                      for s in self.shape)
        return ObservableSpec(shape, self.unit, self.description, dtype=self.dtype,
                              labels=labels if IRREPS in self.shape else None)


@dataclass(frozen=True)
class QuantityNames:
    """The observable names of one quantity (``None``: the quantity has no such one)."""

    value: str  # the base model's prediction
    raw_eps: str  # ε as measured (total energy, forces summed over atoms)
    raw_eps_err: str
    eps: str  # ε per-atom normalised (what the thresholds grade)
    eps_err: str
    ci68: str
    ci95: str
    interval_method: str
    at_floor: str
    exact: str
    quadrature_error: str
    rms: str
    rel_eps: str
    ratio: str
    level: str
    spectrum: str
    residual: str
    contamination: str
    frame_noise: str
    eps_per_atom: Optional[str] = None  # ε of each atom (forces)
    eps_alt: Optional[str] = None  # ε in the quantity's second unit (stress in GPa)
    traceless_spectrum: Optional[str] = None  # the traceless part's spectrum (stress)


def _names(q: Quantity) -> QuantityNames:
    n = q.name
    raw = f"{n}_eps_total" if q.per_atom else f"{n}_eps"
    eps = f"{n}_eps_per_atom" if q.atom_power == 1 else f"{n}_eps"
    return QuantityNames(
        n, raw, f"{raw}_err", eps, f"{eps}_err", f"{eps}_ci68", f"{eps}_ci95",
        f"{n}_interval_method", f"{n}_at_floor", f"{n}_exact", f"{n}_quadrature_error", f"{n}_rms", f"{n}_rel_eps",
        f"{n}_ratio", f"{n}_level", f"{n}_spectrum", f"{n}_residual", f"{n}_contamination",
        f"frame_noise_{n}", eps_per_atom=f"{n}_eps_per_atom" if q.per_atom else None,
        eps_alt=f"{n}_eps_{q.alt_unit[0].lower()}" if q.alt_unit else None,
        traceless_spectrum=(f"{n}_traceless_spectrum" if q.kind == "symmetric_tensor"
                            else None))


#: quantity -> its observable names
NAMES: Dict[str, QuantityNames] = {q.name: _names(q) for q in QUANTITIES}


def _int(name: str, description: str, **kw) -> Observable:
    return Observable(name, (), "1", description, dtype="int64", **kw)


def _quantity_rows(q: Quantity) -> Tuple[Observable, ...]:
    n, names, eps_unit = q.name, NAMES[q.name], q.eps_unit
    raw, eps = names.raw_eps, names.eps

    def row(name, shape, unit, description, written=MONITORED, **kw):
        return Observable(name, shape, unit, description, written, quantity=n, **kw)

    def err(of, unit, **kw):
        return row(f"{of}_err", (), unit, f"half width of the 68 % interval of {of} (0 on "
                   "exact quadratures)", **kw)

    rows = [row(n, (ATOMS, 3) if q.per_atom else q.shape(0), q.unit, f"base model {n}",
                ALWAYS),
            row(raw, (), q.unit, f"equivariance error of {n} (paper Eq. 1-2, summed over "
                "components)", results=True, extras=True),
            err(raw, q.unit, extras=raw == f"{n}_eps")]
    if eps != raw:
        rows += [row(eps, (), eps_unit, f"{raw} per atom" if q.atom_power == 1 else
                     f"RMS over atoms of each atom's force eps = {raw} / sqrt(N)",
                     results=True, extras=True),
                 err(eps, eps_unit, extras=eps == f"{n}_eps")]
    rows += [row(ci, (2,), eps_unit, f"(low, high) of {eps} with {coverage} % coverage "
                 "(random pairs: the bootstrap pivot law of the references of "
                 "calibration_step, or Student-t on log eps^2 before the first calibration; "
                 "the value itself twice on exact quadratures); which one: "
                 f"{names.interval_method}")
             for ci, coverage in ((names.ci68, 68), (names.ci95, 95))]
    rows += [
        _int(names.interval_method, f"method of the {names.ci68}/_ci95 intervals: " + ", ".join(
            f"{code} {INTERVAL_METHOD_WORDS[name]}" for code, name in
            enumerate(INTERVAL_METHODS)), quantity=n),
        _int(names.at_floor, f"1 when {eps} is below the model's floating-point noise "
             "floor", quantity=n),
        _int(names.exact, f"1 when the full-orbit quadrature integrated {n} exactly "
             "(aliasing check passed; full-orbit steps)", written=FULL_ORBIT, quantity=n),
        row(names.quadrature_error, (), eps_unit, f"estimated error of {eps} from the "
            "power the quadrature aliases (full-orbit steps)", FULL_ORBIT),
        row(names.rms, (), eps_unit, f"orbit RMS of {n}, normalised as {eps}"),
        row(names.rel_eps, (), "1", f"{eps} / max({names.rms}, floor of the thresholds "
            "table)", results=True, extras=True),
        row(names.ratio, (), "1", f"{eps} / the error scale (the model's own error if given, "
            "else a typical MLIP error)"),
        _int(names.level, f"grade of {n}: 0 ok, 1 caution, 2 problem", quantity=n),
        row(names.spectrum, (IRREPS,), "1", f"normalised character spectrum of {n} "
            "(full-orbit steps)", FULL_ORBIT),
        row(names.residual, (), "1", f"fraction of {n}'s power beyond l_max (full-orbit "
            "steps)", FULL_ORBIT),
        row(names.contamination, (), "1",
            "fraction of the stress's power outside its targets, block by block: the trace "
            "outside (0,+1), the traceless part outside (2,+1) (full-orbit steps)"
            if names.traceless_spectrum else
            f"fraction of {n}'s power outside its target irreps", FULL_ORBIT),
        row(names.frame_noise, (), eps_unit, f"|returned - unrotated| of {n} in "
            "mode='random_frame', normalised as its eps (monitored steps)", RANDOM_FRAME,
            results=True),
    ]
    if names.eps_per_atom:
        rows.append(row(names.eps_per_atom, (ATOMS,), q.unit,
                        f"equivariance error of each atom's {q.noun}", results=True,
                        extras=True))
    if names.traceless_spectrum:
        rows.append(row(names.traceless_spectrum, (IRREPS,), "1",
                        "normalised character spectrum of the traceless part of the stress; "
                        "an equivariant one is pure (2,+1) (full-orbit steps)", FULL_ORBIT))
    if names.eps_alt:
        rows.append(row(names.eps_alt, (), q.alt_unit[0], f"{eps} in {q.alt_unit[0]}",
                        results=True, extras=True))
    return tuple(rows)


_STEP_ROWS = (
    _int("full_orbit", "1 on exact-quadrature steps", extras=True),
    _int("n_elements", "O(3) elements evaluated", extras=True),
    _int("calibration_step", "step whose reference orbit gave this step's random-pair "
         "intervals their law (-1: none yet; symmon.monitoring.calibration)"),
    _int("calibration_rotations", "random pairs of a calibration step (0 on other steps)"),
    _int("level", "worst grade of the step: 0 ok, 1 caution, 2 problem "
         "(symmon.monitoring.thresholds)", results=True, extras=True),
    _int("violation", "1 when the step was graded problem", results=True, extras=True),
    _int("eps_of_returned", "1 when eps measures the returned predictions; 0 when it "
         "measures the base model (the returned values were O(3)-averaged)"),
    _int("averaged", "1 when the returned predictions were O(3)-averaged (every step)",
         written=ALWAYS),
    _int("mode_switch", "1 at the step the monitor switched to O(3) averaging",
         written=EVENT),
    _int("monitor_stride", "steps since the previous monitored step (0 at the first; "
         "with every='auto' chosen by the overhead budget)"),
    _int("calls", "base-model calculations since the previous logged step, this one "
         "included (>1: re-evaluations a driver did not keep, e.g. line searches; every "
         "step)", written=ALWAYS),
    _int("call_kind", "0: a step confirmed by the attached driver; 1: a single point "
         "outside any driver (every step)", written=ALWAYS),
    Observable("net_force_per_atom", (), "eV/angstrom",
               "|sum_i F_i| / N of the returned forces (direct forces: of the raw unrotated "
               "ones, monitored steps; 0 for an exactly symmetric conservative model; every "
               "step)", ALWAYS, results=True, extras=True),
    Observable("net_torque", (), "eV",
               "|sum_i (r_i - r_com) x F_i| of the forces of net_force_per_atom (0 for an "
               "exactly symmetric conservative model; every step)", ALWAYS,
               results=True, molecules_only=True),
)

#: every observable a monitor may write: name -> row
OBSERVABLES: Dict[str, Observable] = {
    o.name: o for o in (*(r for q in QUANTITIES for r in _quantity_rows(q)), *_STEP_ROWS)}

#: observables written on every step, monitored or not (the others: monitored steps only)
EVERY_STEP = frozenset(o.name for o in OBSERVABLES.values() if o.written == ALWAYS)
#: diagnostics the ASE calculator puts in ``results`` (NaN where not computed)
RESULTS = tuple(o.name for o in OBSERVABLES.values() if o.results)
#: diagnostics the i-PI front-end returns as extras with every force
EXTRAS = tuple(o.name for o in OBSERVABLES.values() if o.extras)


def observable_specs(quantities: Sequence[str], n_atoms: int, periodic: bool, l_max: int,
                     extra: Mapping[str, ObservableSpec] = ()) -> Dict[str, ObservableSpec]:
    """Every observable a monitor of ``quantities`` may write for this structure."""
    labels = irrep_labels(irreps_up_to(l_max))
    monitored = set(quantities)
    specs = {name: o.spec(n_atoms, labels) for name, o in OBSERVABLES.items()
             if (o.quantity is None or o.quantity in monitored)
             and not (o.molecules_only and periodic)}
    specs.update(extra)
    return specs


class UndeclaredObservable(ValueError):
    """A value named by no row of :data:`OBSERVABLES` (nor by a front-end's extras)."""


def check_declared(names, extra: Mapping = ()) -> None:
    """Refuse values whose names are not declared (a programming error: a value would
    otherwise be silently left out of the log)."""
    unknown = [name for name in names if name not in OBSERVABLES and name not in extra]
    if unknown:
        raise UndeclaredObservable(
            f"value(s) {', '.join(map(repr, sorted(unknown)))} are not declared: add a row "
            "to symmon.monitoring.schema.OBSERVABLES (or pass the spec as extra_specs)")


def log_metadata(source, options, schedule, driver, warm_up_s: float,
                 first_step_s: Optional[float]) -> dict:
    """The log's metadata: the settings, model, grids, interval method, units and the
    thresholds table a monitor of ``source`` writes (``driver``: the attached one)."""
    model_path = getattr(source.orbit_model, "model_path", None) or \
        getattr(source.base, "parameters", {}).get("model")
    meta = dict(options.describe())
    units = {"energy": "eV", "length": "angstrom", "time": "ps"}
    units.update({q.name: q.unit for q in QUANTITIES if q.name != "energy"})
    units.update({NAMES["forces"].eps: f"{QUANTITY['forces'].eps_unit} (RMS over atoms)",
                  NAMES["energy"].eps: QUANTITY["energy"].eps_unit})
    meta.update({
        "symmon_version": __version__,
        "base_calculator": type(source.base).__name__,
        "base_parameters": _parameters(source.base),
        "orbit_path": source.path,
        "model_file": model_path, "model_sha256": file_sha256(model_path),
        "full_grid": schedule.full_grid.describe(),
        "forces_source": "non_conservative" if source.nc_forces else "conservative",
        "stress_source": "non_conservative" if source.nc_stress else "conservative",
        "driver": None if driver is None else type(driver).__name__,
        "warm_up_s": warm_up_s, "first_step_s": first_step_s,
        "average_grid": None if schedule.average_grid is None
        else schedule.average_grid.describe(),
        "eps_measured_on": "base model" if options.mode in ("average", "random_frame")
        else "returned predictions",
        "interval_method": ("per step and quantity in <q>_interval_method: "
                            "student_t_log_pairs (random steps before the first "
                            "calibration), calibrated_bootstrap (the pivot law of the "
                            "references up to step calibration_step) or bootstrap "
                            "(a first calibration step), exact_quadrature or "
                            "aliasing_bound (full-orbit steps); docs/theory.md"
                            if options.calibration_rotations else
                            "student_t_log_pairs (random steps), exact_quadrature or "
                            "aliasing_bound (full-orbit steps); docs/theory.md"),
        "model_dtype": str(source.model_dtype).replace("torch.", ""),
        "reference_errors": dict(thresholds.REFERENCE_ERRORS),
        "floors": dict(thresholds.FLOORS),
        "units": units,
    })
    meta.update(options.metadata)
    return meta


def _parameters(calculator) -> str:
    """The base calculator's ASE parameters as sorted JSON (what an append must match)."""
    import json

    parameters = getattr(calculator, "parameters", None) or {}
    return json.dumps(dict(parameters), sort_keys=True, default=str)
