"""Training: the pieces a trial trains with, one concern per module.

    device.py      device resolution, synchronisation, autocast, memory placement
    seeding.py     global generators: seeding, capture and restore for checkpoints
    profiling.py   PhaseTimer (per-phase step times for `vireid bench`)
    optim.py       SGD + the warm-up/step schedule
    batches.py     BatchSource: resident images, identity sampler, batched augmentation; steps per epoch
    checkpoint.py  atomic per-epoch checkpoints
    loop.py        Trainer: the step and the epoch loop with its epoch/iteration callbacks
    components.py  prepare_run + build_components: the one builder used by run_trial and the bench
"""

from harness.errors import TrialFailure
from harness.training.batches import BatchSource, steps_per_epoch, train_augmentation
from harness.training.checkpoint import load_checkpoint, save_checkpoint
from harness.training.components import TrainData, TrialComponents, build_components, prepare_run
from harness.training.device import autocast_context, fits_on_device, resolve_device, synchronize
from harness.training.loop import EpochCallback, IterationCallback, Trainer, TrainStats
from harness.training.optim import build_optimizer, fused_sgd_supported, lr_factor, sgd_implementation
from harness.training.profiling import PhaseTimer
from harness.training.seeding import seed_everything

__all__ = [
    "BatchSource", "EpochCallback", "IterationCallback", "PhaseTimer", "TrainData", "TrainStats", "Trainer",
    "TrialComponents", "TrialFailure", "autocast_context", "build_components", "build_optimizer",
    "fits_on_device", "fused_sgd_supported", "load_checkpoint", "lr_factor", "prepare_run", "resolve_device",
    "save_checkpoint", "seed_everything", "sgd_implementation", "steps_per_epoch", "synchronize", "train_augmentation",
]
