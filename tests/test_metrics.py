"""Equivariance error and character spectra on analytic functions with known answers."""

import numpy as np
import pytest
import torch

from symmon import (Irrep, character_spectrum, equivariance_error, orbit_metrics,
                    quadrature_grid, random_grid, randomized_quadrature_grid, transform_points)

import analytic

S0, P0, V1, A1, T2 = Irrep(0, 1), Irrep(0, -1), Irrep(1, 1), Irrep(1, -1), Irrep(2, 1)
GRID = quadrature_grid(8)


def spectrum_of(spectrum, irrep):
    return spectrum.normalized[list(spectrum.irreps).index(irrep)]


def power_of(spectrum, irrep):
    return spectrum.power.reshape(len(spectrum.irreps), -1).sum(1)[list(spectrum.irreps).index(irrep)]


def test_lennard_jones_energy_and_forces_are_exactly_symmetric():
    points = analytic.cluster(6)
    energy = orbit_metrics(analytic.lj_energy, points, "scalar", l_max=4)
    forces = orbit_metrics(analytic.lj_forces, points, "vector_per_point", l_max=4)
    assert energy.error.relative < 1e-13
    assert forces.error.relative < 1e-13
    assert forces.error.per_item.shape == (6,)
    assert spectrum_of(energy.spectrum, S0) == pytest.approx(1, abs=1e-12)
    assert spectrum_of(forces.spectrum, V1) == pytest.approx(1, abs=1e-12)
    assert forces.contamination == pytest.approx(0, abs=1e-12)
    assert forces.spectrum.power.shape == (10, 6)  # per atom


def test_triple_product_is_a_pure_pseudoscalar():
    points = analytic.chbrclf()
    result = orbit_metrics(analytic.triple_product_sum, points, "pseudoscalar", l_max=3)
    assert abs(float(analytic.triple_product_sum(torch.tensor(points)[None]))) > 0.1
    assert result.error.relative < 1e-13
    assert spectrum_of(result.spectrum, P0) == pytest.approx(1, abs=1e-12)
    # read as a scalar, it averages to zero over O(3): eps = |f|
    as_scalar = orbit_metrics(analytic.triple_product_sum, points, "scalar", l_max=None)
    assert as_scalar.error.relative == pytest.approx(1, abs=1e-12)


def test_energy_plus_lab_frame_dipole():
    points, charges, a = analytic.cluster(5, seed=2), np.array([1, -1, 0.5, 0.3, -0.8]), 0.37

    def energy(x):
        return analytic.lj_energy(x) + a * analytic.dipole(x, charges)[:, 2]

    result = orbit_metrics(energy, points, "scalar", l_max=4)
    mu = charges @ points
    e_lj = float(analytic.lj_energy(torch.tensor(points)[None]))
    assert result.error.eps_sq == pytest.approx(a ** 2 * mu @ mu / 3, rel=1e-10)
    assert power_of(result.spectrum, S0) == pytest.approx(e_lj ** 2, rel=1e-10)
    assert power_of(result.spectrum, V1) == pytest.approx(a ** 2 * mu @ mu / 3, rel=1e-10)
    assert result.spectrum.residual_fraction == pytest.approx(0, abs=1e-12)
    assert result.error.mean == pytest.approx(e_lj, rel=1e-12)


def test_spherical_harmonic_features_split_by_degree():
    bond = np.array([[0.0, 0.0, 0.0], [0.3, -0.8, 0.5]])

    def features(x):
        r = (x[:, 1] - x[:, 0]).numpy()
        return torch.tensor(np.concatenate([analytic.real_sh(l, r) for l in range(5)], -1))

    spectrum = orbit_metrics(features, bond, "feature", l_max=4).spectrum
    for l in range(5):
        assert spectrum_of(spectrum, Irrep(l, 1)) == pytest.approx((2 * l + 1) / 25, abs=1e-12)
        assert spectrum_of(spectrum, Irrep(l, -1)) == pytest.approx(0, abs=1e-12)


def test_symmetric_rank2_tensor_channels():
    points = analytic.cluster(5, seed=4)
    result = orbit_metrics(analytic.gyration_tensor, points, "symmetric_tensor", l_max=4)
    S = analytic.gyration_tensor(torch.tensor(points)[None])[0].numpy()
    trace = np.trace(S)
    assert result.error.relative < 1e-13
    assert power_of(result.spectrum, S0) == pytest.approx(trace ** 2 / 3, rel=1e-10)
    assert power_of(result.spectrum, T2) == pytest.approx(
        np.sum((S - trace / 3 * np.eye(3)) ** 2), rel=1e-10)
    assert result.contamination == pytest.approx(0, abs=1e-12)


