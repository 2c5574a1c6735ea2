"""CAJ (Ye et al., ICCV 2021: channel augmented joint learning) as one switchable method family.

The network is AGW's (`methods.agw.ReIDNet`, any timm backbone). Two switches:

* `channel_aug`: each visible image of a batch is trained on twice, the second time as a
  channel-exchanged view (its own crop, flip and erasing, then one of its channels copied to all
  three: `harness.data.augment.channel_exchange`), and every infrared image gets the
  channel-adaptive gray augmentation (`channel_adaptive_gray`). The batch is visible +
  exchanged visible + infrared, labels repeated, both visible views through the visible stem:
  the joint learning of the CAJ code. Settings: `train.channel_aug`.
* `triplet`: "adp", the enhanced squared difference (`methods.losses.adp_loss`, `loss.adp`), or
  "wrt", AGW's weighted regularised triplet (`loss.wrt_weight`, `loss.wrt_variant`).

Losses: `loss.ce_weight` x identity cross-entropy + the triplet on the pooled feature +
`loss.kl_weight` x the KL term between the plain visible and the infrared identity predictions
(0 by default, as the code's `--kl`). Presets: `caj` (both switches on), `caj+wrt` (channel
augmentation with WRT), `caj+no-ca` (ADP without channel augmentation); any combination as
`caj+<wrt|no-ca>` (`caj+no-ca+wrt` is the AGW baseline).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.config import LossConfig, ModelConfig, TrainConfig
from harness.data.augment import channel_adaptive_gray, channel_exchange
from harness.data.splits import MODALITY_INFRARED, MODALITY_VISIBLE
from harness.errors import ConfigError
from methods.agw import ReIDNet, check_agw_network
from methods.base import Augment, NetworkMethod, TrainingBatch
from methods.losses import adp_loss, kl_divergence_loss, wrt_loss
from methods.registry import register_composer, register_method

TRIPLETS = ("adp", "wrt")
CAJ_CONFIGS = ("model", "loss", "train")
"""The config sections a CAJ-family builder receives."""
KL_TEMPERATURE = 3.0
"""The temperature of the CAJ code's KL term."""


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Losses run in float32 under autocast; a float64 network stays float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class CAJ(NetworkMethod):
    """AGW network + CAJ's channel augmentation and triplet (see the module docstring)."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig, train_cfg: TrainConfig, *, num_classes: int,
                 channel_aug: bool = True, triplet: str = "adp") -> None:
        super().__init__()
        if triplet not in TRIPLETS:
            raise ConfigError(f"method switch triplet={triplet!r}: expected one of {', '.join(TRIPLETS)}")
        self.model_cfg, self.loss_cfg, self.train_cfg = model_cfg, loss_cfg, train_cfg
        self.channel_aug, self.triplet = channel_aug, triplet
        m = model_cfg
        self.net = ReIDNet(m.backbone, num_classes, pretrained=m.pretrained, pretrained_file=m.pretrained_file,
                           non_local=m.non_local, non_local_ratio=m.non_local_ratio, gem_p=m.gem_p,
                           last_stride_one=m.last_stride_one, bnneck_init=m.bnneck_init)

    def test_features(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.net(images, modality)[self.model_cfg.test_feature]

    def training_batch(self, images: torch.Tensor, modality: torch.Tensor, pids: torch.Tensor, cams: torch.Tensor,
                       *, augment: Augment, generator: torch.Generator) -> TrainingBatch:
        """Visible, channel-exchanged visible, channel-augmented infrared (with `channel_aug`; else augmented once).

        Each view has its own crop, flip and erasing draws (`augment` is called once for the whole
        batch and once more for the visible images); the channel operations act on the normalised,
        erased images, as in the CAJ code.
        """
        augmented = augment(images)
        if not self.channel_aug:
            return augmented, modality, pids, cams
        settings = self.train_cfg.channel_aug
        visible = modality == MODALITY_VISIBLE
        infrared = ~visible
        exchanged = channel_exchange(augment(images[visible]), generator, grayscale=settings.exchange_grayscale)
        thermal = channel_adaptive_gray(augmented[infrared], generator, p=settings.adaptive_gray_p)

        def views(values: torch.Tensor) -> torch.Tensor:
            return torch.cat([values[visible], values[visible], values[infrared]])

        return torch.cat([augmented[visible], exchanged, thermal]), views(modality), views(pids), views(cams)

    def training_losses(self, images: torch.Tensor, modality: torch.Tensor, pids: torch.Tensor,
                        cams: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch as `training_batch` builds it (any visible/infrared batch works)."""
        L, phase = self.loss_cfg, self.phase_timer
        with phase("forward"):
            out = self.network_outputs(images, modality)
            pool, logits = _at_least_float32(out["pool"]), _at_least_float32(out["logits"])
        losses = {}
        with phase("ce"):
            losses["ce"] = L.ce_weight * F.cross_entropy(logits, pids, label_smoothing=L.label_smoothing)
        if self.triplet == "adp":
            with phase("adp"):
                a = L.adp
                losses["adp"] = a.weight * adp_loss(pool, pids, alpha=a.alpha, gamma=a.gamma, square=a.square,
                                                    variant=a.variant)
        else:
            with phase("wrt"):
                losses["wrt"] = L.wrt_weight * wrt_loss(pool, pids, variant=L.wrt_variant)
        if L.kl_weight > 0:
            with phase("kl"):
                # the code's pairing: the first n rows (plain visible views) against the last n (infrared),
                # row i of each from the same identity (the sampler's identity-major layout)
                n = int((modality == MODALITY_INFRARED).sum())
                losses["kl"] = L.kl_weight * kl_divergence_loss(logits[:n], logits[-n:], temperature=KL_TEMPERATURE)
        return losses

    def param_groups(self) -> list[dict[str, Any]]:
        """SGD groups: backbone (+ non-local, GeM) at train.lr, BNNeck and classifier at train.head_lr."""
        t = self.train_cfg
        groups = self.net.param_groups()
        return [{"params": groups["backbone"], "lr": t.lr, "name": "backbone"},
                {"params": groups["head"], "lr": t.head_lr, "name": "head"}]


