"""Full-orbit diagnostics: symmon vs metatomic's SymmetrizedModel vs SymmetrizedCalculator.

All three evaluate the same model (bundled tiny PET, float32 by default) on the same
degree-8 O(3) quadrature (38 Lebedev x 9 in-plane angles x {R, -R} = 684 elements) of
the same Cu/Ni cells, with the same number of copies per forward call, and produce

* symmon: ``MetatomicOrbitModel.evaluate`` (one System + neighbour lists, transformed
  copies) + ``equivariance_error`` (energy, forces, stress) + ``character_spectrum``
  (l <= 4) of the three outputs;
* ``SymmetrizedModel.wrap(model, max_angular_momentum_character=4,
  max_angular_momentum_grid=8, batch_size=chunk)``: O(3) averages,
  ``o3::variance::`` and ``o3::character_projection::`` of the three outputs
  (neighbour list of the input system included in the timing);
* ``metatomic_ase.SymmetrizedCalculator`` (base ``non_conservative=True``,
  ``store_rotational_std=True``, its quadrature replaced by symmon's grid,
  ``batch_size=chunk``): averages and rotational std (eps only, no spectra; it also
  runs one plain base evaluation and rebuilds ``ase.Atoms`` + neighbour lists per copy).

Printed: median wall times (interleaved repeats), ratios to symmon and the agreement of
eps (and of the character spectra with SymmetrizedModel); eps^2 conversions as in
tests/test_crosscheck_symmetrized.py.

    python -m benchmarks.full_orbit [--quick] [--f64] [--chunk 64] [--repeats 2]
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from . import _common as C

NAMES = ("energy", "non_conservative_force", "non_conservative_stress")
SAMPLE_KINDS = {"energy": "system", "non_conservative_force": "atom",
                "non_conservative_stress": "system"}
SYMMON_NAMES = {"energy": "energy", "non_conservative_force": "non_conservative_forces",
                "non_conservative_stress": "non_conservative_stress"}
KINDS = {"energy": "scalar", "non_conservative_force": "vector",
         "non_conservative_stress": "tensor"}
L_MAX, DEGREE = 4, 8


def symmon_diagnostics(orbit_model, atoms, grid, subtract_net_force=False):
    import symmon

    raw = orbit_model.evaluate(atoms, grid.matrices, [SYMMON_NAMES[n] for n in NAMES])
    out = {}
    for name in NAMES:
        values = raw[SYMMON_NAMES[name]]
        if subtract_net_force and name == "non_conservative_force":
            values = values - values.mean(dim=1, keepdim=True)
        error = symmon.equivariance_error(values, grid, KINDS[name])
        spectrum = symmon.character_spectrum(
            values, grid, L_MAX, sample_dims=1 if name == "non_conservative_force" else 0)
        out[name] = (error, spectrum)
    return out


def make_symmetrized_model(model, chunk):
    from metatomic.torch.o3 import SymmetrizedModel

    return SymmetrizedModel.wrap(model, max_angular_momentum_character=L_MAX,
                                 max_angular_momentum_grid=DEGREE, batch_size=chunk)


def symmetrized_model_diagnostics(wrapped, nl_calculators, atoms, dtype, device):
    from metatomic.torch import ModelEvaluationOptions, ModelOutput, System

    system = System(
        types=torch.as_tensor(atoms.numbers, dtype=torch.int32, device=device),
        positions=torch.as_tensor(atoms.positions, dtype=dtype, device=device),
        cell=torch.as_tensor(atoms.cell.array, dtype=dtype, device=device),
        pbc=torch.as_tensor(atoms.pbc, device=device))
    for calculator in nl_calculators:
        system.add_neighbor_list(calculator.options, calculator.compute(system))
    requests = {}
    for name in NAMES:
        for prefix in ("", "o3::variance::", "o3::character_projection::"):
            requests[prefix + name] = ModelOutput(sample_kind=SAMPLE_KINDS[name])
    options = ModelEvaluationOptions(length_unit="angstrom", outputs=requests)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wrapped([system], options, check_consistency=False)


def make_symmetrized_calculator(path, grid, chunk, device):
    from metatomic_ase import MetatomicCalculator, SymmetrizedCalculator

    base = MetatomicCalculator(path, non_conservative=True, neighbor_skin=0.0,
                               device=device)
    calc = SymmetrizedCalculator(base, l_max=DEGREE, batch_size=chunk,
                                 store_rotational_std=True)
    # same grid as the others (its own rule for l_max=8 has 17 in-plane angles)
    calc.quadrature_rotations = grid.matrices
    calc.quadrature_weights = grid.weights
    return calc


def symmetrized_calculator_eps(calc, atoms):
    from ase.calculators.calculator import all_changes

    with torch.no_grad():
        calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
    r = calc.results
    return {"energy": float(r["energy_rot_std"]),
            "non_conservative_force": float(np.sqrt((r["forces_rot_std"] ** 2).sum())),
            "non_conservative_stress": float(np.sqrt((r["stress_rot_std"] ** 2).sum()))}


def metatomic_eps(results):
    """symmon's eps from o3::variance (see tests/test_crosscheck_symmetrized.py)."""
    def blocks(name):
        tensor = results["o3::variance::" + name]
        return {tuple(int(x) for x in key.values): block.values.detach().double().cpu()
                for key, block in tensor.items()}

    energy = float(blocks("energy")[(0, 1)][0, 0])
    forces = float(3 * blocks("non_conservative_force")[(1, 1)][:, 0].sum())
    stress = sum((2 * l + 1) * float(v[0, 0]) for (l, s), v in
                 blocks("non_conservative_stress").items())
    return {"energy": float(np.sqrt(energy)), "non_conservative_force": float(np.sqrt(forces)),
            "non_conservative_stress": float(np.sqrt(stress))}


