"""`vireid bench`: time full training steps of a method, phase by phase, on random images.

A step here is exactly what `Trainer.fit` runs per iteration: sample a batch of indices,
gather and augment the uint8 images on the device, network forward, every loss term (with
the MCM discriminator update), backward, optimiser update. The trainer is built by the same
`harness.training.build_components` as a trial's. Two passes are timed after the warm-up steps
(where torch.compile and cuDNN do their one-off work):

* a phased pass with a synchronising `PhaseTimer`, for the share of each phase;
* a plain pass without per-phase synchronisation, for the throughput (images/s).

FLOPs are counted once, untimed, with torch's FlopCounterMode over one forward + backward of
the method's training losses (convolutions, matmuls and attention only; element-wise work
is free in that count), and compared with the device's dense peak where it is known.

    peaks.py      dense peaks of known GPUs
    trainsets.py  random train sets (benchmark-sized or dataset-sized)
    setup.py      bench config, batch layout, size parsing, StepSetup (via the trial builder), settings
    step.py       measure_step / StepBenchmark / the phase table
    epoch.py      measure_epoch / EpochBenchmark: one dataset-sized epoch and its extrapolation
"""

from harness.bench.epoch import EpochBenchmark, format_epoch_report, measure_epoch, run_epoch_benchmark
from harness.bench.peaks import PEAK_TFLOPS, compute_precision, device_peak_tflops
from harness.bench.setup import (
                                 BenchSettings,
                                 StepSetup,
                                 batch_layout,
                                 bench_config,
                                 bench_settings,
                                 build_step_setup,
                                 parse_image_counts,
                                 parse_size,
)
from harness.bench.step import StepBenchmark, format_report, measure_step, run_step_benchmark, training_step_flops
from harness.bench.trainsets import (
                                 BENCH_NUM_CAMERAS,
                                 BENCH_NUM_CLASSES,
                                 SYSU_EVAL_IMAGES,
                                 SYSU_TRAIN_INFRARED,
                                 SYSU_TRAIN_VISIBLE,
                                 sized_train_set,
                                 synthetic_train_set,
)

__all__ = [
    "BENCH_NUM_CAMERAS", "BENCH_NUM_CLASSES", "PEAK_TFLOPS", "SYSU_EVAL_IMAGES", "SYSU_TRAIN_INFRARED",
    "SYSU_TRAIN_VISIBLE", "BenchSettings", "EpochBenchmark", "StepBenchmark", "StepSetup", "batch_layout",
    "bench_config", "bench_settings", "build_step_setup", "compute_precision", "device_peak_tflops",
    "format_epoch_report", "format_report", "measure_epoch", "measure_step", "parse_image_counts", "parse_size",
    "run_epoch_benchmark", "run_step_benchmark", "sized_train_set", "synthetic_train_set", "training_step_flops",
]
