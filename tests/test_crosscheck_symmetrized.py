"""Cross-check symmon's orbit engine against ``metatomic.torch.o3.SymmetrizedModel``.

Both sides evaluate the analytic model of :mod:`analytic_models` (with lab-frame,
symmetry-breaking terms) on the O(3) orbit of the same structure sampled on the same
quadrature, and must agree to 1e-10 in float64.

symmon evaluates the orbit itself: one ``System`` per grid element ``Q`` (positions
and cell ``@ Q.T``, neighbour lists recomputed from scratch with vesin), outputs
stacked in grid order. ``SymmetrizedModel`` transforms the input system itself
(carrying the neighbour list along) and accumulates its moments batch by batch.

Conventions (``K`` grid elements ``Q_k`` with weights ``w_k`` summing to one, ``P =
K/2`` proper rotations ``R_k`` with SO(3) weights ``2 w_k``, ``y_k`` the output brought
back to the input frame):

* Grid. ``symmon.quadrature_grid(D)`` and ``SymmetrizedModel(max_angular_momentum_grid
  = D)`` build the same Lebedev x uniform-gamma ZYZ product rule (Lebedev order = the
  smallest >= D, ``D + 1`` in-plane angles; symmon additionally skips the SciPy orders
  with negative weights, 13/25/27, which does not matter for ``D = 8``), in the same
  order; the improper half is ``-R_k`` on both sides.

* Variance. metatomic first re-expresses standard Cartesian outputs in orthonormal
  spherical blocks ``(o3_lambda, o3_sigma)`` (vector: ``(y, z, x)``; rank-2 tensor:
  ``l=0`` trace/sqrt3, ``l=1`` antisymmetric part as a ``sigma=-1`` block, ``l=2``),
  then returns per sample and property the weighted variance *summed over the block's
  components and divided by their number* ``2l+1``. ``feature`` outputs are neither
  decomposed nor rotated back. So, with symmon's ``eps^2`` (variance summed over all
  components)::

      energy:   eps^2                      = var[(0,+1)]
      forces:   eps_i^2 (per_item, atom i) = 3 var_i[(1,+1)]
      stress:   eps^2                      = var[(0,+1)] + 3 var[(1,-1)] + 5 var[(2,+1)]
      feature:  per_component^2 (atom, property) = var (kind "scalar": no back-transform)

* Character projections. metatomic's ``o3::character_projection::<name>`` block
  ``(…, chi_lambda=l, chi_sigma=s)`` holds, per sample and *per component* of the
  spherical block (and per property),
  ``(2l+1)/4 || C_+ + s (-1)^l C_- ||_F^2`` with
  ``C_pm = sum_k (2 w_k) D^l(R_k)^T f(pm R_k x)``; symmon's unnormalised power is
  ``(2l+1) || (c_+ + p c_-)/2 ||_F^2`` with ``c_pm = sum_k (2 w_k) D^l(R_k) f(pm R_k x)``
  and ``p = s (-1)^l``: the same number, since ``||sum_k a_k D_k^T||_F =
  ||(sum_k a_k D_k)^T||_F``. symmon sums over the components, so
  ``power[(l, s)] = sum over decomposition blocks and their o3_mu`` of metatomic's
  values (the decomposition is orthonormal); resolved per component
  (``sample_dims`` covering the component axis) they agree entry by entry after
  undoing the ``(x, y, z) -> (y, z, x)`` roll.

* Averages. The plain output name returns the O(3) average = symmon's
  ``orbit_average`` (``EquivarianceError.mean``); features are averaged as they are.
"""

import numpy as np
import pytest
import torch
from metatomic.torch import ModelEvaluationOptions, ModelOutput
from metatomic.torch.o3 import SymmetrizedModel

import symmon
from analytic_models import (add_neighbor_lists, evaluate_orbit, make_analytic_model,
                             system_from_arrays)

L_MAX = 4
DEGREE = 8
BREAK = 0.1
RTOL = 1e-10
#: absolute floor, relative to the orbit mean square of the output being compared
ATOL_SCALE = 1e-12

SAMPLE_KINDS = {
    "energy": "system",
    "non_conservative_force": "atom",
    "non_conservative_stress": "system",
    "feature": "atom",
}
NAMES = tuple(SAMPLE_KINDS)


