"""DEEN's modules (Zhang & Wang, CVPR 2023): diverse embedding expansion and multistage aggregation.

* `DEEModule`: from a stage's feature map x, each of `branches` branches generates a new map
  (the mean of dilated 3x3 convolutions to C/reduction channels, ReLU, a 1x1 convolution back to
  C); the output stacks x and the generated maps along the batch: (B, ...) -> ((1 + branches) B, ...).
* `CNL` (channel non-local) and `PNL` (pixel non-local) attend from a stage's output x_h to its
  input x_l; `MFABlock` applies both (multistage feature aggregation). Each ends in a BatchNorm
  initialised to zero, so each block starts as the identity on x_h.

Channels and strides come from the backbone's stages (methods.deen traces them), so the modules
sit on any timm backbone whose stages produce (B, C, H, W) maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import ConfigError

PNL_RESHAPES = ("authors-code", "per-position")


def _kaiming_fan_in(conv: nn.Conv2d) -> nn.Conv2d:
    """The authors' weights_init_kaiming for convolutions (the bias keeps torch's default init)."""
    nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
    return conv


def _zero_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    nn.init.zeros_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


class DEEBranch(nn.Module):
    """One generated embedding: mean of dilated 3x3 convolutions (C -> inner), ReLU, 1x1 (inner -> C)."""

    def __init__(self, channels: int, inner: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.dilated = nn.ModuleList(
            _kaiming_fan_in(nn.Conv2d(channels, inner, 3, padding=d, dilation=d, bias=False)) for d in dilations)
        self.project = _kaiming_fan_in(nn.Conv2d(inner, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.dilated[0](x)
        for conv in self.dilated[1:]:
            total = total + conv(x)
        return self.project(F.relu(total / len(self.dilated)))


class DEEModule(nn.Module):
    """Diverse embedding expansion: the input and `branches` generated maps, stacked along the batch."""

    def __init__(self, channels: int, *, branches: int = 2, dilations: Sequence[int] = (1, 2, 3),
                 reduction: int = 4, dropout: float = 0.01) -> None:
        super().__init__()
        if channels < reduction:
            raise ConfigError(f"deen.reduction={reduction}: the expanded stage has only {channels} channels; "
                              "a DEE branch needs at least one inner channel")
        self.branches = nn.ModuleList(DEEBranch(channels, channels // reduction, dilations) for _ in range(branches))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.cat([x] + [branch(x) for branch in self.branches], dim=0))


class CNL(nn.Module):
    """Channel non-local block: attention between the C_l channels of x_l and of x_h's projection.

    z = x_h + W(A g(x_l)), A = theta(x_h) phi(x_l)^T / C_l over the flattened positions, where
    phi and W stride over x_l's resolution to x_h's (stride 1 where both have one resolution).
    """

    def __init__(self, high: int, low: int, stride: int = 1) -> None:
        super().__init__()
        self.low = low
        self.g = nn.Conv2d(low, low, 1)
        self.theta = nn.Conv2d(high, low, 1)
        self.phi = nn.Conv2d(low, low, 1, stride=stride)
        self.W = nn.Sequential(nn.Conv2d(low, high, 1, stride=stride), _zero_bn(high))

    def forward(self, x_h: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        batch = x_h.shape[0]
        g = self.g(x_l).flatten(2)  # (B, C_l, N_l)
        theta = self.theta(x_h).flatten(2)  # (B, C_l, N_h)
        phi = self.phi(x_l).flatten(2)  # (B, C_l, N_h)
        attention = torch.bmm(theta, phi.transpose(1, 2)) / self.low  # (B, C_l, C_l)
        y = torch.bmm(attention, g).view(batch, self.low, *x_l.shape[2:])
        return x_h + self.W(y)


class PNL(nn.Module):
    """Pixel non-local block: attention from x_h's positions to x_l's, through C_l / 2 channels.

    z = x_h + W(y), y = A g(x_l), A = theta(x_h) phi(x_l)^T / (columns of A). `reshape`:
    "per-position" attends between the N_h and N_l positions (rows of C_l / 2 features);
    "authors-code" reads each (C_l / 2, H, W) map as (C_l, H W / 2), as the authors' PNL does, so
    rows are half-maps of 2 x C_l / 2 values (needs C_l / 2 x N even for every map it reads).
    """

    def __init__(self, high: int, low: int, *, reduction: int = 2, reshape: str = "authors-code") -> None:
        super().__init__()
        if reshape not in PNL_RESHAPES:
            raise ConfigError(f"deen.pnl_reshape: expected one of {', '.join(PNL_RESHAPES)}; got {reshape!r}")
        self.low, self.inner, self.reshape = low, low // reduction, reshape
        if self.inner < 1:
            raise ConfigError(f"PNL needs at least {reduction} low-level channels; got {low}")
        self.g = nn.Conv2d(low, self.inner, 1)
        self.theta = nn.Conv2d(high, self.inner, 1)
        self.phi = nn.Conv2d(low, self.inner, 1)
        self.W = nn.Sequential(nn.Conv2d(self.inner, high, 1), _zero_bn(high))

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C', H, W) -> (B, rows, features): one row per attended element."""
        if self.reshape == "authors-code":
            return x.reshape(x.shape[0], self.low, -1).transpose(1, 2)
        return x.flatten(2).transpose(1, 2)

    def forward(self, x_h: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        g = self._rows(self.g(x_l))  # (B, R_l, F)
        theta = self._rows(self.theta(x_h))  # (B, R_h, F)
        phi = self._rows(self.phi(x_l))  # (B, R_l, F)
        attention = torch.bmm(theta, phi.transpose(1, 2)) / phi.shape[1]  # (B, R_h, R_l)
        y = torch.bmm(attention, g).transpose(1, 2)  # (B, F, R_h)
        y = y.reshape(x_h.shape[0], self.inner, *x_h.shape[2:])
        return x_h + self.W(y)


class MFABlock(nn.Module):
    """Multistage feature aggregation after a stage: CNL then PNL, from the stage's output to its input."""

    def __init__(self, high: int, low: int, stride: int = 1, *, pnl_reshape: str = "authors-code") -> None:
        super().__init__()
        self.CNL = CNL(high, low, stride)
        self.PNL = PNL(high, low, reshape=pnl_reshape)

    def forward(self, x_h: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        return self.PNL(self.CNL(x_h, x_l), x_l)


class ExpandedStage(nn.Module):
    """A backbone stage followed by its MFA block (from the stage's output to its input) and/or DEE."""

    def __init__(self, stage: nn.Module, mfa: MFABlock | None, dee: DEEModule | None) -> None:
        super().__init__()
        self.stage, self.mfa, self.dee = stage, mfa, dee

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stage(x)
        if self.mfa is not None:
            y = self.mfa(y, x)
        if self.dee is not None:
            y = self.dee(y)
        return y
