"""Sweep backends behind one interface: `run_sweep(spec, backend=...)`.

Every backend turns configs into trials with `execute_trial`, which writes the trial's records
to the sweep's store in one transaction and only then drops the trial's checkpoint.
"""

from harness.runner.common import execute_trial, run_sweep, sweep_folder

__all__ = ["execute_trial", "run_sweep", "sweep_folder"]