def test_antisymmetric_tensor_part_is_a_pseudovector_channel():
    points = analytic.cluster(4, seed=6)

    def tensor(x):
        r = x - x[:, :1]
        return torch.einsum("bi,bj->bij", r[:, 1], r[:, 2])  # general, not symmetric

    result = orbit_metrics(tensor, points, "tensor", l_max=4)
    T = tensor(torch.tensor(points)[None])[0].numpy()
    antisym = (T - T.T) / 2
    assert result.error.relative < 1e-13
    assert power_of(result.spectrum, A1) == pytest.approx(np.sum(antisym ** 2), rel=1e-10)


def test_forces_plus_constant_lab_vector():
    points, lab = analytic.cluster(5, seed=3), np.array([0.1, -0.2, 0.05])

    def forces(x):
        return analytic.lj_forces(x) + torch.tensor(lab)

    result = orbit_metrics(forces, points, "vector_per_point", l_max=4)
    F = analytic.lj_forces(torch.tensor(points)[None])[0].numpy()
    assert result.error.per_item == pytest.approx(np.full(5, np.linalg.norm(lab)), rel=1e-10)
    assert result.error.eps_sq == pytest.approx(5 * lab @ lab, rel=1e-10)
    assert power_of(result.spectrum, S0) == pytest.approx(5 * lab @ lab, rel=1e-10)
    assert power_of(result.spectrum, V1) == pytest.approx(np.sum(F ** 2), rel=1e-10)
    assert result.error.mean == pytest.approx(F, abs=1e-10)


def test_pseudovector_read_as_vector():
    points = analytic.cluster(4, seed=8)

    def angular(x):
        return torch.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0], dim=-1)

    L = angular(torch.tensor(points)[None])[0].numpy()
    pseudo = orbit_metrics(angular, points, "pseudovector", l_max=2)
    vector = orbit_metrics(angular, points, "vector", l_max=None)
    assert pseudo.error.relative < 1e-13
    assert spectrum_of(pseudo.spectrum, A1) == pytest.approx(1, abs=1e-12)
    assert vector.error.eps_sq == pytest.approx(L @ L, rel=1e-10)


def band_limited_broken(x):
    """Neither invariant nor covariant; a degree-3 polynomial of Q (band-limited l <= 3)."""
    r = x - x[:, :1]
    return torch.stack([(r[..., 2] ** 3).sum(-1) + (r[..., 0] * r[..., 1]).sum(-1),
                        (r[..., 0] * r[..., 2]).sum(-1) - r[:, 1, 1]], -1)


def test_results_do_not_depend_on_initial_orientation():
    points = analytic.cluster(5, seed=9)
    reference = orbit_metrics(band_limited_broken, points, "feature", l_max=3)
    forces_ref = orbit_metrics(lambda x: analytic.lj_forces(x) + 0.1, points, "vector", l_max=3)
    for h in (random_grid(1, seed=4).rotations[0], -random_grid(1, seed=5).rotations[0]):
        moved = points @ h.T
        spectrum = orbit_metrics(band_limited_broken, moved, "feature", l_max=3).spectrum
        assert spectrum.power == pytest.approx(reference.spectrum.power, rel=1e-9, abs=1e-12)
        forces = orbit_metrics(lambda x: analytic.lj_forces(x) + 0.1, moved, "vector", l_max=3)
        assert forces.error.eps == pytest.approx(forces_ref.error.eps, rel=1e-10)
        assert forces.spectrum.normalized == pytest.approx(forces_ref.spectrum.normalized,
                                                            abs=1e-10)


def test_spectrum_sums_to_mean_square_norm():
    points = analytic.cluster(5, seed=10)
    result = orbit_metrics(band_limited_broken, points, "feature", l_max=3, keep_values=True)
    values = result.orbit_values
    mean_square = np.einsum("k,k->", GRID.weights if len(values) == len(GRID) else
                            result.grid.weights, (values ** 2).sum(-1))
    assert result.spectrum.total.sum() == pytest.approx(mean_square, rel=1e-12)
    assert result.spectrum.power.sum() == pytest.approx(mean_square, rel=1e-10)
    # not band-limited: the residual beyond l_max is reported and non-negative
    lj = orbit_metrics(lambda x: analytic.lj_forces(x) + 0.3 * x, points, "vector",
                       l_max=1, degree=2)
    assert lj.spectrum.residual_fraction >= -1e-12
    assert lj.spectrum.residual_fraction + lj.spectrum.normalized.sum() == pytest.approx(1)


