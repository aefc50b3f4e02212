"""Every model variant users bring (tests/model_variants.py) through the adapters.

For every variant, structure (periodic cell, molecule) and output, the orbit values
of :class:`~symmon.adapters.MetatomicOrbitModel` equal per-copy
``MetatomicCalculator`` calls on freshly transformed ``ase.Atoms`` (neighbour lists
recomputed by metatomic-ase, model outputs asked under the names the model was
trained with), to 1e-10 (float64) or 1e-5 (float32) of the value's scale, for two
proper and two improper elements. Unsupported requests fail with one sentence that
names the model.
"""

import pathlib
import sys
import warnings

import numpy as np
import pytest

import ase
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import voigt_6_to_full_3x3_stress

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from analytic import cluster  # noqa: E402
from model_variants import build_variants  # noqa: E402

from symmon import random_grid  # noqa: E402
from symmon.adapters import (ASEOrbitModel, MetatomicOrbitModel, feature_output,  # noqa: E402
                             orbit_model_for)

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.slow]


@pytest.fixture(scope="session")
def variants():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_variants()


def periodic():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.numbers[[1, 6]] = 28
    atoms.rattle(0.1, seed=4)
    atoms.set_cell(atoms.cell.array + np.array([[0, 0.1, 0], [0.05, 0, 0], [0, 0, 0]]),
                   scale_atoms=True)
    return atoms


def molecule():
    return ase.Atoms("CCHOHN", positions=1.7 * cluster(6, seed=2))


STRUCTURES = {"periodic": periodic, "molecule": molecule}
ELEMENTS = random_grid(2, seed=7).matrices  # two proper, then two improper elements
assert np.all(np.linalg.det(ELEMENTS) == pytest.approx([1, 1, -1, -1]))


def transformed(atoms, matrix):
    copy = atoms.copy()
    copy.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
    copy.set_positions(atoms.get_positions() @ matrix.T)
    return copy


def calculator(variant):
    from metatomic_ase import MetatomicCalculator

    return MetatomicCalculator(variant.model, neighbor_skin=0.0, check_consistency=True)


def reference(variant, atoms, names, llf=()):
    """Per-copy MetatomicCalculator values: ``{name: (K, ...)}``."""
    from metatomic.torch import ModelOutput

    calc = calculator(variant)
    getters = {"energy": calc.get_potential_energy, "energies": calc.get_potential_energies,
               "forces": calc.get_forces, "stress": lambda a: voigt_6_to_full_3x3_stress(calc.get_stress(a))}
    values = {name: [] for name in list(names) + list(llf)}
    for matrix in ELEMENTS:
        copy = transformed(atoms, matrix)
        for name in names:
            if name in getters:
                values[name].append(getters[name](copy))
                continue
            key = variant.trained[name]
            kind = "system" if "stress" in name else "atom"
            unit = "eV/angstrom^3" if "stress" in name else "eV/angstrom"
            block = calc.run_model(copy, {key: ModelOutput(unit=unit, sample_kind=kind)})[key]
            values[name].append(block.block().values.detach().numpy()[..., 0].reshape(
                (3, 3) if "stress" in name else (len(atoms), 3)))
        for key in llf:
            block = calc.run_model(copy, {key: ModelOutput(sample_kind="atom")})[key].block()
            assert block.samples.column("atom").tolist() == list(range(len(atoms)))
            values[key].append(block.values.detach().numpy())
    return {name: np.stack(v).astype(np.float64) for name, v in values.items()}


def names_for(variant, structure):
    periodic_cell = structure == "periodic"
    names = []
    if variant.has_energy:
        names += ["energy", "forces"] + (["stress"] if periodic_cell else [])
        names += ["energies"] if variant.per_atom_energy else []
    names += [n for n in variant.trained if periodic_cell or "stress" not in n]
    return names


def llf_names(variant, structure):
    targets = (["energy"] if variant.has_energy and variant.per_atom_energy else []) + \
        [n for n, key in variant.trained.items() if structure == "periodic" or "stress" not in n]
    return [f"mtt::aux::{variant.trained.get(t, t)}_last_layer_features" for t in targets]


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("name", ["nc_plural", "nc_plural_f32", "nc_singular", "energy_only",
                                  "nanometer", "extra_inputs", "system_energy",
                                  "forces_only"])
