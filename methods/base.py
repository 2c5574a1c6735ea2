"""The method contract: what the trainer, the evaluation and the bench may call on a method.

Every method is a `ReIDMethod`, an `nn.Module` that implements

* `training_losses(images, modality, pids, cams) -> dict[str, Tensor]`: the weighted loss terms
  of one training batch (the trainer sums them and runs backward; a method may update its own
  auxiliary parts here, as MCLNet's modality discriminator does);
* `test_features(images, modality) -> Tensor`: the (B, D) features evaluation ranks with;
* `param_groups() -> list[dict]`: SGD parameter groups, each with its own "lr" (and a "name");
* optionally `compile_network(**torch_compile_options)`: torch.compile what is worth compiling
  (the default refuses, naming `train.compile`);
* optionally `training_batch(images, modality, pids, cams, augment=, generator=)`: the batch
  `training_losses` receives, made from the identity sampler's uint8 images (the default:
  `augment(images)` and the labels unchanged). A method that trains on more or other views of its
  images (CAJ's channel-exchanged visible copy) or has its own augmentation overrides it.

and has a `phase_timer` attribute: a callable `phase_timer(name)` returning a context manager,
which the trainer replaces by its `harness.training.PhaseTimer` so `vireid bench` can time each
part of `training_losses` (the default times nothing), and a `test_similarity` attribute that says
how evaluation compares two test features: "cosine" (the default: each feature L2-normalised as a
whole, then the dot product) or "dot" (the plain dot product, for a feature made of parts the
method normalises itself, whose dot product is then the sum of the parts' cosines).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from harness.errors import ConfigError

PhaseTimerLike = Callable[[str], AbstractContextManager[Any]]
TestSimilarity = Literal["cosine", "dot"]
Augment = Callable[[torch.Tensor], torch.Tensor]
"""The configured train augmentation: uint8 (B, 3, H, W) -> normalised float (B, 3, H, W)."""
TrainingBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""(images, modality, pids, cams) as `training_losses` takes them."""
_UNTIMED = nullcontext()


def untimed(phase: str) -> AbstractContextManager[Any]:
    """The default phase timer: every section is a no-op."""
    return _UNTIMED


class ReIDMethod(nn.Module, abc.ABC):
    """Base class of every registered method (see the module docstring for the contract)."""

    test_similarity: ClassVar[TestSimilarity] = "cosine"
    """How evaluation compares test features (harness.evaluation `similarity`): "cosine" or "dot"."""

    def __init__(self) -> None:
        super().__init__()
        self.phase_timer: PhaseTimerLike = untimed

    @abc.abstractmethod
    def training_losses(self, images: torch.Tensor, modality: torch.Tensor, pids: torch.Tensor,
                        cams: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch (modality 0 visible / 1 infrared, pids and cams 0-based)."""

    @abc.abstractmethod
    def test_features(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """(B, D) features that evaluation ranks with."""

    @abc.abstractmethod
    def param_groups(self) -> list[dict[str, Any]]:
        """SGD parameter groups, each with "params", "lr" and "name" (optionally "weight_decay")."""

    def training_batch(self, images: torch.Tensor, modality: torch.Tensor, pids: torch.Tensor, cams: torch.Tensor,
                       *, augment: Augment, generator: torch.Generator) -> TrainingBatch:
        """The batch `training_losses` trains on, from the identity sampler's batch; the default augments it once.

        `images` are the sampler's uint8 (B, 3, H, W) images (P*K visible, then P*K infrared, each
        identity-major), `augment` the configured train augmentation (`train.pad`, `flip`, erasing,
        ...), which draws from `generator`, the trainer's seeded augmentation generator. An override
        may call `augment` more than once (more views) and add its own random operations; those
        draw from `generator` too, batched over the images (no per-image Python loop), so that a
        trial repeats and resumes exactly. The trainer and `vireid bench` both build every batch
        through this method.
        """
        return augment(images), modality, pids, cams

    def compile_network(self, **options: Any) -> None:
        """torch.compile the method's network; methods that support `train.compile` override this."""
        raise ConfigError(f"train.compile=true: method {type(self).__name__} cannot be compiled; "
                          "set train.compile to false")


class NetworkMethod(ReIDMethod):
    """A method around one network `self.net` whose forward returns a dict of named outputs (AGW's
    ReIDNet, DEEN's network): the forward, `train.compile` and the training forward in one place.

    `compile_network` compiles the network's forward as a function that takes the network as an
    argument (not a compiled module, holding no reference to this instance), so checkpoints keep
    the plain parameter names of `net`, a deep copy of the method trains its own network, and
    evaluation and the losses stay eager.
    """

    net: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._compiled_forward: Callable[..., dict[str, torch.Tensor]] | None = None

    def compile_network(self, **options: Any) -> None:
        self._compiled_forward = torch.compile(type(self.net).forward, **options)

    def forward(self, images: torch.Tensor, modality: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(images, modality)

    def network_outputs(self, images: torch.Tensor, modality: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's outputs for training: through the compiled forward where `train.compile` set one."""
        if self._compiled_forward is None:
            return self.net(images, modality)
        return self._compiled_forward(self.net, images, modality)
