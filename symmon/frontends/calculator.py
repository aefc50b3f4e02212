"""``SymmetryMonitor``: a drop-in ASE calculator that measures O(3) symmetry while it runs.

It wraps any ASE calculator (``atoms.calc = SymmetryMonitor(base, log="run.h5")``),
returns the base predictions untouched (``mode="monitor"``) or their O(3) average
(``mode="average"``), and on monitored steps evaluates the model on transformed copies
of the structure (one batched call for metatomic models) to log

* every ``every``-th step: ε of energy, forces and stress from ``random_rotations``
  Haar-random rotations paired with their improper partners (unbiased, with error bars);
* every ``full_every``-th step: exact ε on a quadrature of degree ``degree`` and the
  character spectra ``c~(l, sigma)`` up to ``l_max`` (with the residual beyond it).

Attach it to the dynamics (``monitor.attach(dyn)``) to record MD step numbers and
times: a calculation is committed to the log when the dynamics' observer confirms it
was a step, so re-evaluations never corrupt the step count.
"""

from __future__ import annotations

import atexit
import os
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from ase import units
from ase.calculators.calculator import Calculator, all_changes

from .. import __version__
from ..io.log import LogWriter, ObservableSpec, check_log_path
from ..io.files import file_sha256
from ..core.metrics import character_spectrum, equivariance_error
from ..adapters.ase import ASEOrbitModel
from ..adapters.base import validate_atoms, voigt_to_matrix
from ..adapters.metatomic import MetatomicOrbitModel
from ..core.grids import quadrature_grid, random_grid
from ..core.irreps import irrep_labels, irreps_up_to
from ..core.representations import get_representation

MODES = ("monitor", "average", "purified")
VIOLATION_ACTIONS = ("warn", "raise", "average")
#: symmon's name of each monitored quantity -> (ASE result key, unit)
QUANTITIES = {"energy": "eV", "forces": "eV/angstrom", "stress": "eV/angstrom^3"}
_KINDS = {"energy": "scalar", "forces": "vector", "stress": "symmetric_tensor"}
PS = 1000 * units.fs  # ASE time units per picosecond


class SymmetryViolation(RuntimeError):
    """Raised with ``on_violation="raise"`` when a relative ε exceeds its threshold."""


class SymmetryViolationWarning(UserWarning):
    """Issued with ``on_violation="warn"``."""


@dataclass
class StepDiagnostics:
    """What one monitored calculation measured (values are numpy/float, SI-like ASE units)."""

    values: Dict[str, object] = field(default_factory=dict)
    positions: Optional[np.ndarray] = None
    cell: Optional[np.ndarray] = None
    violations: List[str] = field(default_factory=list)