def metatomic_power(results, name, irreps):
    tensor = results["o3::character_projection::" + name]
    power = []
    for irrep in irreps:
        total = 0.0
        for key, block in tensor.items():
            k = tuple(int(x) for x in key.values)
            if k[-2:] == (irrep.l, irrep.sigma):
                total += float(block.values.detach().double().sum())
        power.append(total)
    return np.array(power)


def relative_difference(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--f64", action="store_true",
                   help="float64 tiny PET (default float32, as in MD; float64 shows the "
                        "agreement to ~1e-15 but is ~2-3x slower)")
    p.add_argument("--chunk", type=int, default=64, help="copies per forward call (both)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    import symmon
    from symmon.adapters.metatomic import MetatomicOrbitModel
    from vesin.metatomic import neighbor_lists_for_model

    print(C.machine_info(args.device))
    path = C.model_path("tiny_pet.pt" if args.f64 else "tiny_pet_f32.pt")
    sizes = args.sizes or ([32] if args.quick else [32, 108])
    repeats = args.repeats or (1 if args.quick else 2)
    grid = symmon.quadrature_grid(DEGREE)
    print(f"model {path}; grid degree {DEGREE}: {len(grid)} elements; chunk {args.chunk}; "
          f"repeats {repeats} on the first size (+1 warm-up), 1 on the others unless "
          "--repeats; interleaved\n")

    orbit_model = MetatomicOrbitModel(path, device=args.device, chunk_size=args.chunk)
    wrapped = make_symmetrized_model(orbit_model.model, args.chunk).to(args.device)
    nl_calculators = neighbor_lists_for_model("angstrom", wrapped, skin=0.0)
    calc = make_symmetrized_calculator(path, grid, args.chunk, args.device)

    timing_rows, agreement_rows = [], []
    for index, n_atoms in enumerate(sizes):
        atoms = C.cell_with(n_atoms)
        results = {}
        variants = {
            "symmon": lambda: results.__setitem__(
                "symmon", symmon_diagnostics(orbit_model, atoms, grid)),
            "SymmetrizedModel": lambda: results.__setitem__(
                "model", symmetrized_model_diagnostics(wrapped, nl_calculators, atoms,
                                                       orbit_model.dtype, args.device)),
            "SymmetrizedCalculator": lambda: results.__setitem__(
                "calc", symmetrized_calculator_eps(calc, atoms)),
        }
        # larger cells: one repeat by default, to keep the run under ~3 min on 2 CPUs
        size_repeats = repeats if (index == 0 or args.repeats) else 1
        times = C.interleaved(variants, size_repeats, args.device, warmup=int(index == 0))
        ref = C.median(times["symmon"])
        for name, values in times.items():
            timing_rows.append([n_atoms, name, C.median(values), C.spread(values),
                                C.median(values) / ref])

        ours = results["symmon"]
        theirs = metatomic_eps(results["model"])
        # SymmetrizedCalculator removes the net force of every copy, as symmon's monitor
        ours_net = symmon_diagnostics(orbit_model, atoms, grid, subtract_net_force=True)
        for name in NAMES:
            error, spectrum = ours[name]
            power = spectrum.power.reshape(len(spectrum.irreps), -1).sum(axis=1)
            their_power = metatomic_power(results["model"], name, spectrum.irreps)
            spectrum_diff = float(np.abs(power - their_power).max() / power.sum())
            calc_eps = results["calc"][name]
            agreement_rows.append([
                n_atoms, name, error.eps, error.relative,
                relative_difference(error.eps, theirs[name]), spectrum_diff,
                relative_difference(ours_net[name][0].eps, calc_eps)])

    print(C.table(["atoms", "variant", "median s", "min-max s", "time / symmon"],
                  timing_rows))
    print()
    print(C.table(["atoms", "output", "symmon eps", "eps/rms",
                   "rel. diff eps vs SymmetrizedModel",
                   "max |c(l,s) diff| / total vs SymmetrizedModel",
                   "rel. diff eps vs SymmetrizedCalculator"], agreement_rows))
    speedups = [r for r in timing_rows if r[1] != "symmon"]
    worst = min(r[4] for r in speedups)
    print(f"\nsymmon speed-up: min {worst:.2f}x over the others "
          f"(target >= 1.5x: {'met' if worst >= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