def periodic_structure():
    import ase.build

    atoms = ase.build.bulk("NaCl", "rocksalt", a=4.1, cubic=True)  # 8 atoms
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.05, 0.0], [0.0, 0.97, 0.08],
                                                [0.03, 0.0, 1.05]]), scale_atoms=True)
    atoms.rattle(0.15, seed=3)
    return atoms


def molecule_structure():
    import ase.build

    atoms = ase.build.molecule("CH3CH2OH")  # 9 atoms
    atoms.rattle(0.05, seed=5)
    atoms.translate([0.7, -0.4, 1.1])  # off the rotation centre: lab dipole terms
    return atoms


STRUCTURES = {
    # (builder, full neighbour list?)
    "periodic": (periodic_structure, False),
    "molecule": (molecule_structure, True),
}


def to_system(atoms):
    pbc = bool(atoms.pbc.any())
    return system_from_arrays(atoms.positions, atoms.numbers,
                              atoms.cell.array if pbc else None, atoms.pbc if pbc else None)


def _block_values(tensor):
    """``{key tuple: values}`` of a metatomic TensorMap (numpy float64)."""
    return {tuple(int(x) for x in key.values): block.values.detach().numpy()
            for key, block in tensor.items()}


_CACHE = {}


@pytest.fixture(scope="module", params=list(STRUCTURES))
def crosscheck(request):
    """Orbit values (symmon side) and SymmetrizedModel outputs for one structure."""
    name = request.param
    if name in _CACHE:
        return _CACHE[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading only costs time here
    try:
        builder, full_list = STRUCTURES[name]
        atoms = builder()
        model = make_analytic_model(BREAK, cutoff=3.5, full_list=full_list)
        grid = symmon.quadrature_grid(DEGREE)

        # symmon side: explicit orbit, fresh neighbour lists for every element
        system = to_system(atoms)
        orbit = {k: v.detach().to(torch.float64)
                 for k, v in evaluate_orbit(model, system, grid.matrices, NAMES,
                                            sample_kinds=SAMPLE_KINDS).items()}

        # metatomic side
        wrapped = SymmetrizedModel.wrap(model, max_angular_momentum_character=L_MAX,
                                        max_angular_momentum_grid=DEGREE, batch_size=128)
        system = to_system(atoms)
        add_neighbor_lists(wrapped, [system])
        requests = {}
        for output in NAMES:
            for prefix in ("", "o3::variance::", "o3::character_projection::"):
                requests[prefix + output] = ModelOutput(sample_kind=SAMPLE_KINDS[output])
        options = ModelEvaluationOptions(length_unit="angstrom", outputs=requests)
        results = wrapped([system], options, check_consistency=False)
        theirs = {key: _block_values(value) for key, value in results.items()}

        symmetrized = wrapped.module
        their_rotations = torch.cat([b.matrices for b in symmetrized._batches]).numpy()
        their_weights = symmetrized._rotation_weights.numpy()
        data = dict(name=name, grid=grid, orbit=orbit, theirs=theirs,
                    n_atoms=len(atoms), their_rotations=their_rotations,
                    their_weights=their_weights, inversion_flags=[
                        bool(b.improper_mask.any()) for b in symmetrized._batches])
    finally:
        torch.set_num_threads(threads)
    _CACHE[name] = data
    return data


def assert_close(ours, theirs, scale, what):
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"{what}: shapes {ours.shape} vs {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL_SCALE * scale,
                               err_msg=what)


def mean_square(values, grid):
    """Orbit mean square ``<||f||^2>`` of all entries (the scale of round-off)."""
    weights = torch.as_tensor(grid.weights)
    flat = values.reshape(values.shape[0], -1)
    return float(torch.tensordot(weights, flat * flat, dims=1).sum())


