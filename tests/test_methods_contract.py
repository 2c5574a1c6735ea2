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


class TwoViews(LinearProbe):
    """A method that changes its training batch: each visible image a second time, dimmed by a random factor."""

    def __init__(self, num_classes: int, lr: float) -> None:
        super().__init__(num_classes, lr)
        self.seen: list[tuple[int, ...]] = []

    def training_batch(self, images, modality, pids, cams, *, augment, generator):
        visible = modality == 0
        extra = augment(images[visible])
        extra = extra * torch.rand(len(extra), 1, 1, 1, generator=generator, device=extra.device)
        return (torch.cat([augment(images), extra]), torch.cat([modality, modality[visible]]),
                torch.cat([pids, pids[visible]]), torch.cat([cams, cams[visible]]))

    def training_losses(self, images, modality, pids, cams):
        self.seen.append((len(images), int((modality == 0).sum()), len(pids), len(cams)))
        return super().training_losses(images, modality, pids, cams)


def _trainer(method, **train):
    from harness.bench import synthetic_train_set
    from harness.training import Trainer

    train_set, images = synthetic_train_set(4, 2, 16, 8)
    cfg = TrainConfig(num_identities=2, images_per_modality=2, **train)
    return Trainer(method, cfg, train_set, images, device=torch.device("cpu"), seed=3)


def test_by_default_the_training_batch_is_each_sampled_image_augmented_once():
    from harness.data.augment import train_augment

    trainer = _trainer(LinearProbe(4, 0.1), erasing_p=0.5)
    indices = trainer.next_indices()
    x, modality, pids, _ = trainer.batches.batch(indices)
    # the trainer's augmentation generator is seeded with seed + 1 (here 4)
    expected = train_augment(trainer.images[indices], torch.Generator().manual_seed(4), pad=10, flip=True,
                             erasing_p=0.5, erasing_area=(0.02, 0.4))
    assert torch.equal(x, expected)
    assert torch.equal(modality, trainer.modalities[indices]) and len(pids) == len(indices) == 8


def test_a_method_that_changes_its_training_batch_trains_on_it_and_repeats_per_seed():
    first, second = TwoViews(4, 0.1), TwoViews(4, 0.1)
    second.load_state_dict(first.state_dict())
    trainers = [_trainer(m) for m in (first, second)]
    losses = [t.train_step(t.next_indices()) for t in trainers]
    # 4 visible + 4 infrared sampled images, the 4 visible ones twice: 12 images, 8 of them visible
    assert first.seen == second.seen == [(12, 8, 12, 12)]
    assert losses[0] == losses[1]


def test_the_bench_builds_its_batches_and_counts_its_flops_through_the_method(registry_copy):
    from harness.bench.setup import bench_config
    from harness.bench.step import measure_step

    built: list[TwoViews] = []

    @register_method("two-views-contract-test", description="test method", configs=("train",))
    def build(*, train_cfg, num_classes, num_cameras):
        built.append(TwoViews(num_classes, train_cfg.lr))
        return built[-1]

    cfg = bench_config("two-views-contract-test", "test_resnet", 8, device="cpu",
                       overrides={"train.images_per_modality": 2})
    result = measure_step(cfg, 16, 8, steps=1, warmup=0)
    # the FLOP count's batch, then one phased and one plain timed step: every one of them 12 images
    assert built[0].seen == [(12, 8, 12, 12)] * 3
    # the probe's FLOPs: Linear(3 -> 395 bench classes) forward on 12 images plus its weight gradient,
    # 2 * 12 * 3 * 395 each, per sampled image (8)
    assert built[0].layer.out_features == 395
    assert result.flops_per_image == 2 * (2 * 12 * 3 * 395) // 8
