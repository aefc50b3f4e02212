"""Memory-aware chunks of the orbit, out-of-memory handling, neighbour lists of copies.

The out-of-memory path is forced on the CPU with a model runner that raises
``torch.OutOfMemoryError`` (or ``MemoryError``) when a forward call holds more than
``n`` copies; references are the same model evaluated without the limit and
metatomic's own ``MetatomicCalculator``.
"""

import os
import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule
from metatomic_ase import MetatomicCalculator

from symmon.adapters import MetatomicOrbitModel
from symmon.adapters.memory import (CPU_ATOMS_PER_FORWARD, CPU_MAX_CHUNK, ChunkPlanner,
                                    OrbitOutOfMemory, is_out_of_memory)
from symmon.core.grids import random_grid
from symmon.frontends.calculator import SymmetryMonitor

DATA = os.path.join(os.path.dirname(__file__), "..", "symmon", "data")
TINY_PET = os.path.join(DATA, "tiny_pet.pt")


def structure(index=6):  # 16 atoms
    return ase.io.read(os.path.join(DATA, "tiny_structures.xyz"), index)


@pytest.fixture(scope="module")
def model():
    from symmon.adapters import load_metatomic_model

    return load_metatomic_model(TINY_PET)


class Limited:
    """A model runner that fails like an allocator above ``limit`` copies per call."""

    def __init__(self, run, limit, error=torch.OutOfMemoryError):
        self.run, self.limit, self.error, self.calls = run, limit, error, []

    def __call__(self, systems, requests):
        self.calls.append(len(systems))
        if len(systems) > self.limit:
            raise self.error(f"Tried to allocate {len(systems)} copies (fake limit)")
        return self.run(systems, requests)


def limited(orbit, limit, error=torch.OutOfMemoryError):
    runner = Limited(orbit.evaluator.run, limit, error)
    orbit.evaluator.run = runner
    return runner


# -- the planner ---------------------------------------------------------------------
def test_cpu_plan_bounds_atoms_per_forward_and_splits_equally():
    planner = ChunkPlanner("cpu")
    assert planner.largest_chunk(8) == CPU_MAX_CHUNK
    assert planner.largest_chunk(1000) == CPU_ATOMS_PER_FORWARD // 1000
    assert planner.largest_chunk(10 ** 5) == 1
    big = CPU_ATOMS_PER_FORWARD // 5  # room for 5 copies: 8 go as 4 + 4, not 5 + 3
    assert planner.plan(8, big) == 4
    assert planner.plan(3, 8) == 3
    explicit = ChunkPlanner("cpu", chunk_size=5)  # explicit: 5 + 3, whatever the size
    assert explicit.plan(8, 10 ** 5) == 5
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ChunkPlanner("cpu", chunk_size=0)


def test_out_of_memory_recognised_and_other_errors_not():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                         "tried to allocate 10 bytes"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_planner_halves_retries_and_remembers():
    planner = ChunkPlanner("cpu", chunk_size=8)
    calls = []

    def forward(start, stop):
        calls.append(stop - start)
        if stop - start > 3:
            raise torch.OutOfMemoryError("fake")
        return list(range(start, stop))

    chunks = planner.run(8, 10, forward)
    assert calls == [8, 4, 2, 2, 2, 2]
    assert sum(chunks, []) == list(range(8))
    assert planner.retries == 2 and planner.fits[10] == 2
    calls.clear()
    planner.run(4, 10, forward)  # the failing size is not tried again
    assert calls == [2, 2]


def test_one_copy_is_retried_once_with_the_cache_released():
    planner, calls = ChunkPlanner("cpu", chunk_size=1), []

    def fragmented(start, stop):  # fails on its first call only, as a fragmented cache
        calls.append(start)
        if len(calls) == 1:
            raise RuntimeError("The following operation failed in the TorchScript "
                               "interpreter.\nRuntimeError: CUDA out of memory. Tried to "
                               "allocate 8.01 GiB. GPU 0 has a total capacity of 79 GiB")
        return start

    assert planner.run(2, 10, fragmented) == [0, 1] and calls == [0, 0, 1]
    def never(start, stop):
        calls.append(start)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.01 GiB. GPU 0 "
                                     "has a total capacity of 79 GiB")

    calls.clear()
    with pytest.raises(OrbitOutOfMemory, match=r"\(cpu: CUDA out of memory. Tried to "
                       r"allocate 8.01 GiB\); free memory"):
        planner.run(2, 10, never)
    assert calls == [0, 0]  # tried twice, then one sentence


# -- the batched adapter -------------------------------------------------------------
@pytest.mark.parametrize("error", [torch.OutOfMemoryError, MemoryError])
def test_batched_orbit_after_out_of_memory_equals_unlimited(model, error):
    atoms = structure()
    matrices = random_grid(3, seed=1).matrices  # 6 copies
    outputs = ["energy", "forces", "stress"] if error is MemoryError else ["energy"]
    reference = MetatomicOrbitModel(model, chunk_size=6).evaluate(atoms, matrices, outputs)
    orbit = MetatomicOrbitModel(model, chunk_size=6)
    runner = limited(orbit, 2, error)
    values = orbit.evaluate(atoms, matrices, outputs)
    assert runner.calls == [6, 3, 2, 2, 2]  # halved twice, then in chunks that fit
    assert orbit.planner.retries == 2
    for name in outputs:  # the same copies in the same order (float64: batch roundoff)
        scale = float(reference[name].abs().max())
        assert float((values[name] - reference[name]).abs().max()) < 1e-12 * scale, name


