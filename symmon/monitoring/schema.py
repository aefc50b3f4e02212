"""The log's observables: name -> shape, unit, description (built from the outputs table).

What is written when:

* every step (monitored or not): the zero-cost signals ``net_force_per_atom`` (and
  ``net_torque`` without periodicity) of the returned forces -- for direct forces,
  returned without their mean, of the unrotated copy's raw forces instead, on the steps
  that evaluate it in the batched call (monitored steps) --, ``calls`` and
  ``call_kind``, ``averaged``;
* every monitored step: the base prediction of each quantity, its ε (raw and per-atom
  normalised) with error bars and the method that made them, relative ε, ratio to the error scale and grade, the
  per-atom force ε, and the step's ``level`` / ``violation``;
* full-orbit steps: character spectra, residual and contamination;
* ``mode="random_frame"``, monitored steps: ``frame_noise_<q>``, the distance of the
  returned random-frame prediction from the unrotated one;
* once, at the step the monitor switched to averaging: ``mode_switch``;
* every monitored step: ``monitor_stride``, the steps since the previous monitored step
  (with ``every="auto"`` chosen by the overhead budget, :mod:`.budget`).
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

from ..core.intervals import INTERVAL_METHODS
from ..core.irreps import irrep_labels, irreps_up_to
from ..core.outputs import QUANTITY_UNITS
from ..io.log import ObservableSpec
from .diagnose import NORMALISED_EPS, RAW_EPS
from .thresholds import UNITS

#: observables written on every step, monitored or not (the others: monitored steps only)
EVERY_STEP = ("energy", "forces", "stress", "net_force_per_atom", "net_torque", "calls",
              "call_kind", "averaged")
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


def _int(description: str) -> ObservableSpec:
    return ObservableSpec((), "1", description, dtype="int64")


def _eps_specs(quantity: str) -> Dict[str, ObservableSpec]:
    unit, per_atom_unit = QUANTITY_UNITS[quantity], UNITS[quantity]
    raw, normalised = RAW_EPS[quantity], NORMALISED_EPS[quantity]
    specs = {raw: ObservableSpec((), unit, f"equivariance error of {quantity} (paper "
                                 "Eq. 1-2, summed over components)"),
             f"{raw}_err": ObservableSpec((), unit, f"half width of the 68 % interval of "
                                          f"{raw} (0 on exact quadratures)")}
    if normalised != raw:
        specs[normalised] = ObservableSpec(
            (), per_atom_unit, f"{raw} per atom" if quantity == "energy" else
            "RMS over atoms of each atom's force eps = forces_eps_total / sqrt(N)")
        specs[f"{normalised}_err"] = ObservableSpec((), per_atom_unit,
                                                    f"half width of the 68 % interval of "
                                                    f"{normalised} (0 on exact quadratures)")
    for coverage in (68, 95):
        specs[f"{normalised}_ci{coverage}"] = ObservableSpec(
            (2,), per_atom_unit, f"(low, high) of {normalised} with {coverage} % coverage "
            "(random pairs: the bootstrap pivot law of the references of calibration_step, "
            "or Student-t on log eps^2 before the first calibration; the value itself twice "
            f"on exact quadratures); which one: {quantity}_interval_method")
    specs[f"{quantity}_interval_method"] = _int(
        f"method of the {normalised}_ci68/_ci95 intervals: " + ", ".join(
            f"{code} {INTERVAL_METHOD_WORDS[name]}" for code, name in
            enumerate(INTERVAL_METHODS)))
    specs[f"{quantity}_at_floor"] = _int(f"1 when {normalised} is below the model's "
                                         "floating-point noise floor")
    specs[f"{quantity}_exact"] = _int(f"1 when the full-orbit quadrature integrated "
                                      f"{quantity} exactly (aliasing check passed; "
                                      "full-orbit steps)")
    specs[f"{quantity}_quadrature_error"] = ObservableSpec(
        (), per_atom_unit, f"estimated error of {normalised} from the power the "
        "quadrature aliases (full-orbit steps)")
    specs[f"{quantity}_rms"] = ObservableSpec(
        (), per_atom_unit, f"orbit RMS of {quantity}, normalised as {normalised}")
    specs[f"{quantity}_rel_eps"] = ObservableSpec(
        (), "1", f"{normalised} / max({quantity}_rms, floor of the thresholds table)")
    specs[f"{quantity}_ratio"] = ObservableSpec(
        (), "1", f"{normalised} / the error scale (the model's own error if given, else "
        "a typical MLIP error)")
    specs[f"{quantity}_level"] = _int(f"grade of {quantity}: 0 ok, 1 caution, 2 problem")
    return specs


def _spectrum_specs(quantity: str, labels) -> Dict[str, ObservableSpec]:
    return {
        f"{quantity}_spectrum": ObservableSpec(
            (len(labels),), "1", f"normalised character spectrum of {quantity} "
            "(full-orbit steps)", labels=labels),
        f"{quantity}_residual": ObservableSpec(
            (), "1", f"fraction of {quantity}'s power beyond l_max (full-orbit steps)"),
        f"{quantity}_contamination": ObservableSpec(
            (), "1", f"fraction of {quantity}'s power outside its target irreps"),
    }


def observable_specs(quantities: Sequence[str], n_atoms: int, periodic: bool, l_max: int,
                     extra: Mapping[str, ObservableSpec] = ()) -> Dict[str, ObservableSpec]:
    """Every observable a monitor of ``quantities`` may write for this structure."""
    shapes = {"energy": (), "forces": (n_atoms, 3), "stress": (3, 3)}
    labels = irrep_labels(irreps_up_to(l_max))
    specs: Dict[str, ObservableSpec] = {}
    for quantity in quantities:
        specs[quantity] = ObservableSpec(shapes[quantity], QUANTITY_UNITS[quantity],
                                         f"base model {quantity}")
        specs.update(_eps_specs(quantity))
        specs.update(_spectrum_specs(quantity, labels))
        specs[f"frame_noise_{quantity}"] = ObservableSpec(
            (), UNITS[quantity], f"|returned - unrotated| of {quantity} in "
            "mode='random_frame', normalised as its eps (monitored steps)")
    if "forces" in quantities:
        specs["forces_eps_per_atom"] = ObservableSpec(
            (n_atoms,), "eV/angstrom", "equivariance error of each atom's force")
    if "stress" in quantities:
        specs["stress_contamination"] = ObservableSpec(
            (), "1", "fraction of the stress's power outside its targets, block by block: "
            "the trace outside (0,+1), the traceless part outside (2,+1) (full-orbit steps)")
        specs["stress_traceless_spectrum"] = ObservableSpec(
            (len(labels),), "1", "normalised character spectrum of the traceless part of "
            "the stress; an equivariant one is pure (2,+1) (full-orbit steps)", labels=labels)
        specs["stress_eps_gpa"] = ObservableSpec((), "GPa", "stress_eps in GPa")
    specs.update({
        "full_orbit": _int("1 on exact-quadrature steps"),
        "n_elements": _int("O(3) elements evaluated"),
        "calibration_step": _int("step whose reference orbit gave this step's random-pair "
                                 "intervals their law (-1: none yet; "
                                 "symmon.monitoring.calibration)"),
        "calibration_rotations": _int("random pairs of a calibration step (0 on other "
                                      "steps)"),
        "level": _int("worst grade of the step: 0 ok, 1 caution, 2 problem "
                      "(symmon.monitoring.thresholds)"),
        "violation": _int("1 when the step was graded problem"),
        "eps_of_returned": _int("1 when eps measures the returned predictions; 0 when it "
                                "measures the base model (the returned values were "
                                "O(3)-averaged)"),
        "averaged": _int("1 when the returned predictions were O(3)-averaged (every step)"),
        "mode_switch": _int("1 at the step the monitor switched to O(3) averaging"),
        "monitor_stride": _int("steps since the previous monitored step (0 at the first; "
                               "with every='auto' chosen by the overhead budget)"),
        "calls": _int("base-model calculations since the previous logged step, this one "
                      "included (>1: re-evaluations a driver did not keep, e.g. line "
                      "searches; every step)"),
        "call_kind": _int("0: a step confirmed by the attached driver; 1: a single point "
                          "outside any driver (every step)"),
        "net_force_per_atom": ObservableSpec(
            (), "eV/angstrom", "|sum_i F_i| / N of the returned forces (direct forces: of the "
            "raw unrotated ones, monitored steps; 0 for an exactly symmetric conservative "
            "model; every step)"),
    })
    if not periodic:
        specs["net_torque"] = ObservableSpec(
            (), "eV", "|sum_i (r_i - r_com) x F_i| of the forces of net_force_per_atom "
            "(0 for an exactly symmetric conservative model; every step)")
    specs.update(extra)
    return specs
