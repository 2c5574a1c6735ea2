"""The method contract (methods.base.ReIDMethod) and the registry's builder interface."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from harness.config import TrainConfig, TrialConfig
from harness.errors import ConfigError
from methods import create_method, register_method
from methods.base import ReIDMethod, untimed


class LinearProbe(ReIDMethod):
    """A minimal method: one linear layer on the mean colour."""

    def __init__(self, num_classes: int, lr: float) -> None:
        super().__init__()
        self.layer = nn.Linear(3, num_classes)
        self.lr = lr

    def test_features(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.layer(images.mean(dim=(2, 3)))

    def training_losses(self, images, modality, pids, cams) -> dict[str, torch.Tensor]:
        with self.phase_timer("forward"):
            return {"ce": nn.functional.cross_entropy(self.test_features(images, modality), pids)}

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.parameters()), "lr": self.lr, "name": "all"}]


@pytest.fixture
def registry_copy(monkeypatch):
    """Registrations made by a test go into a copy of the registry that is dropped afterwards."""
    from methods import list_methods, registry

    list_methods()  # the built-in methods are registered first
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))


def test_a_registered_builder_receives_only_its_declared_sections(registry_copy):
    received: dict[str, Any] = {}

    @register_method("linear-probe-contract-test", description="test method", configs=("train",), scale=2)
    def build_linear_probe(**kwargs: Any) -> LinearProbe:
        received.update(kwargs)
        return LinearProbe(kwargs["num_classes"], kwargs["train_cfg"].lr * kwargs["scale"])

    cfg = TrialConfig.from_dict({"method": "linear-probe-contract-test", "train": {"lr": 0.25}})
    method = create_method(cfg, num_classes=5, num_cameras=2)
    assert set(received) == {"train_cfg", "num_classes", "num_cameras", "scale"}
    assert received["train_cfg"] is cfg.train
    assert isinstance(method, ReIDMethod) and method.param_groups()[0]["lr"] == 0.5
    assert method.phase_timer is untimed


def test_an_incomplete_method_cannot_be_built():
    class NoLosses(ReIDMethod):
        def test_features(self, images, modality):
            return images

        def param_groups(self):
            return []

    with pytest.raises(TypeError, match="training_losses"):
        NoLosses()


def test_compile_is_refused_by_name_for_a_method_without_compile_network():
    with pytest.raises(ConfigError, match="train.compile"):
        LinearProbe(3, 0.1).compile_network(backend="eager")


def test_the_trainer_hands_its_timer_to_the_method():
    from harness.bench import synthetic_train_set
    from harness.training import PhaseTimer, Trainer

    train, images = synthetic_train_set(4, 2, 16, 8)
    method = LinearProbe(4, 0.1)
    timer = PhaseTimer(enabled=True)
    cfg = TrainConfig(num_identities=2, images_per_modality=2, pad=0, erasing_p=0.0)
    trainer = Trainer(method, cfg, train, images, device=torch.device("cpu"), seed=0, timer=timer)
    trainer.train_step(trainer.next_indices())
    assert method.phase_timer is timer and timer.calls["forward"] == 1