def test_one_copy_that_does_not_fit_is_one_sentence(model):
    orbit = MetatomicOrbitModel(model, chunk_size=4)
    limited(orbit, 0)
    with pytest.raises(OrbitOutOfMemory, match=r"one copy of this structure \(16 atoms\) "
                       r"does not fit in memory \(cpu: Tried to allocate 1 copies"):
        orbit.evaluate(structure(), random_grid(2, seed=0).matrices, ["energy"])


def test_other_errors_are_not_retried(model):
    orbit = MetatomicOrbitModel(model, chunk_size=4)
    runner = limited(orbit, 1, lambda text: RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        orbit.evaluate(structure(), random_grid(2, seed=0).matrices, ["energy"])
    assert runner.calls == [4]


# -- the monitor ---------------------------------------------------------------------
def _plain(model, atoms):
    calculator = MetatomicCalculator(model)
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


def test_monitor_step_that_does_not_fit_is_not_monitored_and_returns_the_plain_call(model):
    atoms = structure()
    monitor = SymmetryMonitor(MetatomicCalculator(model), every=1, random_rotations=2)
    runner = limited(monitor.monitor.source.orbit_model, 0)
    atoms.calc = monitor
    with pytest.warns(UserWarning, match=r"step 0 is not monitored: one copy of this "
                      r"structure \(16 atoms\) does not fit in memory .*the base calculator's "
                      "own prediction is returned"):
        energy = atoms.get_potential_energy()
    assert runner.calls  # the orbit was tried
    assert monitor.n_not_monitored == 1 and monitor.last_monitored == {}
    assert np.isnan(monitor.results["energy_eps_per_atom"])
    plain = _plain(model, atoms)
    assert energy == pytest.approx(plain[0], rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), plain[1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), plain[2], rtol=0, atol=1e-10)
    runner.limit = 2  # memory freed: the next step is monitored, in chunks that fit
    atoms.positions[0, 0] += 0.01
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        atoms.get_potential_energy()
    assert not [w for w in caught if "not monitored" in str(w.message)]
    assert monitor.last_monitored["step"] == 1
    # 5 copies (4 and the unrotated), one per call: the size that failed is remembered
    assert runner.calls[-5:] == [1] * 5 and monitor.monitor.source.orbit_model.planner.fits
    assert monitor.monitor.n_not_monitored == 1
    assert np.isfinite(monitor.results["energy_eps_per_atom"])


# -- neighbour lists of rotated copies -----------------------------------------------
def _pairs(block):
    """{(i, j, shift): vector} of a neighbour-list block."""
    samples = block.samples.values.tolist()
    vectors = block.values[..., 0].detach().numpy()
    return {tuple(s): v for s, v in zip(samples, vectors)}


@pytest.mark.parametrize("kind", ["periodic", "molecule"])
def test_rotated_neighbour_lists_equal_recomputed_lists(model, kind):
    if kind == "periodic":
        atoms = structure()
    else:  # a Cu/Ni cluster the tiny PET knows, not periodic
        atoms = molecule("CH4")
        atoms.numbers[:] = [29, 28, 28, 29, 29]
        atoms.positions *= 2.0
        atoms.center(vacuum=5.0)
        atoms.pbc = False
    orbit = MetatomicOrbitModel(model)
    matrices = random_grid(1, seed=4).matrices  # proper and improper elements
    system = orbit.systems.system(atoms)
    copies = orbit.systems.copies(system, torch.as_tensor(matrices))
    for matrix, copy in zip(matrices, copies):
        rotated = atoms.copy()
        rotated.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
        rotated.positions = atoms.positions @ matrix.T
        fresh = orbit.systems.system(rotated)
        for options in system.known_neighbor_lists():
            ours, theirs = (_pairs(copy.get_neighbor_list(options)),
                            _pairs(fresh.get_neighbor_list(options)))
            assert len(ours) > len(atoms) and ours.keys() == theirs.keys()
            difference = max(np.abs(ours[key] - theirs[key]).max() for key in ours)
            assert difference < 1e-12
        raw = orbit.evaluator.run([copy, fresh], orbit.evaluator.requests(["energy"]))
        energies = raw["energy"].block().values[:, 0]
        assert float(abs(energies[0] - energies[1])) < 1e-10 * max(1.0, float(abs(energies[1])))


def test_eval_of_a_structure_that_does_not_fit_is_one_sentence(tmp_path, capsys, monkeypatch):
    from symmon.frontends.cli import main

    def no_memory(self, n_copies, n_atoms, forward, **_):
        raise OrbitOutOfMemory(f"one copy of this structure ({n_atoms} atoms) does not fit "
                               "in memory (cuda, 0.1 GiB free: CUDA out of memory); free "
                               "memory or use a device with more")

    monkeypatch.setattr(ChunkPlanner, "run", no_memory)
    path = tmp_path / "one.xyz"
    ase.io.write(path, structure())
    assert main(["eval", TINY_PET, str(path), "--degree", "2", "--no-progress"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("symmon eval: error: one copy of this structure (16 atoms) does "
                            "not fit in memory") and "\n" not in error
