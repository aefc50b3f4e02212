"""Child process for the SIGKILL test: batched TorchSim MD under the monitor, killed."""

import sys
import time

import torch
import torch_sim as ts

from symmon.frontends.torchsim import TorchSimMonitor
from torchsim_models import lennard_jones, rare_gas_clusters

log, steps = sys.argv[1], int(sys.argv[2])
monitored = TorchSimMonitor(lennard_jones(stress=False), log=log, every=1,
                            random_rotations=2, calibration_rotations=0, flush_every=1000)
state = ts.integrate(rare_gas_clusters(), monitored, integrator=ts.nvt_langevin,
                     n_steps=steps, temperature=40.0, timestep=0.002)
monitored.flush()
print(f"flushed {steps + 1}", flush=True)
ts.integrate(state, monitored, integrator=ts.nvt_langevin, n_steps=5, temperature=40.0,
             timestep=0.002)  # buffered, never flushed
time.sleep(60)
torch.zeros(1)
