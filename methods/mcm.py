"""Modality Confusion Module: a modality discriminator M trained against the feature extractor.

Each iteration alternates two updates:
1. ``discriminator_step(features, modality)``: M learns the true modality from DETACHED
   features; only M's parameters move, with M's own optimiser.
2. ``confusion_loss(features)``: M's output is recomputed with M frozen (detached parameters,
   scratch copies of its buffers); the loss pushes the features towards the confused label
   [0.5, 0.5] and, after the caller's backward, puts gradient into the extractor only.

M's parameters belong to M's optimiser alone: keep them out of the extractor's optimiser.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from harness.errors import ConfigError, InputError
from methods.losses import modality_classification_loss, modality_confusion_loss


def _at_least_float32(features: torch.Tensor) -> torch.Tensor:
    """M runs outside autocast in float32, or float64 when the network is float64."""
    return features.to(torch.promote_types(features.dtype, torch.float32))


class ModalityClassifier(nn.Module):
    """Linear(in, hidden) -> Linear(hidden, 2) [-> BatchNorm1d(2)], no nonlinearity (as published)."""

    def __init__(self, in_dim: int = 2048, hidden: int = 128, batchnorm_out: bool = False) -> None:
        super().__init__()
        if in_dim < 1 or hidden < 1:
            raise ConfigError("ModalityClassifier needs in_dim >= 1 and hidden >= 1; "
                              f"got in_dim={in_dim}, hidden={hidden}")
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.Linear(hidden, 2)]
        if batchnorm_out:
            layers.append(nn.BatchNorm1d(2))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class ModalityConfusion(nn.Module):
    """Owns the modality classifier M and its SGD optimiser; the optimiser state is part of state_dict."""

    def __init__(
        self,
        in_dim: int = 2048,
        hidden: int = 128,
        *,
        batchnorm_out: bool = False,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = True,
    ) -> None:
        super().__init__()
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise InputError(
                f"MCM optimiser needs lr > 0, momentum >= 0, weight_decay >= 0; got lr={lr}, momentum={momentum}, "
                f"weight_decay={weight_decay}"
            )
        self.in_dim = in_dim
        self.classifier = ModalityClassifier(in_dim, hidden, batchnorm_out)
        self.optimizer = torch.optim.SGD(
            self.classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
            nesterov=nesterov and momentum > 0,
        )

    def _check(self, features: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.in_dim:
            raise InputError(f"MCM expects features of shape (N, {self.in_dim}); got {tuple(features.shape)}")

    def discriminator_step(self, features: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """One update of M towards the true modality (0 visible, 1 infrared); returns the loss L_m.

        The loss comes back as a detached 0-dim tensor, not a Python float, so the step does not
        wait for the device.
        """
        self._check(features)
        if modality.shape != features.shape[:1]:
            raise InputError(f"modality must have shape ({features.shape[0]},); got {tuple(modality.shape)}")
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=features.device.type, enabled=False):
            logits = self.classifier(_at_least_float32(features.detach()))
            loss = modality_classification_loss(logits, modality.long())
        loss.backward()
        self.optimizer.step()
        # no stale gradient may reach another optimiser that sees these parameters
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def confusion_loss(self, features: torch.Tensor) -> torch.Tensor:
        """L_e on the live features with M frozen: gradient flows to the extractor, never into M."""
        self._check(features)
        frozen = {name: p.detach() for name, p in self.classifier.named_parameters()}
        # scratch buffers: the second forward must not advance M's running statistics
        frozen.update({name: b.detach().clone() for name, b in self.classifier.named_buffers()})
        with torch.autocast(device_type=features.device.type, enabled=False):
            logits = functional_call(self.classifier, frozen, (_at_least_float32(features),))
            return modality_confusion_loss(logits)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Modality logits of M (for evaluation and inspection)."""
        return self.classifier(features)

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "optimizer" not in state:
            raise InputError("MCM checkpoint state lacks its 'optimizer' entry")
        self.optimizer.load_state_dict(state["optimizer"])