def parse_caj_tokens(tokens: list[str]) -> dict[str, Any]:
    """`caj+<tokens>`: from the full method, `wrt` swaps ADP for WRT, `no-ca` drops the channel augmentation."""
    switches: dict[str, Any] = {"channel_aug": True, "triplet": "adp"}
    for tok in tokens:
        if tok == "wrt":
            switches["triplet"] = "wrt"
        elif tok == "no-ca":
            switches["channel_aug"] = False
        else:
            raise ConfigError(f"method: unknown switch {tok!r} in caj+{'+'.join(tokens)}; "
                              "accepted switches: wrt, no-ca")
    return switches


_PRESET = dict(configs=CAJ_CONFIGS, check=check_agw_network)


# decorators apply bottom-up: `vireid methods` lists caj first
@register_method("caj+no-ca", description="CAJ ablation: ADP without channel augmentation", channel_aug=False,
                 triplet="adp", **_PRESET)
@register_method("caj+wrt", description="CAJ ablation: channel augmentation with WRT instead of ADP",
                 channel_aug=True, triplet="wrt", **_PRESET)
@register_method("caj", description="CAJ: AGW network + channel augmentation (exchanged visible view, infrared "
                 "channel/gray) + ADP triplet", channel_aug=True, triplet="adp", **_PRESET)
def build_caj(*, model_cfg: ModelConfig, loss_cfg: LossConfig, train_cfg: TrainConfig, num_classes: int,
              num_cameras: int, **switches: Any) -> CAJ:
    """A CAJ-family method with the given switches (channel_aug, triplet)."""
    return CAJ(model_cfg, loss_cfg, train_cfg, num_classes=num_classes, **switches)


register_composer("caj", parse=parse_caj_tokens, builder=build_caj, tokens_help="wrt|no-ca joined by +",
                  configs=CAJ_CONFIGS, check=check_agw_network)
