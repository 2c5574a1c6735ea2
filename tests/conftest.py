"""Test-session settings: offline, deterministic, caches in a temporary folder."""

import os

import pytest

# The test process runs the native numerics mode (tests that need the portable one start a fresh
# process with it): a VIREID_NUMERICS=portable left in the shell would make every in-process
# `vireid` call refuse to switch modes after torch started.
for _name in ("VIREID_NUMERICS", "ATEN_CPU_CAPABILITY", "MKL_CBWR"):
    os.environ.pop(_name, None)

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Synthetic trees and decoded-image caches go to a per-session folder, never ~/.cache."""
    old = os.environ.get("VIREID_CACHE")
    os.environ["VIREID_CACHE"] = str(tmp_path_factory.mktemp("vireid-cache"))
    yield
    if old is None:
        os.environ.pop("VIREID_CACHE", None)
    else:
        os.environ["VIREID_CACHE"] = old


# A trial small enough for CPU tests: tiny timm model, small synthetic SYSU-layout data.
TINY = {
    "model": {"backbone": "test_resnet", "non_local": False},
    "data": {"dataset": "synthetic", "height": 64, "width": 32, "modes": ["all"], "gallery_trials": 2,
             "synthetic": {"num_identities": 16, "images_per_camera": 2, "height": 64, "width": 32}},
    "train": {"epochs": 2, "iters_per_epoch": 2, "num_identities": 4, "images_per_modality": 2,
              "warmup_epochs": 1, "milestones": [1], "device": "cpu", "eval_batch_size": 64},
}


@pytest.fixture
def tiny_config():
    from harness.config import TrialConfig

    def make(**overrides):
        return TrialConfig.from_dict(TINY).with_overrides(overrides)

    return make
