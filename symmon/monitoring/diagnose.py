"""Orbit values -> the numbers of one step: ε, error bars, spectra, per-atom ε.

Every ε is reported in the per-atom normalisation a person reads (``eps_unit`` and
:meth:`~symmon.core.quantities.Quantity.per_atom_factor` of the quantity table), so the same structure repeated ``n`` times
gives the same number:

* energy: ``energy_eps`` is the ε of the total energy (eV); ``energy_eps_per_atom`` =
  ``energy_eps / N`` (eV/atom);
* forces: ``forces_eps`` = ``sqrt(mean_i eps_i^2)``, the RMS over atoms of each atom's ε
  (eV/Å); since ``eps_total^2 = sum_i eps_i^2`` this is ``forces_eps_total / sqrt(N)``,
  and the summed value stays available as ``forces_eps_total``;
* stress: eV/Å³ (``stress_eps``) and GPa (``stress_eps_gpa``).

Error bars: ``*_eps_ci68`` and ``*_eps_ci95`` are ``(low, high)`` intervals of the
per-atom-normalised ε with 68 % and 95 % coverage (the bootstrap pivot law of the
calibration step's reference orbit, :mod:`symmon.monitoring.calibration`; coverage in
docs/theory.md), ``*_eps_err`` the half width of
the 68 % one, ``<q>_interval_method`` the code of the method that made them
(:data:`symmon.core.intervals.INTERVAL_METHODS`: the data-only Student-t before the
run's first calibration). On full-orbit steps ``<q>_exact`` is 1 only when the quadrature passed the
aliasing check (``<q>_quadrature_error`` estimates what it misses); ``<q>_at_floor`` is 1
when ε is below the model's floating-point noise floor.

The zero-cost signals of :func:`net_signals` need no extra model call: for an exactly
O(3)-invariant conservative model the net force ``sum_i F_i`` vanishes (translation
invariance) and so does the net torque ``sum_i (r_i - r_com) x F_i`` of a non-periodic
system (rotation invariance).
"""

from __future__ import annotations

from typing import Dict, Mapping, MutableMapping, Optional

import numpy as np
import torch

from ..core.intervals import INTERVAL_METHODS
from ..core.irreps import Irrep
from ..core.metrics import character_spectrum, equivariance_error
from ..core.quantities import QUANTITY
from ..core.representations import get_representation
from .schedule import StepPlan
from .schema import NAMES


def epsilon_values(quantity: str, orbit_values, plan: StepPlan, n_atoms: int,
                   dtype=None, laws: Optional[Mapping] = None,
                   collect: Optional[MutableMapping] = None) -> Dict:
    """ε of one quantity on ``plan.grid``'s orbit (raw and per-atom normalised, with
    intervals and exactness flags) and its orbit RMS ``<q>_rms`` (normalised).

    ``laws``: quantity -> reference law of the random-pair intervals
    (:mod:`symmon.monitoring.calibration`); ``collect``: where this orbit is stored as a
    new reference (calibration and full-orbit steps)."""
    row, names = QUANTITY[quantity], NAMES[quantity]
    error = equivariance_error(orbit_values, plan.grid, row.kind,
                               dtype=dtype, check_exactness=plan.full,
                               calibration=(laws or {}).get(quantity),
                               calibrate=collect is not None)
    if collect is not None and error.calibration is not None:
        collect[quantity] = error.calibration
    factor = row.per_atom_factor(n_atoms)
    values = {names.raw_eps: error.eps, names.raw_eps_err: error.eps_stderr,
              names.eps: error.eps * factor, names.eps_err: error.eps_stderr * factor,
              names.ci68: np.asarray(error.interval_68) * factor,
              names.ci95: np.asarray(error.interval_95) * factor,
              names.interval_method: INTERVAL_METHODS.index(error.interval_method),
              names.rms: error.rms * factor, names.at_floor: int(error.at_floor)}
    if plan.full:
        values[names.exact] = int(error.exact)
        values[names.quadrature_error] = error.quadrature_error * factor
    if names.eps_per_atom:
        values[names.eps_per_atom] = error.per_item
    if names.eps_alt:
        values[names.eps_alt] = error.eps * factor * row.alt_unit[1]
    return values


def spectrum_values(quantity: str, orbit_values, plan: StepPlan, l_max: int) -> Dict:
    """Normalised character spectrum, power beyond ``l_max`` and contamination."""
    spectrum = character_spectrum(orbit_values, plan.spectrum, l_max,
                                  sample_dims=1 if QUANTITY[quantity].per_atom else 0)
    targets = get_representation(QUANTITY[quantity].kind).targets
    names = NAMES[quantity]
    values = {names.spectrum: spectrum.normalized,
              names.residual: spectrum.residual_fraction,
              names.contamination: spectrum.contamination(targets)}
    if names.traceless_spectrum:
        values.update(stress_blocks(orbit_values, plan, l_max))
    return values