def test_quadrature_and_monte_carlo_agree_within_error_bars():
    points, charges, a = analytic.cluster(5, seed=2), np.array([1, -1, 0.5, 0.3, -0.8]), 0.37

    def energy(x):
        return analytic.lj_energy(x) + a * analytic.dipole(x, charges)[:, 2] + 0.2 * \
            band_limited_broken(x)[:, 0]

    exact = orbit_metrics(energy, points, "scalar", l_max=3)
    mc = orbit_metrics(energy, points, "scalar", l_max=3, grid=random_grid(400, seed=1))
    assert mc.error.estimator == "unbiased_pairs" and mc.error.eps_stderr > 0
    assert abs(mc.error.eps - exact.error.eps) < 4 * mc.error.eps_stderr
    assert mc.error.eps_stderr < 0.2 * exact.error.eps
    power_exact = exact.spectrum.power.reshape(8)
    power_mc, err = mc.spectrum.power.reshape(8), mc.spectrum.power_stderr
    assert np.all(np.abs(power_mc - power_exact) < 4 * err + 1e-9)


def test_monte_carlo_error_bars_are_calibrated():
    points = analytic.cluster(4, seed=12)
    f = lambda x: analytic.dipole(x, [1, -0.5, 0.2, 0.7])[:, 2] + 0.3 * band_limited_broken(x)[:, 1]
    exact = orbit_metrics(f, points, "scalar", l_max=None).error.eps
    z = []
    for seed in range(40):
        mc = orbit_metrics(f, points, "scalar", l_max=None, grid=random_grid(30, seed=seed)).error
        z.append((mc.eps - exact) / mc.eps_stderr)
    assert abs(np.mean(z)) < 0.6  # unbiased to within the spread of 40 draws
    assert 0.6 < np.std(z) < 1.6


def test_randomized_quadrature_gives_the_same_exact_answer():
    points = analytic.cluster(5, seed=13)
    a = orbit_metrics(band_limited_broken, points, "feature", l_max=3, grid=quadrature_grid(6))
    b = orbit_metrics(band_limited_broken, points, "feature", l_max=3,
                      grid=randomized_quadrature_grid(6, seed=3))
    assert b.spectrum.power == pytest.approx(a.spectrum.power, rel=1e-9, abs=1e-12)


def test_large_mean_does_not_cancel():
    points = analytic.cluster(4, seed=14)
    mu = np.array([1, -1, 0.4, 0.2]) @ points
    f = lambda x: 1e7 + 1e-3 * analytic.dipole(x, [1, -1, 0.4, 0.2])[:, 2]
    result = orbit_metrics(f, points, "scalar", l_max=None)
    assert result.error.eps_sq == pytest.approx(1e-6 * mu @ mu / 3, rel=1e-6)


def test_per_component_and_relative():
    points = analytic.cluster(5, seed=15)
    result = orbit_metrics(lambda x: analytic.lj_forces(x) + torch.tensor([0.0, 0.0, 0.2]),
                           points, "vector", l_max=None)
    assert result.error.per_component.shape == (5, 3)
    assert np.sum(result.error.per_component ** 2) == pytest.approx(result.error.eps_sq)
    assert result.error.relative == pytest.approx(result.error.eps / result.error.rms)


def test_bad_inputs_are_refused_clearly():
    values = np.zeros((len(GRID), 3))
    with pytest.raises(ValueError, match="at least 2\\*l_max"):
        character_spectrum(values, quadrature_grid(6), l_max=4)
    with pytest.raises(ValueError, match="leading axis of length"):
        equivariance_error(values[:-1], GRID, "vector")
    with pytest.raises(ValueError, match="must end with shape"):
        equivariance_error(np.zeros((len(GRID), 2)), GRID, "vector")
    with pytest.raises(ValueError, match="unknown output kind"):
        equivariance_error(values, GRID, "spinor")
    with pytest.raises(ValueError, match="no transformation law"):
        equivariance_error(values, GRID, "feature")
    bad = values.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        equivariance_error(bad, GRID, "vector")
    with pytest.raises(ValueError, match="shape \\(N, 3\\)"):
        orbit_metrics(lambda x: x, np.zeros(3), "vector")


def test_transform_points_convention():
    points = np.random.default_rng(0).normal(size=(3, 3))
    moved = transform_points(torch.tensor(points), GRID).numpy()
    assert np.allclose(moved[5], points @ GRID.matrices[5].T)
    assert np.allclose(moved[len(GRID) // 2 + 5], -moved[5])