# --------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------
def test_grids_are_the_same(crosscheck):
    grid = crosscheck["grid"]
    theirs = crosscheck["their_rotations"]
    weights = crosscheck["their_weights"]
    assert theirs.shape == grid.rotations.shape == (342, 3, 3)  # 38 Lebedev x 9 gamma
    # same set: every one of our rotations matches exactly one of theirs ...
    distances = np.abs(grid.rotations[:, None] - theirs[None]).max(axis=(2, 3))
    match = distances.argmin(axis=1)
    assert np.all(distances[np.arange(len(match)), match] < 1e-13)
    assert sorted(match) == list(range(len(theirs)))
    np.testing.assert_allclose(grid.rotation_weights, weights[match], rtol=1e-13, atol=0)
    # ... and, as it happens, in the same order
    assert np.array_equal(match, np.arange(len(theirs)))
    assert abs(weights.sum() - 1) < 1e-13
    # their quadrature holds proper rotations only; the improper coset is -R_k
    # (add_inversion), as in symmon's paired layout
    assert np.all(np.linalg.det(theirs) > 0) and not any(crosscheck["inversion_flags"])
    np.testing.assert_array_equal(grid.matrices[342:], -grid.matrices[:342])


# --------------------------------------------------------------------------------------
# equivariance error / variance
# --------------------------------------------------------------------------------------
def test_energy_variance(crosscheck):
    grid, orbit, theirs = crosscheck["grid"], crosscheck["orbit"], crosscheck["theirs"]
    error = symmon.equivariance_error(orbit["energy"], grid, "scalar")
    variance = theirs["o3::variance::energy"]
    assert list(variance) == [(0, 1)]
    assert error.eps_sq > 1e-3  # the lab-frame terms break the invariance
    assert_close(error.eps_sq, variance[(0, 1)][0, 0], mean_square(orbit["energy"], grid),
                 "energy eps^2 vs variance")


def test_force_variance(crosscheck):
    grid, orbit, theirs = crosscheck["grid"], crosscheck["orbit"], crosscheck["theirs"]
    forces = orbit["non_conservative_force"]
    error = symmon.equivariance_error(forces, grid, "vector")
    variance = theirs["o3::variance::non_conservative_force"]
    assert list(variance) == [(1, 1)]
    per_atom = variance[(1, 1)][:, 0]  # samples (system, atom) in atom order
    assert per_atom.shape == (crosscheck["n_atoms"],)
    assert error.eps_sq > 1e-3
    scale = mean_square(forces, grid)
    # metatomic averages over the 3 components, symmon sums
    assert_close(error.per_item ** 2, 3 * per_atom, scale, "force eps_i^2 vs 3 var_i")
    assert_close(error.eps_sq, 3 * per_atom.sum(), scale, "force eps^2 vs 3 sum_i var_i")


def test_stress_variance(crosscheck):
    grid, orbit, theirs = crosscheck["grid"], crosscheck["orbit"], crosscheck["theirs"]
    stress = orbit["non_conservative_stress"]
    error = symmon.equivariance_error(stress, grid, "tensor")
    variance = theirs["o3::variance::non_conservative_stress"]
    assert sorted(variance) == [(0, 1), (1, -1), (2, 1)]
    assert error.eps_sq > 1e-3
    # the lab-frame [e_x]_x term makes the antisymmetric (1,-1) block vary too
    assert variance[(1, -1)][0, 0] > 1e-4 and variance[(2, 1)][0, 0] > 1e-4
    converted = sum((2 * l + 1) * variance[(l, s)][0, 0] for l, s in variance)
    assert_close(error.eps_sq, converted, mean_square(stress, grid),
                 "stress eps^2 vs sum_l (2l+1) var_l")
    # only the constant lab term A = a (e_z e_z^T + [e_x]_x) breaks equivariance:
    # eps^2 = ||A||^2 - ||<Q^T A Q>||^2 = 3 a^2 - (tr A)^2 / 3 = 8/3 a^2
    assert abs(error.eps_sq - 8 / 3 * BREAK ** 2) < 1e-12


def test_feature_variance(crosscheck):
    grid, orbit, theirs = crosscheck["grid"], crosscheck["orbit"], crosscheck["theirs"]
    features = orbit["feature"]
    # features have no transformation law: metatomic measures their deviation from
    # invariance, which is symmon's error for the identity ("scalar") law
    error = symmon.equivariance_error(features, grid, "scalar")
    variance = theirs["o3::variance::feature"]
    assert list(variance) == [(0,)]  # placeholder key: not decomposed
    per_entry = variance[(0,)]
    assert per_entry.shape == (crosscheck["n_atoms"], features.shape[-1])
    scale = mean_square(features, grid) / per_entry.size
    assert_close(error.per_component ** 2, per_entry, scale, "feature variance")
    assert per_entry[:, 1:].min() > 1e-12  # every non-invariant feature does vary
    assert per_entry[:, 0].max() < 1e-20  # the coordination number does not


