"""Child process for the SIGKILL test: monitored MD that reports flushed steps."""

import sys
import time

from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet

from symmon.frontends.calculator import SymmetryMonitor

log, steps = sys.argv[1], int(sys.argv[2])
atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
atoms.rattle(0.05, seed=3)
monitor = SymmetryMonitor(EMT(), every=1, log=log, random_rotations=2, flush_every=1000)
atoms.calc = monitor
dynamics = VelocityVerlet(atoms, 2 * units.fs)
monitor.attach(dynamics)
dynamics.run(steps)
monitor.flush()
print(f"flushed {steps + 1}", flush=True)
dynamics.run(7)  # buffered, never flushed
time.sleep(60)