def test_orbit_equals_per_copy_calculator(variants, name, structure):
    variant = variants[name]
    atoms = STRUCTURES[structure]()
    orbit = MetatomicOrbitModel(variant.model, chunk_size=3)  # 4 copies: 2 chunks
    names, llf = names_for(variant, structure), llf_names(variant, structure)
    actual = orbit.evaluate(atoms, ELEMENTS, names + llf)
    expected = reference(variant, atoms, names, llf)
    if "stress" in actual:  # ASE's stress is the symmetric part of (1/V) dE/d(strain)
        actual["stress"] = (actual["stress"] + actual["stress"].transpose(1, 2)) / 2
    for key, value in expected.items():
        got = actual[key].numpy()
        assert got.shape == value.shape, (key, got.shape, value.shape)
        scale = max(1.0, float(np.abs(value).max()))
        np.testing.assert_allclose(got, value, rtol=0, atol=variant.tolerance * scale,
                                   err_msg=key)
    # the model is not equivariant: a copy mix-up or an untransformed copy would show
    spreads = [np.ptp(value.reshape(len(ELEMENTS), -1), axis=0).max()
               / max(1.0, np.abs(value).max()) for value in expected.values()]
    assert max(spreads) > 100 * variant.tolerance


def test_paths_say_which_evaluation_is_used(variants):
    assert MetatomicOrbitModel(variants["nc_plural"].model).path.startswith("batched")
    assert MetatomicOrbitModel(variants["nanometer"].model).path.startswith("batched")
    with pytest.warns(UserWarning, match=r"requests the extra inputs \['charge', "
                                         r"'spin_multiplicity'\]"):
        orbit = MetatomicOrbitModel(variants["extra_inputs"].model)
    assert orbit.path.startswith("one MetatomicCalculator call per copy")


def test_extra_inputs_reach_the_model(variants):
    """The per-copy path passes the structure's charge: it changes the energy."""
    orbit = MetatomicOrbitModel(variants["extra_inputs"].model)
    neutral, charged = molecule(), molecule()
    charged.info["charge"] = 1
    energies = [orbit.evaluate(a, ELEMENTS[:1], ["energy"])["energy"] for a in (neutral,
                                                                              charged)]
    assert abs(float(energies[0] - energies[1])) > 1e-6
    expected = reference(variants["extra_inputs"], charged, ["energy"])["energy"][:1]
    np.testing.assert_allclose(energies[1].numpy(), expected, rtol=0, atol=1e-10)
    charged.info["charge"] = 50  # outside the charges this PET embeds
    with pytest.raises(ValueError, match=r"failed on this structure's extra inputs "
                                         r"\['charge', 'spin_multiplicity'\].*max_charge"):
        orbit.evaluate(charged, ELEMENTS, ["energy", "non_conservative_forces"])


