"""The AGW re-ID network: two-stream timm backbone, non-local blocks, GeM pooling, BNNeck."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.errors import ConfigError, HarnessError
from methods.backbones import ModalityRouting, TwoStreamBackbone

if TYPE_CHECKING:  # pragma: no cover
    from harness.config import TrialConfig


class NonLocalBlock(nn.Module):
    """Embedded-dot-product non-local block without softmax (attention scaled by 1/(H*W)).

    y = x + W(z), z_i = (1/N) sum_j (theta(x_i) . phi(x_j)) g(x_j); W is a 1x1 conv followed by
    a BatchNorm whose weight and bias start at zero, so the block starts as the identity.
    """

    def __init__(self, in_channels: int, inner_channels: int) -> None:
        super().__init__()
        if in_channels < 1 or inner_channels < 1:
            raise ConfigError(
                "NonLocalBlock needs positive channel counts; "
                f"got in_channels={in_channels}, inner_channels={inner_channels}"
            )
        self.in_channels = in_channels
        self.inner_channels = inner_channels
        self.theta = nn.Conv2d(in_channels, inner_channels, kernel_size=1)
        self.phi = nn.Conv2d(in_channels, inner_channels, kernel_size=1)
        self.g = nn.Conv2d(in_channels, inner_channels, kernel_size=1)
        self.W = nn.Sequential(nn.Conv2d(inner_channels, in_channels, kernel_size=1), nn.BatchNorm2d(in_channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        positions = height * width
        theta = self.theta(x).flatten(2)  # (B, C', N)
        phi = self.phi(x).flatten(2)
        g = self.g(x).flatten(2)
        # without softmax the product is associative: take the cheaper order
        if positions <= self.inner_channels:
            affinity = torch.bmm(theta.transpose(1, 2), phi) / positions  # (B, N, N)
            z = torch.bmm(g, affinity.transpose(1, 2))  # (B, C', N)
        else:
            context = torch.bmm(g, phi.transpose(1, 2)) / positions  # (B, C', C')
            z = torch.bmm(context, theta)  # (B, C', N)
        z = z.reshape(batch, self.inner_channels, height, width)
        return x + self.W(z)


def insert_non_local(
    backbone: TwoStreamBackbone,
    ratio: float = 0.5,
    layer2_blocks: int = 2,
    layer3_blocks: int = 3,
) -> list[str]:
    """Place non-local blocks after the last blocks of ResNet layer2 / layer3 (AGW positions).

    Each chosen block becomes ``nn.Sequential(block, NonLocalBlock)`` (`TwoStreamBackbone.insert_after`,
    so an exported backbone keeps timm's names). A stage with fewer
    blocks than requested (ResNet-18 layer2/layer3, test models) gets one after each of its
    blocks. Returns the positions, e.g. ``["layer2.2", "layer2.3", ...]``.
    """
    if not 0 < ratio <= 1:
        raise ConfigError(f"non_local_ratio must be in (0, 1]; got {ratio}")
    if layer2_blocks < 0 or layer3_blocks < 0:
        raise ConfigError(f"non-local block counts must be >= 0; got layer2={layer2_blocks}, layer3={layer3_blocks}")
    stages = backbone.blocks_for_nonlocal()
    positions: list[str] = []
    for stage_name, wanted in (("layer2", layer2_blocks), ("layer3", layer3_blocks)):
        stage = stages[stage_name]
        channels = backbone.stage_channels(stage_name)
        inner = max(1, int(channels * ratio))
        for index in range(max(0, len(stage) - wanted), len(stage)):
            backbone.insert_after(f"{stage_name}.{index}", NonLocalBlock(channels, inner))
            positions.append(f"{stage_name}.{index}")
    return positions


GEM_VARIANTS = ("paper", "authors-code")
AUTHORS_GEM_OFFSET = 1e-12
"""The MCLNet/AGW code pools (mean(x^p) + 1e-12)^(1/p)."""


class GeM(nn.Module):
    """Generalised-mean pooling over H, W, in float32 or wider (float64 stays).

    `variant="paper"` (Radenovic et al.'s form): (mean(clamp(x, eps)^p))^(1/p). `variant="authors-code"`
    (the MCLNet and AGW code): (mean(x^p) + 1e-12)^(1/p), unclamped: it expects the non-negative maps
    of a ReLU network (a ResNet's), a negative mean gives NaN. The two differ where a channel is
    (nearly) zero everywhere: 1e-4 there against eps = 1e-6 here.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False, variant: str = "paper") -> None:
        super().__init__()
        if p <= 0:
            raise ConfigError(f"GeM power p must be > 0; got {p}")
        if variant not in GEM_VARIANTS:
            raise ConfigError(f"GeM variant must be one of {', '.join(GEM_VARIANTS)}; got {variant!r}")
        self.variant = variant
        value = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # at least float32: x^p overflows half precision under autocast
        dtype = torch.promote_types(x.dtype, torch.float32)
        p = self.p.to(dtype)
        if self.variant == "authors-code":
            return (x.to(dtype).pow(p).mean(dim=(-2, -1)) + AUTHORS_GEM_OFFSET).pow(1.0 / p)
        return x.to(dtype).clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


BNNECK_INITS = ("ones", "normal")


class BNNeck(nn.Module):
    """BatchNorm1d with a frozen zero bias, then a bias-free identity classifier on the BN feature.

    `init="ones"`: BN weight 1 (torch's default); `init="normal"`: BN weight drawn from N(1, 0.01)
    as the AGW/MCLNet code's weights_init_kaiming does. The bias starts at 0 either way.
    """

    def __init__(self, dim: int, num_classes: int, *, init: str = "ones") -> None:
        super().__init__()
        if dim < 1 or num_classes < 1:
            raise ConfigError(f"BNNeck needs dim >= 1 and num_classes >= 1; got dim={dim}, num_classes={num_classes}")
        if init not in BNNECK_INITS:
            raise ConfigError(f"BNNeck init must be one of {', '.join(BNNECK_INITS)}; got {init!r}")
        self.bn = nn.BatchNorm1d(dim)
        if init == "normal":
            nn.init.normal_(self.bn.weight, mean=1.0, std=0.01)
        else:
            nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn_feature = self.bn(feature)
        return bn_feature, self.classifier(bn_feature)


class ReIDNet(nn.Module):
    """AGW network over any timm backbone; returns pooled, BN feature and identity logits."""

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        *,
        pretrained: str | None = None,
        pretrained_file: str | None = None,
        non_local: bool = True,
        non_local_ratio: float = 0.5,
        gem_p: float = 3.0,
        gem_variant: str = "paper",
        last_stride_one: bool = True,
        bnneck_init: str = "ones",
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.backbone = TwoStreamBackbone(
            backbone_name, pretrained=pretrained, pretrained_file=pretrained_file, last_stride_one=last_stride_one,
            **timm_kwargs
        )
        self.non_local_positions: list[str] = (
            insert_non_local(self.backbone, ratio=non_local_ratio) if non_local else []
        )
        self.pool = GeM(p=gem_p, variant=gem_variant)
        self.feature_dim: int = self.backbone.num_features
        self.neck = BNNeck(self.feature_dim, num_classes, init=bnneck_init)

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> dict[str, torch.Tensor]:
        """pool (B, C): GeM feature (metric losses); bn (B, C): BNNeck feature; logits (B, num_classes)."""
        pooled = self.pool(self.backbone(x, modality))
        bn_feature, logits = self.neck(pooled)
        return {"pool": pooled, "bn": bn_feature, "logits": logits}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split for separate learning rates: backbone (+ non-local, GeM) and head
        (BNNeck + classifier)."""
        head_ids = {id(p) for p in self.neck.parameters()}
        backbone = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        head = [p for p in self.neck.parameters() if p.requires_grad]
        return {"backbone": backbone, "head": head}


def check_network_input(backbone_name: str, height: int, width: int, *, non_local: bool = True,
                        non_local_ratio: float = 0.5, last_stride_one: bool = True) -> None:
    """Raise ConfigError when the network cannot be built or cannot take (height, width) images.

    The network is built on the meta device and one batch's shapes are propagated through it: no
    weights are allocated and nothing is computed, so the check costs milliseconds even for
    ResNet-50 and runs for every grid point before anything trains.
    """
    try:
        with torch.device("meta"):
            net = ReIDNet(backbone_name, 2, non_local=non_local, non_local_ratio=non_local_ratio,
                          last_stride_one=last_stride_one)
            images = torch.empty(2, 3, height, width)
            net.backbone._set_routing(ModalityRouting(2, None, None, (2, 0)))
            features = net.backbone._to_map(net.backbone.model.forward_features(images), (height, width))
    except HarnessError as exc:
        raise ConfigError(f"model.backbone={backbone_name!r}: {exc}") from None
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ConfigError(
            f"data.height x data.width = {height}x{width}: backbone {backbone_name!r} cannot take this input size "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if features.dim() != 4 or 0 in features.shape:
        raise ConfigError(f"data.height x data.width = {height}x{width}: backbone {backbone_name!r} leaves an empty "
                          f"feature map {tuple(features.shape)}; use a larger input size")


check_network_input_cached = functools.lru_cache(maxsize=256)(check_network_input)


def check_agw_network(cfg: TrialConfig) -> None:
    """The AGW network of `cfg.model` at `cfg.data`'s input size (the MCLNet family's registered check)."""
    m = cfg.model
    check_network_input_cached(m.backbone, cfg.data.height, cfg.data.width, non_local=m.non_local,
                               non_local_ratio=m.non_local_ratio, last_stride_one=m.last_stride_one)
