"""Sweep backends behind one contract: `run_sweep(spec, backend=...)`.

`registry.Backend` is the contract; `local`, `optuna_backend` and `ray_backend` each register one.
Every backend turns configs into trials with `common.execute_trial`, which writes the trial's
records to the sweep's store in one transaction and only then drops the trial's checkpoint.
"""

from harness.runner.common import execute_trial
from harness.runner.registry import (
           Backend,
           SweepRequest,
           backend_names,
           get_backend,
           register_backend,
)
from harness.runner.run import run_sweep, sweep_folder

__all__ = ["Backend", "SweepRequest", "backend_names", "execute_trial", "get_backend", "register_backend",
           "run_sweep", "sweep_folder"]
