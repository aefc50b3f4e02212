"""GPU check: the batched orbit path on CUDA agrees with the CPU path, end to end.

    python -m benchmarks.cuda_consistency        # needs a CUDA device

Evaluates the bundled float64 tiny PET on a degree-4 quadrature orbit on CPU and on
CUDA (direct and autograd outputs), compares the outputs and the metrics (computed on
the GPU tensors), then runs a few monitored MD steps on CUDA. Exits non-zero on failure.
"""

import sys
import time

import numpy as np
import torch


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    from ase import units
    from ase.md.langevin import Langevin
    from metatomic_ase import MetatomicCalculator

    import symmon
    from symmon.frontends.demo import bundled_model_path, demo_structure
    from symmon.adapters import MetatomicOrbitModel
    from symmon.frontends.calculator import SymmetryMonitor

    atoms = demo_structure()
    grid = symmon.quadrature_grid(4)
    names = ["energy", "non_conservative_forces", "non_conservative_stress", "forces", "stress",
             "mtt::aux::non_conservative_force_last_layer_features"]
    kinds = {"energy": "scalar", "non_conservative_forces": "vector",
             "non_conservative_stress": "symmetric_tensor", "forces": "vector",
             "stress": "symmetric_tensor"}
    path = bundled_model_path("tiny_pet.pt")
    failures = []
    results = {}
    for device in ("cpu", "cuda"):
        model = MetatomicOrbitModel(path, device=device, chunk_size=140)
        model.evaluate(atoms, grid.matrices[:2], names[:1])  # warm-up
        start = time.perf_counter()
        results[device] = model.evaluate(atoms, grid.matrices, names)
        print(f"{device}: {len(grid)} copies x {len(atoms)} atoms in "
              f"{time.perf_counter() - start:.3f} s (model on {model.device})")
    for name in names:
        difference = (results["cpu"][name] - results["cuda"][name]).abs().max().item()
        scale = results["cpu"][name].abs().max().item()
        ok = difference <= 1e-9 * max(scale, 1.0)
        print(f"{name:55s} max |cpu - cuda| = {difference:.2e} (scale {scale:.2e}) "
              f"{'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(name)
    for name, kind in kinds.items():
        on_gpu = results["cpu"][name].to("cuda")
        gpu = symmon.equivariance_error(on_gpu, grid, kind)
        cpu = symmon.equivariance_error(results["cpu"][name], grid, kind)
        spectrum_gpu = symmon.character_spectrum(on_gpu, grid, 2)
        spectrum_cpu = symmon.character_spectrum(results["cpu"][name], grid, 2)
        ok = (abs(gpu.eps - cpu.eps) <= 1e-10 * max(cpu.eps, 1e-30)
              and np.allclose(spectrum_gpu.power, spectrum_cpu.power, rtol=1e-10, atol=1e-14))
        print(f"metrics on cuda tensors, {name:25s} eps {gpu.eps:.6e} vs {cpu.eps:.6e} "
              f"{'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append("metrics:" + name)

    base = MetatomicCalculator(path, device="cuda", non_conservative=True, neighbor_skin=0.0)
    monitor = SymmetryMonitor(base, random_rotations=4, full_every=5, l_max=2, device="cuda")
    atoms.calc = monitor
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.02,
                        rng=np.random.default_rng(0))
    monitor.attach(dynamics)
    start = time.perf_counter()
    dynamics.run(10)
    eps = monitor.results["forces_eps"]
    print(f"10 monitored MD steps on cuda in {time.perf_counter() - start:.2f} s; "
          f"forces eps {eps:.4f} eV/A")
    if not np.isfinite(eps):
        failures.append("monitor")
    print("FAILED: " + ", ".join(failures) if failures else "all CUDA checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