def stress_blocks(orbit_values, plan: StepPlan, l_max: int) -> Dict:
    """Contamination of a stress judged block by block, and the traceless part's spectrum.

    An equivariant stress ``S(Q x) = Q S Q^T`` has its trace in ``(0,+1)`` and its
    traceless part in ``(2,+1)``; both are targets of the whole tensor, so a traceless
    part that does not rotate at all (pure ``(0,+1)`` as a function of ``Q``) escapes
    the whole tensor's contamination. Here the isotropic part ``tr(S)/3 I`` may only be
    ``(0,+1)`` and the traceless part only ``(2,+1)``.
    """
    stress = torch.as_tensor(orbit_values, dtype=torch.float64)
    stress = (stress + stress.transpose(-1, -2)) / 2
    trace = torch.diagonal(stress, dim1=-2, dim2=-1).sum(-1) / 3
    isotropic = trace[..., None, None] * torch.eye(3, dtype=stress.dtype, device=stress.device)
    off_target, total, blocks = 0.0, 0.0, {}
    for part, target in ((isotropic, Irrep(0, 1)), (stress - isotropic, Irrep(2, 1))):
        spectrum = character_spectrum(part, plan.spectrum, l_max)
        blocks[target] = spectrum
        off_target += (1 - spectrum.fraction([target])) * spectrum.mean_square
        total += spectrum.mean_square
    traceless, names = blocks[Irrep(2, 1)], NAMES["stress"]
    return {names.contamination: off_target / total if total > 0 else 0.0,
            names.traceless_spectrum: traceless.normalized}


def diagnose(orbit: Mapping[str, object], plan: StepPlan, n_atoms: int, l_max: int,
             dtype=None, laws: Optional[Mapping] = None,
             collect: Optional[MutableMapping] = None) -> Dict:
    """All diagnostics of one step from the orbit values of each quantity (``dtype``: the
    model's, for the noise floor; ``laws``/``collect``: :func:`epsilon_values`)."""
    values: Dict[str, object] = {"full_orbit": int(plan.full), "n_elements": len(plan.grid)}
    for quantity, orbit_values in orbit.items():
        values.update(epsilon_values(quantity, orbit_values, plan, n_atoms, dtype,
                                     laws, collect))
        if plan.full:
            values.update(spectrum_values(quantity, orbit_values, plan, l_max))
    return values


def in_frame(frame_values: Mapping[str, object], frame: np.ndarray,
             quantities) -> Dict[str, np.ndarray]:
    """``rho(Q)^{-1} f(Q x)`` of each quantity from its values on the one copy ``x Q^T``
    (stress symmetrised, as ASE returns it), float64."""
    matrices = torch.as_tensor(frame, dtype=torch.float64)
    determinants = torch.linalg.det(matrices)
    returned = {}
    for quantity in quantities:
        values = torch.as_tensor(frame_values[quantity], dtype=torch.float64)
        kind = QUANTITY[quantity].kind
        back = get_representation(kind).back_transform(values, matrices, determinants)[0]
        back = back.numpy()
        returned[quantity] = (back + back.T) / 2 if kind == "symmetric_tensor" else back
    return returned


def frame_noise(returned: Mapping[str, np.ndarray], unrotated: Mapping[str, np.ndarray],
                n_atoms: int) -> Dict[str, float]:
    """``frame_noise_<q>``: ``||y_Q - f(x)||`` of the random-frame prediction against the
    unrotated one, per atom as ε (eV/atom, RMS over atoms eV/Å, eV/Å³)."""
    return {NAMES[q].frame_noise: float(np.linalg.norm(np.asarray(returned[q]) - unrotated[q]))
            * QUANTITY[q].per_atom_factor(n_atoms) for q in returned}


def net_signals(forces: np.ndarray, positions: np.ndarray, masses: Optional[np.ndarray],
                periodic: bool) -> Dict[str, float]:
    """``|sum_i F_i| / N`` (eV/Å) and, without periodicity, ``|sum_i (r_i - r_com) x F_i|``
    (eV) of the returned forces."""
    forces = np.asarray(forces, dtype=np.float64)
    values = {"net_force_per_atom": float(np.linalg.norm(forces.sum(axis=0))) / len(forces)}
    if not periodic:
        centre = masses @ positions / masses.sum()
        torque = np.cross(positions - centre, forces).sum(axis=0)
        values["net_torque"] = float(np.linalg.norm(torque))
    return values
