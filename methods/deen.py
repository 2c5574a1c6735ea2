"""DEEN (Zhang & Wang, "Diverse Embedding Expansion Network and Low-Light Cross-Modality Benchmark
for Visible-Infrared Person Re-identification", CVPR 2023) as a switchable method family.

The network is a two-stream timm backbone (modality-specific stem, shared stages). After every
stage but the last an MFA block (`mfa`) aggregates the stage's output with its input; after the
second-to-last stage DEE (`dee`) generates `deen.branches` further embeddings, stacked along the
batch, so the last stage, the average pooling and the BNNeck see (1 + branches) x B rows. Losses:
identity cross-entropy and the hard-mining triplet on every embedding, CPM between the original
and each generated embedding (`cpm`), orthogonality between the generated ones (`ort`). The test
feature is the L2-normalised pooled and BN features of every embedding, side by side, compared by
their plain dot product (`test_similarity = "dot"`): the sum of the parts' cosines, as the
authors' test code scores.

Switches: `dee`, `mfa`, `cpm`, `ort` (CPM and orthogonality need DEE). The baseline `deen-base`
has every switch off; named presets are the ablations; any combination is `deen-base+dee+mfa` etc.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import DataConfig, DEENConfig, LossConfig, ModelConfig, TrainConfig, TrialConfig
from harness.errors import ConfigError, HarnessError
from methods.agw import BNNeck
from methods.backbones import ModalityRouting, TwoStreamBackbone, find_stem_module_names
from methods.base import NetworkMethod
from methods.deen_losses import cpm_loss, hard_triplet_loss, orthogonality_loss
from methods.deen_modules import DEEModule, ExpandedStage, MFABlock
from methods.registry import register_composer, register_method

DEEN_CONFIGS = ("data", "model", "loss", "train", "deen")
"""The config sections a DEEN-family builder receives."""
SWITCHES = ("dee", "mfa", "cpm", "ort")


@dataclass(frozen=True)
class Stage:
    """A backbone stage (a timm feature_info module outside the stem) and its map shapes (C, H, W)."""

    name: str
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]

    @property
    def stride(self) -> int:
        return max(1, round(self.input_shape[1] / self.output_shape[1]))


def trace_stages(backbone: str, height: int, width: int, *, last_stride_one: bool = True) -> list[Stage]:
    """The stages of `backbone` with their input and output map shapes at height x width (on the meta device)."""
    with torch.device("meta"):
        net = TwoStreamBackbone(backbone, last_stride_one=last_stride_one)
    model = net.model
    stem = set(find_stem_module_names(model))
    names = [info["module"] for info in getattr(model, "feature_info", []) or []
             if isinstance(info, dict) and info.get("module") and info["module"].split(".")[0] not in stem]
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            first = inputs[0] if inputs else None
            if isinstance(first, torch.Tensor) and isinstance(output, torch.Tensor):
                shapes[name] = (tuple(first.shape), tuple(output.shape))
        return hook

    handles = [model.get_submodule(name).register_forward_hook(record(name)) for name in names]
    try:
        net._set_routing(ModalityRouting(1, None, None, (1, 0)))
        model.forward_features(torch.empty(1, 3, height, width, device="meta"))
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ConfigError(f"data.height x data.width = {height}x{width}: backbone {backbone!r} cannot take this "
                          f"input size ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    finally:
        for handle in handles:
            handle.remove()
    stages = []
    for name in names:
        if name not in shapes:
            continue
        (inputs, outputs) = shapes[name]
        if len(inputs) != 4 or len(outputs) != 4:
            raise ConfigError(f"method DEEN: stage {name!r} of {backbone!r} gives {len(outputs)}-D outputs; its "
                              "modules need (B, C, H, W) maps (convolutional backbones: ResNet, ConvNeXt, ...)")
        stages.append(Stage(name, tuple(inputs[1:]), tuple(outputs[1:])))
    if len(stages) < 2:
        raise ConfigError(f"method DEEN: backbone {backbone!r} has {len(stages)} feature stage(s) outside its stem; "
                          "DEE follows the second-to-last one, so at least two are needed")
    return stages


def _check_aggregation(stage: Stage, reshape: str, height: int, width: int) -> None:
    (low, in_h, in_w), (_, out_h, out_w) = stage.input_shape, stage.output_shape
    s = stage.stride
    if -(-in_h // s) != out_h or -(-in_w // s) != out_w:
        raise ConfigError(f"method DEEN: stage {stage.name!r} maps {in_h}x{in_w} to {out_h}x{out_w}, not a stride "
                          f"the MFA block can follow (data.height x data.width = {height}x{width})")
    inner = low // 2
    if reshape == "authors-code":
        for h, w, where in ((in_h, in_w, "input"), (out_h, out_w, "output")):
            if (inner * h * w) % low:
                raise ConfigError(
                    f"deen.pnl_reshape=authors-code: the {where} of stage {stage.name!r} ({low // 2} x {h}x{w}) "
                    f"cannot be read as {low} rows (data.height x data.width = {height}x{width}); choose another "
                    "input size or deen.pnl_reshape=per-position")


class DEENNet(nn.Module):
    """Two-stream backbone + MFA blocks + DEE, average pooling, BNNeck (see the module docstring)."""

    def __init__(self, model_cfg: ModelConfig, deen_cfg: DEENConfig, num_classes: int, *, height: int, width: int,
                 dee: bool = True, mfa: bool = True) -> None:
        super().__init__()
        m, d = model_cfg, deen_cfg
        self.backbone = TwoStreamBackbone(m.backbone, pretrained=m.pretrained, pretrained_file=m.pretrained_file,
                                          last_stride_one=m.last_stride_one)
        stages = trace_stages(m.backbone, height, width, last_stride_one=m.last_stride_one)
        self.feature_dim: int = self.backbone.num_features
        if d.drop_last_stage:
            self._replace(stages[-1].name, nn.Identity())
            stages = stages[:-1]
            if len(stages) < 2:
                raise ConfigError(f"deen.drop_last_stage=true: backbone {m.backbone!r} keeps only one feature stage")
            self.feature_dim = stages[-1].output_shape[0]
        self.embeddings = 1 + (d.branches if dee else 0)
        for index, stage in enumerate(stages[:-1]):
            block = None
            if mfa:
                _check_aggregation(stage, d.pnl_reshape, height, width)
                block = MFABlock(stage.output_shape[0], stage.input_shape[0], stage.stride, pnl_reshape=d.pnl_reshape)
            expansion = None
            if dee and index == len(stages) - 2:
                expansion = DEEModule(stage.output_shape[0], branches=d.branches, dilations=d.dilations,
                                      reduction=d.reduction, dropout=d.dropout)
            if block is not None or expansion is not None:
                self._replace(stage.name, ExpandedStage(self.backbone.model.get_submodule(stage.name), block,
                                                        expansion))
        self.neck = BNNeck(self.feature_dim, num_classes, init=m.bnneck_init)

    def _replace(self, name: str, module: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self.backbone.model.get_submodule(parent_name) if parent_name else self.backbone.model
        setattr(parent, child, module)

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> dict[str, torch.Tensor]:
        """pool / bn ((1 + branches) B, C): average-pooled and BN features of every embedding; logits."""
        features = self.backbone(x, modality)
        pooled = features.mean(dim=(2, 3))
        bn, logits = self.neck(pooled)
        return {"pool": pooled, "bn": bn, "logits": logits}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Backbone (with the MFA and DEE modules, as the authors' optimiser groups them) and head (BNNeck)."""
        head_ids = {id(p) for p in self.neck.parameters()}
        backbone = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        return {"backbone": backbone, "head": [p for p in self.neck.parameters() if p.requires_grad]}


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class DEEN(NetworkMethod):
    """DEEN network + its switchable loss terms (see the module docstring)."""

    test_similarity = "dot"

    def __init__(self, data_cfg: DataConfig, model_cfg: ModelConfig, loss_cfg: LossConfig, train_cfg: TrainConfig,
                 deen_cfg: DEENConfig, *, num_classes: int, dee: bool = True, mfa: bool = True, cpm: bool = True,
                 ort: bool = True) -> None:
        super().__init__()
        check_switches(dee=dee, cpm=cpm, ort=ort, branches=deen_cfg.branches)
        self.loss_cfg, self.train_cfg, self.deen_cfg = loss_cfg, train_cfg, deen_cfg
        self.use_cpm, self.use_ort = cpm, ort
        self.net = DEENNet(model_cfg, deen_cfg, num_classes, height=data_cfg.height, width=data_cfg.width, dee=dee,
                           mfa=mfa)

    def test_features(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """(B, parts x C): the L2-normalised pooled and BN features of each embedding, weighted by
        sqrt(deen.test_weights) so that the dot product of two features is the weighted sum of cosines."""
        out = self.net(images, modality)
        batch = images.shape[0]
        count = self.net.embeddings if self.deen_cfg.test_branches == "all" else 1
        pool_weight, bn_weight = (w ** 0.5 for w in self.deen_cfg.test_weights)
        parts = []
        for index in range(count):
            rows = slice(index * batch, (index + 1) * batch)
            parts += [pool_weight * F.normalize(_at_least_float32(out["pool"][rows]), dim=1),
                      bn_weight * F.normalize(_at_least_float32(out["bn"][rows]), dim=1)]
        return torch.cat(parts, dim=1)

    def training_losses(self, images: torch.Tensor, modality: torch.Tensor, pids: torch.Tensor,
                        cams: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch: ce, triplet, and with DEE cpm and ort."""
        d, phase = self.deen_cfg, self.phase_timer
        with phase("forward"):
            out = self.network_outputs(images, modality)
            pool = _at_least_float32(out["pool"])
        count, batch = self.net.embeddings, images.shape[0]
        labels = pids.repeat(count)
        losses = {}
        with phase("ce"):
            losses["ce"] = self.loss_cfg.ce_weight * F.cross_entropy(
                _at_least_float32(out["logits"]), labels, label_smoothing=self.loss_cfg.label_smoothing)
        with phase("triplet"):
            losses["triplet"] = d.triplet_weight * hard_triplet_loss(pool, labels, margin=d.triplet_margin)
        embeddings = pool.view(count, batch, -1)
        if self.use_cpm:
            with phase("cpm"):
                total = sum(cpm_loss(embeddings[0], embeddings[k], pids, modality, margin=d.cpm_margin)
                            for k in range(1, count))
                losses["cpm"] = d.cpm_weight * total
        if self.use_ort:
            with phase("ort"):
                losses["ort"] = d.ort_weight * orthogonality_loss(embeddings[1:], embeddings=count * batch)
        return losses

    def param_groups(self) -> list[dict[str, Any]]:
        """SGD groups: backbone (with MFA and DEE) at train.lr, BNNeck + classifier at train.head_lr."""
        groups = self.net.param_groups()
        return [{"params": groups["backbone"], "lr": self.train_cfg.lr, "name": "backbone"},
                {"params": groups["head"], "lr": self.train_cfg.head_lr, "name": "head"}]


def check_switches(*, dee: bool, cpm: bool, ort: bool, branches: int) -> None:
    if (cpm or ort) and not dee:
        raise ConfigError("method DEEN: the cpm and ort terms act on the embeddings DEE generates; "
                          "switch dee on or cpm and ort off")
    if ort and branches < 2:
        raise ConfigError(f"deen.branches={branches}: the orthogonality term needs at least two generated "
                          "embeddings; raise deen.branches or switch ort off")


@functools.lru_cache(maxsize=256)
def _check_network(backbone: str, height: int, width: int, last_stride_one: bool, dee: bool, mfa: bool,
                   deen_items: tuple[tuple[str, Any], ...]) -> None:
    deen_cfg = DEENConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in deen_items})
    model_cfg = ModelConfig(backbone=backbone, last_stride_one=last_stride_one)
    try:
        with torch.device("meta"):
            net = DEENNet(model_cfg, deen_cfg, 2, height=height, width=width, dee=dee, mfa=mfa)
            net.backbone._set_routing(ModalityRouting(2, None, None, (2, 0)))
            features = net.backbone.model.forward_features(torch.empty(2, 3, height, width))
    except ConfigError:
        raise
    except HarnessError as exc:
        raise ConfigError(f"model.backbone={backbone!r}: {exc}") from None
    except (RuntimeError, AssertionError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = " (deen.drop_last_stage: the backbone runs layers after its last stage)" if deen_cfg.drop_last_stage \
            else ""
        raise ConfigError(f"method DEEN on {backbone!r} at {height}x{width} cannot be built{hint}: {first}") from None
    if features.dim() != 4 or features.shape[1] != net.feature_dim:
        raise ConfigError(f"method DEEN on {backbone!r}: the backbone ends in {tuple(features.shape)} features, "
                          f"expected (B, {net.feature_dim}, H, W) maps")


def check_deen_network(cfg: TrialConfig) -> None:
    """The DEEN network of `cfg` at its input size, built on the meta device (the family's registered check)."""
    from methods.registry import resolve_method

    switches = resolve_method(cfg.method).switches
    check_switches(dee=switches["dee"], cpm=switches["cpm"], ort=switches["ort"], branches=cfg.deen.branches)
    items = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(vars(cfg.deen).items()))
    _check_network(cfg.model.backbone, cfg.data.height, cfg.data.width, cfg.model.last_stride_one, switches["dee"],
                   switches["mfa"], items)


def parse_deen_tokens(tokens: list[str]) -> dict[str, Any]:
    switches = dict.fromkeys(SWITCHES, False)
    for token in tokens:
        if token not in switches:
            raise ConfigError(f"method: unknown switch {token!r} in deen-base+{'+'.join(tokens)}; "
                              f"accepted switches: {', '.join(SWITCHES)}")
        switches[token] = True
    return switches


_PRESET = dict(configs=DEEN_CONFIGS, check=check_deen_network)


# decorators apply bottom-up: `vireid methods` lists deen-base first
@register_method("deen-no-ort", description="DEEN without the orthogonality loss", dee=True, mfa=True, cpm=True,
                 ort=False, **_PRESET)
@register_method("deen-no-cpm", description="DEEN without the CPM loss", dee=True, mfa=True, cpm=False, ort=True,
                 **_PRESET)
@register_method("deen-no-mfa", description="DEEN without the MFA blocks: base + DEE + CPM + orthogonality",
                 dee=True, mfa=False, cpm=True, ort=True, **_PRESET)
@register_method("deen-no-dee", description="DEEN without DEE (and so without CPM and orthogonality): base + MFA",
                 dee=False, mfa=True, cpm=False, ort=False, **_PRESET)
@register_method("deen", description="DEEN: base + DEE + MFA + CPM + orthogonality (full method)", dee=True, mfa=True,
                 cpm=True, ort=True, **_PRESET)
@register_method("deen-base", description="DEEN's baseline: two-stream, average pooling, BNNeck; CE + hard triplet",
                 dee=False, mfa=False, cpm=False, ort=False, **_PRESET)
def build_deen(*, data_cfg: DataConfig, model_cfg: ModelConfig, loss_cfg: LossConfig, train_cfg: TrainConfig,
               deen_cfg: DEENConfig, num_classes: int, num_cameras: int, **switches: Any) -> DEEN:
    """A DEEN-family method with the given switches (dee, mfa, cpm, ort)."""
    return DEEN(data_cfg, model_cfg, loss_cfg, train_cfg, deen_cfg, num_classes=num_classes, **switches)


register_composer("deen-base", parse=parse_deen_tokens, builder=build_deen, tokens_help="dee|mfa|cpm|ort joined by +",
                  **_PRESET)
