"""Full pipeline on the bundled tiny PET (float64) against metatomic's SymmetrizedModel.

symmon's batched orbit evaluation (neighbour lists rotated, not recomputed) plus its
metrics must reproduce SymmetrizedModel's variances and character projections on the
same quadrature. Conversions are those established in test_crosscheck_symmetrized.py:
metatomic divides a block's variance by 2l+1 and reports projections per o3_mu.
"""

import os

import pytest
import torch
from ase.build import bulk
from metatomic.torch import ModelEvaluationOptions, ModelOutput, load_atomistic_model
from metatomic.torch.o3 import SymmetrizedModel

import symmon
from symmon.adapters import MetatomicOrbitModel

pytestmark = pytest.mark.slow  # real components (trained models, ranks)

MODEL = os.path.join(os.path.dirname(__file__), "..", "symmon", "data", "tiny_pet.pt")
L_MAX, DEGREE = 2, 4
SAMPLE_KINDS = {"energy": "system", "non_conservative_force": "atom",
                "non_conservative_stress": "system"}
KINDS = {"energy": "scalar", "non_conservative_force": "vector",
         "non_conservative_stress": "tensor"}


def structure():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.numbers[[0, 5]] = 28
    atoms.rattle(0.08, seed=11)
    return atoms


@pytest.fixture(scope="module")
def both():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        atoms = structure()
        grid = symmon.quadrature_grid(DEGREE)
        ours = MetatomicOrbitModel(MODEL, chunk_size=70)
        orbit = ours.evaluate(atoms, grid.matrices, list(SAMPLE_KINDS))

        wrapped = SymmetrizedModel.wrap(load_atomistic_model(MODEL),
                                        max_angular_momentum_character=L_MAX,
                                        max_angular_momentum_grid=DEGREE, batch_size=70)
        system = ours.system(atoms)  # same System and neighbour lists
        requests = {prefix + name: ModelOutput(sample_kind=kind)
                    for name, kind in SAMPLE_KINDS.items()
                    for prefix in ("o3::variance::", "o3::character_projection::")}
        results = wrapped([system], ModelEvaluationOptions(length_unit="angstrom",
                                                           outputs=requests),
                          check_consistency=False)
        theirs = {name: {tuple(int(x) for x in key.values): block.values.detach().numpy()
                         for key, block in tensor.items()} for name, tensor in results.items()}
    finally:
        torch.set_num_threads(threads)
    return grid, orbit, theirs


@pytest.mark.parametrize("name", list(SAMPLE_KINDS))
def test_variances_match(both, name):
    grid, orbit, theirs = both
    error = symmon.equivariance_error(orbit[name], grid, KINDS[name])
    blocks = theirs["o3::variance::" + name]
    converted = sum((2 * key[0] + 1) * values.sum() for key, values in blocks.items())
    assert error.relative > 1e-4  # the tiny PET is measurably non-equivariant
    assert error.eps_sq == pytest.approx(converted, rel=1e-8)


@pytest.mark.parametrize("name", list(SAMPLE_KINDS))
def test_character_projections_match(both, name):
    grid, orbit, theirs = both
    spectrum = symmon.character_spectrum(orbit[name], grid, L_MAX,
                                         sample_dims=1 if name == "non_conservative_force"
                                         else 0)
    ours = spectrum.power.reshape(len(spectrum.irreps), -1).sum(1)
    blocks = theirs["o3::character_projection::" + name]
    for irrep, power in zip(spectrum.irreps, ours):
        total = sum(values.sum() for key, values in blocks.items()
                    if key[-2:] == (irrep.l, irrep.sigma))
        assert power == pytest.approx(total, rel=1e-8, abs=1e-12 * spectrum.total.sum()), irrep
