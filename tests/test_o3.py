"""Grids, irreps and Wigner-D conventions."""

import numpy as np
import pytest

from symmon.core import (Irrep, irreps_up_to, make_grid, positive_lebedev_order,
                       quadrature_grid, random_grid, randomized_quadrature_grid)

from analytic import real_sh


def test_lebedev_orders_with_negative_weights_are_skipped():
    from scipy.integrate import lebedev_rule

    assert lebedev_rule(13)[1].min() < 0  # the reason for skipping
    assert positive_lebedev_order(12) == 15
    assert positive_lebedev_order(24) == 29
    for degree in (2, 8, 12, 24):
        grid = quadrature_grid(degree)
        assert grid.weights.min() > 0
        assert np.isclose(grid.weights.sum(), 1.0)


@pytest.mark.parametrize("degree", [4, 8, 9])
def test_quadrature_integrates_wigner_products_exactly(degree):
    grid = quadrature_grid(degree)
    w = grid.rotation_weights
    for l in range(degree // 2 + 1):
        for lp in range(degree // 2 + 1):
            D, Dp = grid.wigner(l).numpy(), grid.wigner(lp).numpy()
            gram = np.einsum("k,kmn,kab->mnab", w, D, Dp)
            expected = 0.0 if l != lp else np.einsum("ma,nb->mnab", np.eye(2 * l + 1),
                                                     np.eye(2 * l + 1)) / (2 * l + 1)
            assert np.allclose(gram, expected, atol=1e-12), (l, lp)


def test_low_degree_is_not_exact_for_higher_products():
    grid = quadrature_grid(2)
    D = grid.wigner(2).numpy()
    gram = np.einsum("k,kmn,kab->mnab", grid.rotation_weights, D, D)
    expected = np.einsum("ma,nb->mnab", np.eye(5), np.eye(5)) / 5
    assert not np.allclose(gram, expected, atol=1e-6)


def test_wigner_convention_rotates_real_spherical_harmonics():
    grid = random_grid(6, seed=3)
    r = np.random.default_rng(0).normal(size=(5, 3))
    for l in range(5):
        D = grid.wigner(l).numpy()
        rotated = real_sh(l, r @ grid.rotations.transpose(0, 2, 1))
        assert np.allclose(rotated, np.einsum("kmn,in->kim", D, real_sh(l, r)), atol=1e-12)


def test_random_grid_is_paired_seeded_and_haar():
    grid = random_grid(2000, seed=5)
    assert len(grid) == 4000
    assert np.allclose(grid.matrices[2000:], -grid.matrices[:2000])
    assert np.allclose(grid.determinants, np.r_[np.ones(2000), -np.ones(2000)])
    assert np.array_equal(random_grid(10, seed=1).rotations, random_grid(10, seed=1).rotations)
    assert not np.allclose(random_grid(10, seed=1).rotations, random_grid(10, seed=2).rotations)
    # Haar: E[R] = 0 and E[R_ij^2] = 1/3
    assert np.abs(grid.rotations.mean(0)).max() < 0.05
    assert np.abs((grid.rotations ** 2).mean(0) - 1 / 3).max() < 0.03


def test_randomized_quadrature_stays_exact():
    grid = randomized_quadrature_grid(6, seed=11)
    assert not np.allclose(grid.rotations, quadrature_grid(6).rotations)
    D = grid.wigner(3).numpy()
    gram = np.einsum("k,kmn,kab->mnab", grid.rotation_weights, D, D)
    assert np.allclose(gram, np.einsum("ma,nb->mnab", np.eye(7), np.eye(7)) / 7, atol=1e-12)


def test_make_grid_and_errors():
    assert make_grid(4) is quadrature_grid(4)
    assert make_grid({"kind": "random", "n_rotations": 3, "seed": 1}).kind == "random"
    with pytest.raises(ValueError, match="unknown grid kind"):
        make_grid({"kind": "sobol"})
    with pytest.raises(ValueError, match="non-negative"):
        quadrature_grid(-1)
    with pytest.raises(ValueError, match="exceeds the largest Lebedev order"):
        quadrature_grid(200)
    with pytest.raises(ValueError, match="positive integer"):
        random_grid(0)


def test_irreps():
    assert [str(i) for i in irreps_up_to(1)] == ["(0,+1)", "(0,-1)", "(1,+1)", "(1,-1)"]
    assert Irrep(1, 1).inversion_sign == -1 and Irrep(1, -1).inversion_sign == 1
    assert Irrep.parse("(2,-1)") == Irrep(2, -1) == Irrep.parse("2-") == Irrep.parse("2o")
    with pytest.raises(ValueError):
        Irrep(1, 0)


def test_wigner_matrices_match_metatomic_and_are_built_once():
    import torch
    from metatomic.torch.o3 import O3Transformations

    grid = random_grid(7, seed=2)
    ours = grid.wigner_matrices(6)
    theirs = O3Transformations(torch.from_numpy(grid.rotations.copy()), 6)
    for l in range(7):
        assert np.allclose(ours[l].numpy(), theirs.wigner_D_matrices(l).numpy(), atol=1e-12), l
        assert grid.wigner(l) is ours[l]  # served from the one build
    for l, D in enumerate(ours):  # orthogonal, and a representation: D(R1 R2) = D(R1) D(R2)
        assert np.allclose(D.numpy() @ D.numpy().transpose(0, 2, 1), np.eye(2 * l + 1), atol=1e-12)
    from symmon.core.wigner import wigner_d_matrices

    r1, r2 = grid.rotations[0], grid.rotations[1]
    product = wigner_d_matrices(np.stack([r1 @ r2]), 6)
    for l in range(7):
        assert np.allclose(product[l][0], ours[l][0].numpy() @ ours[l][1].numpy(), atol=1e-12)


def test_haar_rotations_are_scipys_draws():
    """The quaternion sampler draws what SciPy's ``Rotation.random`` does from the same
    generator (seeded streams unchanged), and proper orthogonal matrices."""
    from scipy.spatial.transform import Rotation

    from symmon.core.grids import _haar_rotations

    for n, seed in [(1, 0), (3, 11), (64, 5)]:
        ours = _haar_rotations(n, seed)
        theirs = Rotation.random(n, random_state=np.random.default_rng(seed)).as_matrix()
        assert np.abs(ours - theirs).max() < 1e-14
        assert np.allclose(ours @ ours.transpose(0, 2, 1), np.eye(3), atol=1e-14)
        assert np.allclose(np.linalg.det(ours), 1.0)


@pytest.mark.parametrize("kind, shape", [
    ("scalar", ()), ("pseudoscalar", ()), ("vector", (3,)), ("pseudovector", (3,)),
    ("vector_per_atom", (5, 3)), ("tensor", (3, 3)), ("symmetric_tensor", (3, 3)),
    ("symmetric_tensor", (4, 3, 3))])
def test_numpy_back_transform_equals_torch(kind, shape):
    """The random-grid path's NumPy back-transform is the torch one, for every law."""
    from symmon.core.orbit_values import back_transform, back_transform_array

    grid = random_grid(4, seed=2)
    values = np.random.default_rng(0).normal(size=(len(grid),) + shape)
    ours = back_transform_array(values, grid, kind)
    assert isinstance(ours, np.ndarray)
    assert np.abs(ours - back_transform(values, grid, kind).numpy()).max() < 1e-14
    # and it really undoes the law: an exactly equivariant vector comes back constant
    if kind == "vector_per_atom":
        constant = values[0]
        orbit = np.einsum("ni,kji->knj", constant, grid.matrices)
        assert np.abs(back_transform_array(orbit, grid, kind) - constant).max() < 1e-13


def test_numpy_back_transform_refuses_bad_values():
    from symmon.core.orbit_values import back_transform_array

    grid = random_grid(2, seed=0)
    values = np.ones((len(grid), 3))
    values[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        back_transform_array(values, grid, "vector")
    with pytest.raises(ValueError, match="leading axis of length 4"):
        back_transform_array(np.ones((3, 3)), grid, "vector")
