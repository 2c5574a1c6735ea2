"""Modality Confusion Module: a modality discriminator M trained against the feature extractor.

Each iteration alternates two updates:
1. ``discriminator_step(features, modality)``: M learns the true modality from DETACHED
   features; only M's parameters move, with M's own optimiser.
2. ``confusion_loss(features)``: the loss pushes the features towards the confused label
   [0.5, 0.5] and, after the caller's backward, puts gradient into the extractor only. Which
   output of M it is computed from is `confusion_variant`:

   - ``updated``: M's output recomputed with the updated M, frozen (detached parameters, scratch
     copies of its buffers).
   - ``authors-code``: what the authors' code (bitreidgroup/Modality-Confusion-Learning,
     train.py) computes. It takes L_e from M's output of the step's single forward, i.e. from
     BEFORE M's update, and backpropagates it after the update: on its PyTorch 1.2 the
     optimiser's in-place update (through ``.data``, which bypasses autograd's version check)
     changed the weights saved for that backward. So the loss value, every activation, M's
     output BatchNorm's batch statistics and the softmax are those of the pre-update M, while
     the gradient passes each layer of M with its UPDATED weights (a Linear layer's input
     gradient is grad @ W_updated; BatchNorm's uses gamma_updated with the pre-update batch
     statistics). The same code raises on current PyTorch; here each layer is evaluated with
     the updated weights for the gradient and its value replaced, outside the graph, by the
     pre-update one (a snapshot of M taken by ``discriminator_step``). Exact for M's layers
     (Linear, BatchNorm1d), whose input gradient depends only on the layer's input and weights.

M's parameters belong to M's optimiser alone: keep them out of the extractor's optimiser.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from harness.errors import ConfigError, InputError
from methods.losses import modality_classification_loss, modality_confusion_loss

CONFUSION_VARIANTS = ("updated", "authors-code")
"""Which output of M the confusion loss L_e is computed from (see the module docstring)."""


def _at_least_float32(features: torch.Tensor) -> torch.Tensor:
    """M runs outside autocast in float32, or float64 when the network is float64."""
    return features.to(torch.promote_types(features.dtype, torch.float32))


def _detached_copy(module: nn.Module, *, share: bool = False) -> dict[str, torch.Tensor]:
    """Parameters and buffers of `module`, outside autograd; buffers always copied (a forward may update them).

    `share=True` keeps the parameters' storage (the live values, frozen); otherwise they are copied too.
    """
    params = {name: p.detach() if share else p.detach().clone() for name, p in module.named_parameters()}
    return params | {name: b.detach().clone() for name, b in module.named_buffers()}


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
        confusion_variant: str = "updated",
    ) -> None:
        super().__init__()
        if confusion_variant not in CONFUSION_VARIANTS:
            raise ConfigError(f"MCM confusion_variant must be one of {', '.join(CONFUSION_VARIANTS)}; "
                              f"got {confusion_variant!r}")
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise InputError(
                f"MCM optimiser needs lr > 0, momentum >= 0, weight_decay >= 0; got lr={lr}, momentum={momentum}, "
                f"weight_decay={weight_decay}"
            )
        self.in_dim = in_dim
        self.confusion_variant = confusion_variant
        self._before_update: dict[str, torch.Tensor] | None = None
        """authors-code: M's parameters and buffers before the last discriminator step, until L_e is taken."""
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
        if self.confusion_variant == "authors-code":
            self._before_update = _detached_copy(self.classifier)
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
        """L_e on the live features with M frozen: gradient flows to the extractor, never into M.

        `updated`: from M's output recomputed with the updated M. `authors-code`: from M's output
        before the last `discriminator_step` (on the same features), its gradient through the
        updated weights (the module docstring says why).
        """
        self._check(features)
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = _at_least_float32(features)
            if self.confusion_variant == "updated":
                logits = functional_call(self.classifier, _detached_copy(self.classifier, share=True), (x,))
            else:
                logits = self._pre_update_logits(x)
            return modality_confusion_loss(logits)

    def _pre_update_logits(self, x: torch.Tensor) -> torch.Tensor:
        """M's output before its update in value; its backward through each layer with the updated weights."""
        before, self._before_update = self._before_update, None
        if before is None:
            raise InputError("MCM confusion_variant 'authors-code' takes L_e from M's output before its update: "
                             "call discriminator_step on the batch first")
        for index, layer in enumerate(self.classifier.layers):
            prefix = f"layers.{index}."
            updated = functional_call(layer, _detached_copy(layer, share=True), (x,))
            with torch.no_grad():
                earlier = {name.removeprefix(prefix): t.clone() for name, t in before.items()
                           if name.startswith(prefix)}
                value = functional_call(layer, earlier, (x,))
            # the pre-update value, with the gradient of the layer under its updated weights
            x = updated + (value - updated).detach()
        return x

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Modality logits of M (for evaluation and inspection)."""
        return self.classifier(features)

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "optimizer" not in state:
            raise InputError("MCM checkpoint state lacks its 'optimizer' entry")
        self.optimizer.load_state_dict(state["optimizer"])
