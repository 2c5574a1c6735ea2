"""MCLNet (Hao et al., ICCV 2021) and its ablations as one switchable method family.

Switches: `mcm` (modality confusion), `center` ("none" | "center" | "ica"), `cca` (camera-aware
marginal center aggregation). The AGW baseline is every switch off. Named presets are points of
this space; any combination can also be written as `agw+mcm+ica+cca` etc.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import LossConfig, MCMConfig, ModelConfig, TrainConfig
from harness.errors import ConfigError
from methods.agw import ReIDNet, check_agw_network
from methods.base import NetworkMethod
from methods.center_losses import center_loss, marginal_center_loss
from methods.losses import wrt_loss
from methods.mcm import ModalityConfusion
from methods.registry import register_composer, register_method

CENTER_TERMS = ("none", "center", "ica")
MCLNET_CONFIGS = ("model", "loss", "mcm", "train")
"""The config sections an MCLNet-family builder receives."""


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Losses run in float32 under autocast; a float64 network stays float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class MCLNet(NetworkMethod):
    """AGW network + the switchable MCLNet terms (see the module docstring)."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig, mcm_cfg: MCMConfig, train_cfg: TrainConfig, *,
                 num_classes: int, num_cameras: int, mcm: bool = True, center: str = "ica", cca: bool = True) -> None:
        super().__init__()
        self.monitored: dict[str, torch.Tensor] = {}
        """Detached values of the last step that are logged, not trained on (training curves)."""
        if center not in CENTER_TERMS:
            raise ConfigError(f"method switch center={center!r}: expected one of {', '.join(CENTER_TERMS)}")
        self.model_cfg, self.loss_cfg, self.train_cfg = model_cfg, loss_cfg, train_cfg
        self.use_mcm, self.center_term, self.use_cca = mcm, center, cca
        m = model_cfg
        self.net = ReIDNet(m.backbone, num_classes, pretrained=m.pretrained, pretrained_file=m.pretrained_file,
                           non_local=m.non_local, non_local_ratio=m.non_local_ratio, gem_p=m.gem_p,
                           gem_variant=m.gem_variant, last_stride_one=m.last_stride_one, bnneck_init=m.bnneck_init)
        dim = self.net.feature_dim
        authors = loss_cfg.variant == "authors-code"
        if mcm:
            c = mcm_cfg
            self.mcm = ModalityConfusion(dim, hidden=c.hidden, batchnorm_out=c.batchnorm_out, lr=c.lr,
                                         momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov,
                                         confusion_variant=c.confusion_variant)
        if center != "none":
            # Center loss always learns its centers; the public code's ICA centers stay at their random init.
            learn = center == "center" or not authors
            self.id_centers = nn.Parameter(torch.randn(num_classes, dim), requires_grad=learn)
        if cca:
            self.cam_centers = nn.Parameter(torch.randn(num_cameras, dim), requires_grad=not authors)

    def test_features(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.net(images, modality)[self.model_cfg.test_feature]

    def training_losses(self, images: torch.Tensor, modality: torch.Tensor, pids: torch.Tensor,
                        cams: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch; the MCM discriminator is updated here, before L_e."""
        L, phase = self.loss_cfg, self.phase_timer
        with phase("forward"):
            out = self.network_outputs(images, modality)
            pool, bn = _at_least_float32(out["pool"]), _at_least_float32(out["bn"])
        losses = {}
        with phase("ce"):
            losses["ce"] = L.ce_weight * F.cross_entropy(_at_least_float32(out["logits"]), pids,
                                                         label_smoothing=L.label_smoothing)
        with phase("wrt"):
            losses["wrt"] = L.wrt_weight * wrt_loss(pool, pids, variant=L.wrt_variant)
        if self.use_mcm:
            with phase("mcm_update"):
                self.monitored["mcm_discriminator"] = self.mcm.discriminator_step(pool, modality)
            with phase("mcm"):
                losses["mcm"] = L.mcm_weight * self.mcm.confusion_loss(pool)
        if self.center_term == "center":
            with phase("center"):
                losses["center"] = L.center_weight * center_loss(bn, pids, self.id_centers)
        elif self.center_term == "ica":
            with phase("ica"):
                losses["ica"] = L.ica.weight * marginal_center_loss(
                    bn, pids, self.id_centers, sigma=L.ica.sigma, rho=L.ica.rho, variant=L.variant,
                    **({"nearest_weighting": "per-class-8"} if L.variant == "authors-code" else {}))
        if self.use_cca:
            with phase("cca"):
                losses["cca"] = L.cca.weight * marginal_center_loss(
                    bn, cams, self.cam_centers, sigma=L.cca.sigma, rho=L.cca.rho, variant=L.variant,
                    **({"nearest_weighting": "per-sample"} if L.variant == "authors-code" else {}))
        return losses

    def param_groups(self) -> list[dict[str, Any]]:
        """SGD groups: backbone at train.lr, BNNeck/classifier and centers at their own rates."""
        t = self.train_cfg
        groups = self.net.param_groups()
        out = [{"params": groups["backbone"], "lr": t.lr, "name": "backbone"},
               {"params": groups["head"], "lr": t.head_lr, "name": "head"}]
        centers = [p for n, p in self.named_parameters(recurse=False) if p.requires_grad]
        if centers:
            out.append({"params": centers, "lr": t.center_lr, "name": "centers", "weight_decay": 0.0})
        return out


def parse_agw_tokens(tokens: list[str]) -> dict[str, Any]:
    switches: dict[str, Any] = {"mcm": False, "center": "none", "cca": False}
    for tok in tokens:
        if tok == "mcm":
            switches["mcm"] = True
        elif tok == "cca":
            switches["cca"] = True
        elif tok in ("center", "ica"):
            if switches["center"] != "none":
                raise ConfigError(f"method: 'center' and 'ica' are alternatives; got both in agw+{'+'.join(tokens)}")
            switches["center"] = tok
        else:
            raise ConfigError(f"method: unknown switch {tok!r} in agw+{'+'.join(tokens)}; "
                               "accepted switches: mcm, center, ica, cca")
    return switches


_PRESET = dict(configs=MCLNET_CONFIGS, check=check_agw_network)


# decorators apply bottom-up: `vireid methods` lists agw first
@register_method("mclnet-no-mcm", description="MCLNet without MCM: AGW + ICA + CCA", mcm=False, center="ica",
                 cca=True, **_PRESET)
@register_method("mclnet", description="MCLNet: AGW + MCM + ICA + CCA (full method)", mcm=True, center="ica",
                 cca=True, **_PRESET)
@register_method("agw+mcm+ica", description="AGW + MCM + identity-aware marginal center aggregation",
                 mcm=True, center="ica", cca=False, **_PRESET)
@register_method("agw+mcm+center", description="AGW + MCM + center loss (ablation: center loss instead of ICA)",
                 mcm=True, center="center", cca=False, **_PRESET)
@register_method("agw+mcm", description="AGW + modality confusion module", mcm=True, center="none", cca=False,
                 **_PRESET)
@register_method("agw", description="AGW baseline: two-stream, non-local, GeM, BNNeck; CE + WRT",
                 mcm=False, center="none", cca=False, **_PRESET)
def build_mclnet(*, model_cfg: ModelConfig, loss_cfg: LossConfig, mcm_cfg: MCMConfig, train_cfg: TrainConfig,
                 num_classes: int, num_cameras: int, **switches: Any) -> MCLNet:
    """An MCLNet-family method with the given switches (mcm, center, cca)."""
    return MCLNet(model_cfg, loss_cfg, mcm_cfg, train_cfg, num_classes=num_classes, num_cameras=num_cameras,
                  **switches)


register_composer("agw", parse=parse_agw_tokens, builder=build_mclnet, tokens_help="mcm|center|ica|cca joined by +",
                  configs=MCLNET_CONFIGS, check=check_agw_network)