def metatomic_calculator(path, *, device: Optional[str] = None,
                         non_conservative=False):
    """``MetatomicCalculator`` for a ``.pt`` file, with exact neighbour lists (no skin)."""
    from metatomic_ase import MetatomicCalculator

    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {os.fspath(path)!r} does not exist")
    return MetatomicCalculator(os.fspath(path), device=device,
                               non_conservative=non_conservative, neighbor_skin=0.0)


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class SymmetryMonitor(Calculator):
    """An ASE calculator that wraps ``base`` and logs its O(3) symmetry diagnostics.

    :param base: ASE calculator to wrap (``metatomic_ase.MetatomicCalculator`` gets the
        fast batched path), or a path to a metatomic ``.pt`` model
    :param log: HDF5 log path (``None``: keep diagnostics in ``results`` only)
    :param log_mode: ``"create"`` (refuse an existing file), ``"append"``, ``"overwrite"``
    :param every: monitor every n-th step (default 10: the orbit costs about
        ``2 * random_rotations`` model calls, see docs/performance.md)
    :param random_rotations: Haar-random rotations per monitored step (each paired with
        its improper partner); at least 2, and 3 for error bars
    :param full_every: every m-th step use the exact quadrature and compute character
        spectra (0: never)
    :param degree: quadrature degree of full steps (default ``2 * l_max``)
    :param l_max: character spectra up to this angular order
    :param mode: ``"monitor"`` (return base predictions), ``"average"`` (return the
        O(3) average over a quadrature of ``average_degree``), ``"purified"``
        (return the purified readout's predictions; needs ``readout``)
    :param thresholds: relative ε above which a step violates, per quantity
        (``{"forces": 0.05}``) or one number for all
    :param on_violation: ``"warn"``, ``"raise"`` (log flushed, run stopped) or
        ``"average"`` (switch to averaging from this step on)
    :param seed: seed of the random rotations (same seed, same log)
    :param flush_every: flush the log every this many monitored steps
    :param chunk_size: transformed copies per batched forward call (metatomic models;
        default 32 on CPU, 256 on GPUs)
    """

    implemented_properties = [
        "energy", "free_energy", "forces", "stress",
        "energy_eps", "forces_eps", "stress_eps", "energy_rel_eps", "forces_rel_eps",
        "stress_rel_eps", "forces_eps_per_atom",
    ]

    def __init__(self, base, log: Optional[str] = None, *, log_mode: str = "create",
                 every: int = 10, random_rotations: int = 3, full_every: int = 0,
                 degree: Optional[int] = None, l_max: int = 4, mode: str = "monitor",
                 average_degree: int = 5, readout=None, thresholds=None,
                 on_violation: str = "warn", seed: int = 0, flush_every: int = 10,
                 chunk_size: Optional[int] = None, device: Optional[str] = None, metadata=None):
        super().__init__()
        self.base = self._make_base(base, device)
        self.orbit_model, self._nc_forces, self._nc_stress = self._make_orbit_model(
            self.base, device, chunk_size)
        self._check_options(every, random_rotations, full_every, l_max, mode, on_violation,
                            average_degree, degree, flush_every)
        self.every, self.full_every, self.l_max = int(every), int(full_every), int(l_max)
        self.random_rotations, self.seed = int(random_rotations), int(seed)
        self.degree = int(degree) if degree is not None else 2 * self.l_max
        self.average_degree = int(average_degree)
        self.mode, self.on_violation = mode, on_violation
        self.thresholds = self._check_thresholds(thresholds)
        self.readout = self._load_readout(readout) if mode == "purified" else None
        self.log_path, self.log_mode, self.flush_every = log, log_mode, int(flush_every)
        if log is not None:
            check_log_path(os.fspath(log), log_mode)
        self._extra_metadata = dict(metadata or {})
        self._writer: Optional[LogWriter] = None
        self._dynamics = None
        self._next_step = 0
        self._pending: Optional[StepDiagnostics] = None
        self.last_diagnostics: Optional[StepDiagnostics] = None
        self.n_violations = 0
        atexit.register(_close_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _make_base(base, device):
        if isinstance(base, (str, os.PathLike)):
            return metatomic_calculator(base, device=device)
        if not isinstance(base, Calculator) and not hasattr(base, "get_property"):
            raise TypeError(f"base must be an ASE calculator or a model path, got "
                            f"{type(base).__name__}")
        return base

    @staticmethod
    def _make_orbit_model(base, device, chunk_size):
        """The batched adapter for metatomic calculators, the generic loop otherwise."""
        try:
            from metatomic_ase import MetatomicCalculator
        except ImportError:  # pragma: no cover - metatomic-ase is a dependency
            MetatomicCalculator = ()
        if isinstance(base, MetatomicCalculator):
            non_conservative = base.parameters.get("non_conservative", False)
            model = MetatomicOrbitModel(base, device=device, chunk_size=chunk_size)
            return (model, non_conservative in (True, "forces"),
                    non_conservative in (True, "stress"))
        return ASEOrbitModel(base), False, False

    @staticmethod
    def _check_options(every, random_rotations, full_every, l_max, mode, on_violation,
                       average_degree, degree, flush_every):
        def positive(name, value, minimum):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        positive("every", every, 1)
        positive("random_rotations", random_rotations, 2)
        positive("full_every", full_every, 0)
        positive("l_max", l_max, 0)
        positive("average_degree", average_degree, 1)
        positive("flush_every", flush_every, 1)
        if degree is not None:
            positive("degree", degree, 2 * l_max)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if on_violation not in VIOLATION_ACTIONS:
            raise ValueError(f"on_violation must be one of {VIOLATION_ACTIONS}, got "
                             f"{on_violation!r}")

    @staticmethod
    def _check_thresholds(thresholds) -> Dict[str, float]:
        if thresholds is None:
            return {}
        if isinstance(thresholds, (int, float)):
            thresholds = {name: float(thresholds) for name in QUANTITIES}
        unknown = set(thresholds) - set(QUANTITIES)
        if unknown:
            raise ValueError(f"thresholds for unknown quantities {sorted(unknown)}; "
                             f"expected some of {sorted(QUANTITIES)}")
        for name, value in thresholds.items():
            if not value > 0:
                raise ValueError(f"threshold for {name} must be positive, got {value!r}")
        return {name: float(value) for name, value in thresholds.items()}

    def _load_readout(self, readout):
        """The purified readout, checked against the model and the monitored outputs."""
        if readout is None:
            raise ValueError("mode='purified' needs readout=<file written by symmon purify>")
        if not isinstance(self.orbit_model, MetatomicOrbitModel):
            raise ValueError("mode='purified' needs a metatomic model (its last-layer "
                             "features); the base calculator is "
                             f"{type(self.base).__name__}")
        from .purify import load_readout

        loaded = load_readout(readout, self.orbit_model)
        sources = {"non_conservative_forces": ("forces", self._nc_forces),
                   "non_conservative_stress": ("stress", self._nc_stress)}
        if loaded.target not in sources or not sources[loaded.target][1]:
            raise ValueError(
                f"the readout corrects {loaded.target!r}, which this monitor does not return: "
                "purified mode applies to direct (non-conservative) forces or stress; use "
                "MetatomicCalculator(..., non_conservative=True)")
        return loaded

    # ------------------------------------------------------------------ dynamics
    @property
    def step(self) -> int:
        """Step number the next calculation will be logged under."""
        return self._next_step

    def attach(self, dynamics) -> None:
        """Record MD steps and times of ``dynamics`` (an ASE ``MolecularDynamics``)."""
        self._dynamics = dynamics
        self._next_step = int(dynamics.nsteps)
        dynamics.attach(self._observe, interval=1)

    def _observe(self) -> None:
        """Dynamics observer: the last calculation was step ``nsteps``; commit it."""
        step = int(self._dynamics.nsteps)
        pending, self._pending = self._pending, None
        if pending is not None and np.array_equal(pending.positions,
                                                  self._dynamics.atoms.get_positions()):
            self._write(step, self._dynamics.get_time() / PS, pending)
        self._next_step = step + 1

    # ------------------------------------------------------------------ calculation
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise ValueError("stress was requested for a structure that is not periodic in "
                             f"all three directions (pbc={atoms.pbc.tolist()})")
        validate_atoms(atoms)
        quantities = ["energy", "forces"] + (["stress"] if periodic else [])
        base = self._base_results(atoms, quantities)

        step = self._next_step
        monitored = step % self.every == 0
        full = self.full_every > 0 and step % self.full_every == 0
        diagnostics = grid = orbit = None
        if monitored or full or self.mode == "average":
            grid, spectrum_grid = self._grids(step, full)
            orbit = self._evaluate(atoms, grid, quantities)
            diagnostics = self._diagnose(atoms, quantities, base, grid, spectrum_grid, orbit)
            self._handle_violations(diagnostics)
        returned = dict(base)
        if self.mode == "average":
            returned.update(self._averaged(atoms, quantities, grid, orbit))
        elif self.mode == "purified":
            identity = np.eye(3)[None]
            returned.update({name: value[0].numpy() for name, value in
                             self._evaluate(atoms, identity, quantities).items()
                             if name in self._purified_quantities()})
        self.results = self._ase_results(returned, diagnostics, len(atoms))
        self.last_diagnostics = diagnostics
        if diagnostics is not None and (monitored or full):
            if self._dynamics is None:
                self._write(step, float("nan"), diagnostics)
                self._next_step = step + 1
            else:
                self._pending = diagnostics
        elif self._dynamics is None:
            self._next_step = step + 1

    def _base_results(self, atoms, quantities) -> Dict[str, np.ndarray]:
        """The wrapped calculator's own predictions, untouched."""
        if hasattr(self.base, "get_properties"):  # one state check, one calculation
            values = self.base.get_properties(list(quantities), atoms)
        else:
            values = {name: self.base.get_property(name, atoms) for name in quantities}
        results = {name: np.array(values[name], dtype=np.float64) for name in quantities}
        if "stress" in results and results["stress"].shape == (6,):
            results["stress"] = voigt_to_matrix(results["stress"])
        return results

    def _orbit_names(self, quantities):
        names = {"energy": "energy",
                 "forces": "non_conservative_forces" if self._nc_forces else "forces",
                 "stress": "non_conservative_stress" if self._nc_stress else "stress"}
        return {q: names[q] for q in quantities}

    def _purified_quantities(self):
        return ("forces",) if self.readout.target == "non_conservative_forces" else ("stress",)

    def _evaluate(self, atoms, matrices, quantities) -> Dict[str, torch.Tensor]:
        """Returned quantities on the copies ``x Q^T`` (purified when in that mode)."""
        matrices = getattr(matrices, "matrices", matrices)
        names = self._orbit_names(quantities)
        requested = list(names.values())
        if self.mode == "purified":
            requested.append(self.readout.feature)
        raw = self.orbit_model.evaluate(atoms, matrices, requested)
        values = {q: raw[names[q]] for q in quantities}
        if self.mode == "purified":
            (name,) = self._purified_quantities()
            values[name] = torch.as_tensor(self.readout.correct(
                values[name].numpy(), raw[self.readout.feature].numpy()))
        if self._nc_forces and "forces" in values:  # as MetatomicCalculator returns them
            values["forces"] = values["forces"] - values["forces"].mean(dim=1, keepdim=True)
        return values

    def _grids(self, step: int, full: bool):
        """(grid for ε, grid for spectra or None) of this calculation."""
        if full:
            grid = quadrature_grid(self.degree)
            return grid, grid
        if self.mode == "average":
            return quadrature_grid(self.average_degree), None
        return random_grid(self.random_rotations, _step_seed(self.seed, step)), None

    def _diagnose(self, atoms, quantities, base, grid, spectrum_grid, orbit) -> StepDiagnostics:
        """ε (and spectra on full steps) of the returned quantities on ``grid``'s orbit."""
        out = StepDiagnostics(positions=atoms.get_positions(), cell=atoms.cell.array.copy())
        v = out.values
        for name in quantities:
            error = equivariance_error(orbit[name], grid, _KINDS[name])
            v[f"{name}_eps"], v[f"{name}_eps_err"] = error.eps, error.eps_stderr
            v[f"{name}_rel_eps"] = error.relative
            if name == "forces":
                v["forces_eps_per_atom"] = error.per_item
            if spectrum_grid is not None:
                spectrum = character_spectrum(orbit[name], spectrum_grid, self.l_max,
                                              sample_dims=1 if name == "forces" else 0)
                v[f"{name}_spectrum"] = spectrum.normalized
                v[f"{name}_residual"] = spectrum.residual_fraction
                v[f"{name}_contamination"] = spectrum.contamination(
                    get_representation(_KINDS[name]).targets)
            v[name] = base[name]
        v["full_orbit"] = int(spectrum_grid is not None)
        v["n_elements"] = len(grid)
        out.violations = [name for name, limit in self.thresholds.items()
                          if name in quantities and v[f"{name}_rel_eps"] > limit]
        v["violation"] = int(bool(out.violations))
        v.update(self._extra_values())
        return out

    def _extra_values(self) -> Dict[str, object]:
        """Hook for subclasses: more values to log with each monitored step."""
        return {}

    def _handle_violations(self, diagnostics: StepDiagnostics) -> None:
        if not diagnostics.violations:
            return
        self.n_violations += 1
        text = ", ".join(f"{name} relative eps {diagnostics.values[f'{name}_rel_eps']:.3g} > "
                         f"{self.thresholds[name]:.3g}" for name in diagnostics.violations)
        if self.on_violation == "raise":
            self._pending = None
            self._write(self._next_step, float("nan") if self._dynamics is None else
                        self._dynamics.get_time() / PS, diagnostics)
            self.close()
            raise SymmetryViolation(f"symmetry violation at step {self._next_step}: {text}")
        if self.on_violation == "average" and self.mode != "average":
            warnings.warn(f"symmetry violation at step {self._next_step} ({text}); "
                          "switching to O(3) averaging", SymmetryViolationWarning, stacklevel=3)
            self.mode = "average"
        elif self.on_violation == "warn":
            warnings.warn(f"symmetry violation at step {self._next_step}: {text}",
                          SymmetryViolationWarning, stacklevel=3)

    def _averaged(self, atoms, quantities, grid, orbit) -> Dict[str, np.ndarray]:
        """O(3)-averaged predictions over the averaging quadrature (reusing ``orbit``)."""
        from ..core.metrics import orbit_average

        average_grid = quadrature_grid(self.average_degree)
        if grid is not average_grid:
            orbit = self._evaluate(atoms, average_grid, quantities)
        return {name: orbit_average(orbit[name], average_grid, _KINDS[name]).numpy()
                for name in quantities}

    def _ase_results(self, returned, diagnostics, n_atoms) -> Dict[str, object]:
        results = {"energy": float(returned["energy"]), "free_energy": float(returned["energy"]),
                   "forces": np.asarray(returned["forces"]).reshape(n_atoms, 3)}
        if "stress" in returned:
            s = np.asarray(returned["stress"])
            results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        values = diagnostics.values if diagnostics is not None else {}
        for name in ("energy_eps", "forces_eps", "stress_eps", "energy_rel_eps",
                     "forces_rel_eps", "stress_rel_eps"):
            results[name] = float(values.get(name, np.nan))
        results["forces_eps_per_atom"] = np.asarray(values.get("forces_eps_per_atom",
                                                               np.full(n_atoms, np.nan)))
        return results

    # ------------------------------------------------------------------ log
    def _observable_specs(self, n_atoms: int, periodic: bool) -> Dict[str, ObservableSpec]:
        quantities = ["energy", "forces"] + (["stress"] if periodic else [])
        shapes = {"energy": (), "forces": (n_atoms, 3), "stress": (3, 3)}
        labels = irrep_labels(irreps_up_to(self.l_max))
        specs = {}
        for name in quantities:
            unit = QUANTITIES[name]
            specs[name] = ObservableSpec(shapes[name], unit, f"base model {name}")
            specs[f"{name}_eps"] = ObservableSpec((), unit, f"equivariance error of {name}")
            specs[f"{name}_eps_err"] = ObservableSpec(
                (), unit, f"standard error of {name}_eps (0 on exact quadratures)")
            specs[f"{name}_rel_eps"] = ObservableSpec(
                (), "1", f"{name}_eps / orbit RMS of {name}")
            specs[f"{name}_spectrum"] = ObservableSpec(
                (len(labels),), "1", f"normalised character spectrum of {name} "
                "(full-orbit steps)", labels=labels)
            specs[f"{name}_residual"] = ObservableSpec(
                (), "1", f"fraction of {name}'s power beyond l_max (full-orbit steps)")
            specs[f"{name}_contamination"] = ObservableSpec(
                (), "1", f"fraction of {name}'s power outside its target irreps")
        specs["forces_eps_per_atom"] = ObservableSpec((n_atoms,), "eV/angstrom",
                                                      "equivariance error of each atom's force")
        specs["full_orbit"] = ObservableSpec((), "1", "1 on exact-quadrature steps",
                                             dtype="int64")
        specs["n_elements"] = ObservableSpec((), "1", "O(3) elements evaluated", dtype="int64")
        specs["violation"] = ObservableSpec((), "1", "1 when a threshold was exceeded",
                                            dtype="int64")
        return specs

    def metadata(self) -> dict:
        model_path = getattr(self.orbit_model, "model_path", None) or \
            getattr(self.base, "parameters", {}).get("model")
        meta = {
            "symmon_version": __version__,
            "base_calculator": type(self.base).__name__,
            "model_file": model_path,
            "model_sha256": file_sha256(model_path),
            "mode": self.mode, "every": self.every, "full_every": self.full_every,
            "random_rotations": self.random_rotations, "seed": self.seed,
            "degree": self.degree, "l_max": self.l_max, "average_degree": self.average_degree,
            "full_grid": quadrature_grid(self.degree).describe(),
            "thresholds": self.thresholds, "on_violation": self.on_violation,
            "forces_source": "non_conservative" if self._nc_forces else "conservative",
            "stress_source": "non_conservative" if self._nc_stress else "conservative",
            "units": {"energy": "eV", "length": "angstrom", "time": "ps",
                      "forces": "eV/angstrom", "stress": "eV/angstrom^3"},
        }
        meta.update(self._extra_metadata)
        return meta

    def _write(self, step: int, time_ps: float, diagnostics: StepDiagnostics) -> None:
        if self.log_path is None:
            return
        if self._writer is None:
            atoms = self.atoms
            self._writer = LogWriter(
                self.log_path, self._observable_specs(len(atoms), bool(all(atoms.pbc))),
                species=atoms.numbers, pbc=tuple(bool(p) for p in atoms.pbc),
                metadata=self.metadata() if self.log_mode != "append" else None,
                mode=self.log_mode, flush_every=self.flush_every)
        self._writer.append_frame(step, time_ps, diagnostics.positions, diagnostics.cell)
        logged = {k: v for k, v in diagnostics.values.items() if k in self._writer.specs}
        self._writer.append_many(step, time_ps, logged)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the log (also done at interpreter exit)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _close_at_exit(reference) -> None:
    monitor = reference()
    if monitor is not None:
        monitor.close()