# --------------------------------------------------------------------------------------
# character projections
# --------------------------------------------------------------------------------------
def their_power(theirs, name, irrep):
    """metatomic's projection on ``irrep``, summed over decomposition blocks and o3_mu."""
    blocks = theirs["o3::character_projection::" + name]
    total = 0.0
    found = 0
    for key, values in blocks.items():
        if key[-2:] == (irrep.l, irrep.sigma):
            found += 1
            # (samples, [o3_mu,] properties) -> (samples, properties)
            total = total + (values.sum(axis=1) if values.ndim == 3 else values)
    assert found >= 1, f"no ({irrep.l}, {irrep.sigma}) block for {name}"
    return total


def test_projection_keys_and_layout(crosscheck):
    theirs = crosscheck["theirs"]
    keys = theirs["o3::character_projection::non_conservative_stress"]
    names = [(l, s, cl, cs) for l, s in [(0, 1), (1, -1), (2, 1)]
             for cl in range(L_MAX + 1) for cs in (1, -1)]
    assert sorted(keys) == sorted(names)
    for (l, s, _, _), values in keys.items():
        assert values.shape == (1, 2 * l + 1, 1)  # per o3_mu component, not summed
    features = theirs["o3::character_projection::feature"]
    assert sorted(features) == sorted((l, s) for l in range(L_MAX + 1) for s in (1, -1))


@pytest.mark.parametrize("name", NAMES)
def test_character_projection_totals(crosscheck, name):
    grid, orbit, theirs = crosscheck["grid"], crosscheck["orbit"], crosscheck["theirs"]
    values = orbit[name]
    # per-system outputs: no sample axis; per-atom ones: atoms (and, for features,
    # properties) are samples, components are summed
    sample_dims = {"energy": 0, "non_conservative_force": 1,
                   "non_conservative_stress": 0, "feature": 2}[name]
    spectrum = symmon.character_spectrum(values, grid, L_MAX, sample_dims=sample_dims)
    scale = float(spectrum.total.max())
    reference = np.stack([np.asarray(their_power(theirs, name, irrep), dtype=np.float64)
                          .reshape(spectrum.power.shape[1:]) for irrep in spectrum.irreps])
    assert_close(spectrum.power, reference, scale, f"{name} character projections")
    # non-trivial: several irreps populated, and the quadrature resolves everything
    # (these outputs are band-limited to l <= 4 ... up to the smooth cutoff)
    populated = reference.reshape(len(spectrum.irreps), -1).max(axis=1) > 1e-6 * scale
    assert populated.sum() >= 2


def test_force_projection_per_component(crosscheck):
    grid, orbit, theirs = crosscheck["grid"], crosscheck["orbit"], crosscheck["theirs"]
    forces = orbit["non_conservative_force"]
    spectrum = symmon.character_spectrum(forces, grid, L_MAX, sample_dims=2)
    blocks = theirs["o3::character_projection::non_conservative_force"]
    scale = float(spectrum.total.max())
    for i, irrep in enumerate(spectrum.irreps):
        spherical = blocks[(1, 1, irrep.l, irrep.sigma)][:, :, 0]  # (atom, mu=y,z,x)
        cartesian = np.roll(spherical, 1, axis=1)  # back to (x, y, z)
        assert_close(spectrum.power[i], cartesian, scale, f"forces {irrep} per component")
    # the pseudovector lab term M_0 x M_1 shows up as (1,-1), e_z as (0,+1)
    assert spectrum.fraction([symmon.Irrep(1, -1)]) > 1e-8
    assert spectrum.fraction([symmon.Irrep(0, 1)]) > 1e-8


