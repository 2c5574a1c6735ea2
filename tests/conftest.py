"""Test-session settings: offline, deterministic, caches in a temporary folder."""

import os

import pytest
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