def test_nanometer_outputs_converted_to_angstrom(variants):
    """Direct forces of a nm model come back in eV/Å: ten times smaller than eV/nm."""
    from metatomic.torch import ModelOutput

    variant = variants["nanometer"]
    atoms = periodic()
    ours = MetatomicOrbitModel(variant.model).evaluate(atoms, np.eye(3)[None],
                                                       ["non_conservative_forces"])
    raw = calculator(variant).run_model(atoms, {"non_conservative_forces": ModelOutput(
        sample_kind="atom")})["non_conservative_forces"].block().values[..., 0]
    assert variant.model.capabilities().outputs["non_conservative_forces"].unit == "eV/nm"
    np.testing.assert_allclose(10 * ours["non_conservative_forces"][0].numpy(),
                               raw.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_feature_output_under_either_naming(variants):
    plural = MetatomicOrbitModel(variants["nc_plural"].model)
    singular = MetatomicOrbitModel(variants["nc_singular"].model)
    for target in ("non_conservative_forces", "non_conservative_force"):
        assert feature_output(plural, target) == \
            "mtt::aux::non_conservative_forces_last_layer_features"
        assert feature_output(singular, target) == \
            "mtt::aux::non_conservative_force_last_layer_features"
    assert feature_output(plural, "energy") == "mtt::aux::energy_last_layer_features"
    with pytest.raises(ValueError, match="has no last-layer features for "
                                         "'non_conservative_forces'"):
        feature_output(MetatomicOrbitModel(variants["energy_only"].model),
                       "non_conservative_forces")


@pytest.mark.parametrize("name, outputs, message", [
    ("energy_only", ["non_conservative_forces"], r"cannot compute \['non_conservative_forces'\]"),
    ("nc_singular", ["non_conservative_stress"], r"cannot compute \['non_conservative_stress'\]"),
    ("system_energy", ["energies"], "per structure only"),
    ("forces_only", ["forces"], "has no 'energy' output"),
])
def test_unsupported_requests_fail_with_one_sentence(variants, name, outputs, message):
    orbit = MetatomicOrbitModel(variants[name].model)
    assert name != "system_energy" or "energy" in orbit.available_outputs
    with pytest.raises(ValueError, match=message) as error:
        orbit.evaluate(periodic(), ELEMENTS, outputs)
    text = str(error.value)
    assert ("model" in text) and "\n" not in text


class Holder(Calculator):
    """A calculator that wraps a MetatomicCalculator, like upet's ``UPETCalculator``."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, inner, shift=0.0):
        super().__init__()
        self.calculator, self.shift = inner, shift

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calculator.calculate(atoms, properties, system_changes)
        self.results = dict(self.calculator.results)
        self.results["energy"] = self.results["energy"] + self.shift


def test_wrapped_metatomic_calculator_is_batched(variants):
    variant = variants["nc_plural"]
    atoms = periodic()
    orbit = orbit_model_for(Holder(calculator(variant)))
    assert orbit.family == "metatomic" and orbit.calculator is None  # not checked yet
    got = orbit.evaluate(atoms, ELEMENTS, ["energy", "non_conservative_forces"])
    assert orbit.batched and "Holder.calculator" in orbit.path
    assert isinstance(orbit.current, MetatomicOrbitModel)
    expected = reference(variant, atoms, ["energy", "non_conservative_forces"])
    for key, value in expected.items():
        np.testing.assert_allclose(got[key].numpy(), value, rtol=0, atol=1e-10 * max(
            1, np.abs(value).max()))

    # the one wrapper rule: a wrapper that adds something is evaluated itself, per copy
    shifted = orbit_model_for(Holder(calculator(variant), shift=0.01))
    with pytest.warns(UserWarning, match="Holder holds a MetatomicCalculator in .calculator "
                      "but its predictions differ"):
        got = shifted.evaluate(atoms, ELEMENTS[:1], ["energy"])
    assert isinstance(shifted.current, ASEOrbitModel) and not shifted.batched
    assert shifted.path.startswith("per-copy")
    np.testing.assert_allclose(float(got["energy"][0]), reference(
        variant, atoms, ["energy"])["energy"][0] + 0.01, rtol=0, atol=1e-9)


def test_symmetrized_calculator_is_not_looked_through(variants):
    from metatomic_ase import SymmetrizedCalculator

    averaged = SymmetrizedCalculator(calculator(variants["energy_only"]), l_max=1)
    orbit = orbit_model_for(averaged)
    assert isinstance(orbit, ASEOrbitModel) and "SymmetrizedCalculator" in orbit.path


def test_monitor_on_plural_model_returns_the_calculator_forces(variants):
    """issue 13's crash: SymmetryMonitor(MetatomicCalculator(plural PET, non_conservative))."""
    from metatomic_ase import MetatomicCalculator

    from symmon import SymmetryMonitor

    model = variants["nc_plural"].model
    atoms = periodic()
    atoms.calc = SymmetryMonitor(MetatomicCalculator(model, non_conservative=True,
                                                     neighbor_skin=0.0),
                                 every=1, random_rotations=2, l_max=1)
    forces = atoms.get_forces()
    expected = MetatomicCalculator(model, non_conservative=True,
                                   neighbor_skin=0.0).get_forces(periodic())
    np.testing.assert_allclose(forces, expected, rtol=0, atol=1e-10)
    assert np.isfinite(atoms.calc.results["forces_eps"])
    assert atoms.calc.monitor.source.path.startswith("batched")