def _spherical_blocks(tensors):
    """Orthonormal (l=0, l=1 antisymmetric, l=2) decomposition of ``(..., 3, 3)``."""
    t = tensors
    s2, s3, s6 = np.sqrt(2.0), np.sqrt(3.0), np.sqrt(6.0)
    l0 = (t[..., 0, 0] + t[..., 1, 1] + t[..., 2, 2])[..., None] / s3
    l1 = torch.stack([(t[..., 0, 2] - t[..., 2, 0]) / s2, (t[..., 1, 0] - t[..., 0, 1]) / s2,
                      (t[..., 2, 1] - t[..., 1, 2]) / s2], dim=-1)
    l2 = torch.stack([(t[..., 0, 1] + t[..., 1, 0]) / s2, (t[..., 1, 2] + t[..., 2, 1]) / s2,
                      (2 * t[..., 2, 2] - t[..., 0, 0] - t[..., 1, 1]) / s6,
                      (t[..., 0, 2] + t[..., 2, 0]) / s2, (t[..., 0, 0] - t[..., 1, 1]) / s2],
                     dim=-1)
    return {(0, 1): l0, (1, -1): l1, (2, 1): l2}


def test_stress_projection_per_block(crosscheck):
    grid, orbit, theirs = crosscheck["grid"], crosscheck["orbit"], crosscheck["theirs"]
    stress = orbit["non_conservative_stress"]
    total = symmon.character_spectrum(stress, grid, L_MAX)
    blocks = theirs["o3::character_projection::non_conservative_stress"]
    scale = float(total.total)
    for block_key, values in _spherical_blocks(stress).items():
        # symmon is linear-orthogonal invariant: the spectrum of each block's o3_mu
        # components (as samples) is metatomic's per-block, per-mu projection
        spectrum = symmon.character_spectrum(values, grid, L_MAX, sample_dims=1)
        for i, irrep in enumerate(spectrum.irreps):
            reference = blocks[block_key + (irrep.l, irrep.sigma)][0, :, 0]
            assert_close(spectrum.power[i], reference, scale,
                         f"stress block {block_key} {irrep}")
    # the equivariant antisymmetric part [P]_x lives in the (1,-1) block, in (1,-1)
    assert blocks[(1, -1, 1, -1)].sum() > 1e-6 * scale


# --------------------------------------------------------------------------------------
# averages
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kind", [("energy", "scalar"),
                                       ("non_conservative_force", "vector"),
                                       ("non_conservative_stress", "tensor"),
                                       ("feature", "scalar")])
def test_orbit_average(crosscheck, name, kind):
    grid, orbit, theirs = crosscheck["grid"], crosscheck["orbit"], crosscheck["theirs"]
    ours = symmon.orbit_average(orbit[name], grid, kind).numpy()
    reference = theirs[name][(0,)]
    reference = reference[..., 0] if name != "feature" else reference
    if name in ("energy", "non_conservative_stress"):
        reference = reference[0]
    scale = np.sqrt(mean_square(orbit[name], grid))
    np.testing.assert_allclose(ours, reference, rtol=RTOL, atol=1e-12 * scale,
                               err_msg=f"{name} O(3) average")


# --------------------------------------------------------------------------------------
# control: without the lab-frame terms both sides see exact symmetry
# --------------------------------------------------------------------------------------
def test_symmetric_model_has_zero_variance_on_both_sides():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        atoms = molecule_structure()
        model = make_analytic_model(0.0, cutoff=3.5, full_list=True)
        grid = symmon.quadrature_grid(DEGREE)
        names = ("energy", "non_conservative_force", "non_conservative_stress")
        kinds = {"energy": "scalar", "non_conservative_force": "vector",
                 "non_conservative_stress": "tensor"}
        orbit = evaluate_orbit(model, to_system(atoms), grid.matrices, names,
                               sample_kinds=SAMPLE_KINDS)
        wrapped = SymmetrizedModel.wrap(model, max_angular_momentum_grid=DEGREE,
                                        batch_size=128)
        system = to_system(atoms)
        add_neighbor_lists(wrapped, [system])
        requests = {"o3::variance::" + n: ModelOutput(sample_kind=SAMPLE_KINDS[n])
                    for n in names}
        results = wrapped([system], ModelEvaluationOptions(length_unit="angstrom",
                                                           outputs=requests), False)
    finally:
        torch.set_num_threads(threads)
    for name in names:
        values = orbit[name].to(torch.float64)
        scale = mean_square(values, grid)
        assert scale > 1e-3
        ours = symmon.equivariance_error(values, grid, kinds[name]).eps_sq
        theirs = sum(float(b.values.sum()) for b in results["o3::variance::" + name])
        assert 0 <= ours < 1e-24 * scale, name
        assert 0 <= theirs < 1e-24 * scale, name
