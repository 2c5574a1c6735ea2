"""Trial configuration: plain nested dataclasses, validated on construction from dicts.

A trial is fully described by one `TrialConfig`; sweeps vary it by dotted paths
(`loss.ica.sigma`, `train.lr`). There is no global mutable config: every function receives
the config it needs.

Valid ranges live here and only here. A numeric key declares its range in its field:
`epochs: int = ranged(80, minimum=1)`, `erasing_p: float = ranged(0.5, minimum=0, maximum=1)`,
`lr: float = ranged(0.01, above=0)` (strict bound), list keys with `factory=` and optionally
`length=` / `min_length=` / `ascending=True` (each element is range-checked). The range is checked
whenever a config is built (from a dict, by overrides or directly), with a ConfigError naming the
dotted key, the value and the accepted range. A key without `ranged` accepts any value of its type.
How fields declare and check their ranges and types is harness.config_schema.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.config_schema import (
    RangeChecked,
    added_key,
    build_dataclass,
    key_data,
    path_field,
    path_keys,
    ranged,
    registered,
)
from harness.data.synthetic.spec import SynthSpec
from harness.errors import ConfigError
from harness.yaml_loader import load_yaml_text

SEED_MAX = 2**32 - 1
"""numpy's and torch's seeding accept [0, 2**32 - 1]."""
IMAGE_SIDE_MAX = 2048
"""Largest image height or width (pixels): re-ID crops are a few hundred; a larger value is a typo that
would ask for terabytes when the images are decoded."""


def _dataset_names(*, synthetic: bool) -> Callable[[], tuple[str, ...]]:
    def names() -> tuple[str, ...]:
        from harness.data.registry import (  # the dataset registry owns the names
            SYNTHETIC,
            dataset_names,
        )

        return ((SYNTHETIC,) if synthetic else ()) + dataset_names()

    return names


ResizeFilter = Literal["lanczos", "bilinear", "bicubic", "nearest"]
"""PIL resampling filters by name (harness.data.images.RESAMPLING maps them)."""


@dataclass
class SyntheticConfig(RangeChecked):
    """Size and layout of the built-in procedural dataset (written once into a cache folder)."""

    layout: str = registered("sysu", names=_dataset_names(synthetic=False))
    """Which registered dataset's layout (and so protocols) the synthetic tree is written in."""
    num_identities: int = ranged(SynthSpec.num_identities, minimum=4)
    images_per_camera: int = ranged(SynthSpec.images_per_camera, minimum=1)
    height: int = ranged(SynthSpec.height, minimum=32, maximum=IMAGE_SIDE_MAX)
    width: int = ranged(SynthSpec.width, minimum=16, maximum=IMAGE_SIDE_MAX)
    seed: int = ranged(SynthSpec.seed, minimum=0, maximum=SEED_MAX)


@dataclass
class DataConfig(RangeChecked):
    dataset: str = registered("synthetic", names=_dataset_names(synthetic=True))
    """synthetic (generated, in the layout data.synthetic.layout) or a registered dataset (sysu | regdb | llcm)."""
    root: str | None = path_field()
    """Dataset root folder; ignored for synthetic (its cache folder is used)."""
    height: int = ranged(288, minimum=1, maximum=IMAGE_SIDE_MAX)
    width: int = ranged(144, minimum=1, maximum=IMAGE_SIDE_MAX)
    trial: int = ranged(1, minimum=1, maximum=10)
    """RegDB split 1..10 (each split trains its own model)."""
    modes: list[str] = ranged(factory=lambda: ["all", "indoor"], min_length=1)
    """SYSU-style search modes to evaluate."""
    shots: list[int] = ranged(factory=lambda: [1], min_length=1, minimum=1)
    """Gallery shots per (identity, camera): 1 = single-shot, 10 = multi-shot."""
    gallery_trials: int = ranged(10, minimum=1)
    val_identities: int = ranged(0, minimum=0)
    """Training identities held out as a validation protocol (0 = none)."""
    cache_dir: str | None = path_field()
    """Where decoded images and synthetic trees are cached (default ~/.cache/vireid)."""
    train_resize: ResizeFilter = "lanczos"
    """Filter that resizes training images once at load (the authors' code: PIL LANCZOS)."""
    test_resize: ResizeFilter = "bilinear"
    """Filter that resizes test and validation images (the authors' code: PIL BILINEAR)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig(RangeChecked):
    backbone: str = "resnet50"
    pretrained: str | None = None
    """ImageNet weights through timm's hub cache: "imagenet" (timm's default for the backbone) or a timm tag
    such as "resnet50.tv_in1k" (torchvision's, as the published numbers); needs the network or a filled cache."""
    pretrained_file: str | None = path_field()
    """Local weights file (.pth / .safetensors): the offline route, never touches the network. It holds every
    tensor of the timm backbone under timm's names (methods._timm_models.pretrained_tensors), checked before
    training."""
    non_local: bool = True
    non_local_ratio: float = ranged(0.5, above=0, maximum=1)
    """Inner channels of a non-local block as a fraction of its input channels."""
    last_stride_one: bool = True
    gem_p: float = ranged(3.0, above=0)
    gem_variant: Literal["paper", "authors-code"] = added_key("paper")
    """GeM pooling: paper (Radenovic et al.): mean(clamp(x, 1e-6)^p)^(1/p); authors-code (the MCLNet and AGW
    code): (mean(x^p) + 1e-12)^(1/p), for the non-negative maps of ReLU networks (methods.agw.GeM)."""
    bnneck_init: Literal["ones", "normal"] = "ones"
    """BNNeck BN weight at init: 1, or drawn from N(1, 0.01) as the AGW/MCLNet code (bias 0 either way)."""
    test_feature: Literal["bn", "pool"] = "bn"
    """Which feature is used at test time: BNNeck output or L2-normalised pooled feature."""


@dataclass
class MarginalCenterConfig(RangeChecked):
    weight: float = ranged(0.0005, minimum=0)
    sigma: float = ranged(8.0, minimum=0)
    rho: float = ranged(4500.0, minimum=0)


@dataclass
class ADPConfig(RangeChecked):
    """CAJ's triplet, the enhanced squared difference (methods.losses.adp_loss; the CAJ code's TripletLoss_ADP)."""

    weight: float = ranged(1.0, minimum=0)
    alpha: float = ranged(1.0, minimum=0)
    """Sharpness of the softmax weights of the distances (softmax(alpha * d) over positives, (-alpha * d) negatives)."""
    gamma: float = ranged(1.0, above=0)
    """Scale of the gap between the weighted positive and negative distances."""
    square: bool = True
    """True: the gap squared, signed by whether it is violated (the code's --square 1); False: softplus of the gap."""
    variant: Literal["paper", "authors-code"] = "paper"
    """The weighting as written (exact masked softmax), or the CAJ code's (masked-max softmax + 1e-6, as WRT's)."""


@dataclass
class LossConfig(RangeChecked):
    ce_weight: float = ranged(1.0, minimum=0)
    label_smoothing: float = ranged(0.0, minimum=0, below=1)
    wrt_weight: float = ranged(1.0, minimum=0)
    mcm_weight: float = ranged(1.0, minimum=0)
    center_weight: float = ranged(0.0005, minimum=0)
    ica: MarginalCenterConfig = field(default_factory=MarginalCenterConfig)
    cca: MarginalCenterConfig = field(default_factory=MarginalCenterConfig)
    variant: Literal["paper", "authors-code"] = "paper"
    """Marginal center semantics: the paper's (learnable centers, per-sample hinge) or the public code's."""
    wrt_variant: Literal["paper", "authors-code"] = "paper"
    """WRT: the spec formula, or the AGW code's masked-max softmax with +1e-6 (methods.losses.wrt_loss)."""
    adp: ADPConfig = added_key(factory=ADPConfig)
    kl_weight: float = added_key(0.0, minimum=0)
    """CAJ's KL term between the visible and infrared identity predictions (the code's --kl, 0 by default)."""


@dataclass
class MCMConfig(RangeChecked):
    hidden: int = ranged(128, minimum=1)
    lr: float = ranged(0.1, above=0)
    momentum: float = ranged(0.9, minimum=0, maximum=1)
    weight_decay: float = ranged(0.0005, minimum=0)
    batchnorm_out: bool = False
    """BatchNorm1d(2) after the classifier, as in the public code."""
    nesterov: bool = True
    """Nesterov momentum for M's SGD, as the public code's optimiser of M."""
    confusion_variant: Literal["updated", "authors-code"] = added_key("updated")
    """L_e after M's update: updated (M's output recomputed with the updated M, frozen) or authors-code (M's
    output from before the update, its gradient taken through the updated weights; methods.mcm)."""


@dataclass
class ChannelAugConfig(RangeChecked):
    """Channel augmentation, for the methods that use it (caj: harness.data.augment.channel_exchange and
    channel_adaptive_gray)."""

    exchange_grayscale: bool = False
    """The exchanged visible view may also be the grayscale image (1/4 each); the CAJ code trains with one of
    R, G, B copied to all three channels, 1/3 each (its ChannelExchange(gray=2))."""
    adaptive_gray_p: float = ranged(0.5, minimum=0, maximum=1)
    """Infrared images: a random channel copied to all three with probability 3/4, else grayscale with this
    probability (the code's ChannelAdapGray(probability=0.5))."""


@dataclass
class DEENConfig(RangeChecked):
    """DEEN (Zhang & Wang, CVPR 2023): the modules and loss terms of its method family (methods/deen.py)."""

    branches: int = ranged(2, minimum=1)
    """Embeddings the diverse embedding expansion (DEE) generates beside the original one."""
    dilations: list[int] = ranged(factory=lambda: [1, 2, 3], min_length=1, minimum=1)
    """Dilations of a DEE branch's 3x3 convolutions (their outputs are averaged)."""
    reduction: int = ranged(4, minimum=1)
    """A DEE branch's inner channels: the stage's channels / reduction."""
    dropout: float = ranged(0.01, minimum=0, below=1)
    """Dropout on the expanded batch (original and generated maps), as the authors' DEE_module."""
    drop_last_stage: bool = False
    """The authors' RegDB network: the backbone's last stage (ResNet layer4) and the aggregation before it are
    removed, the expansion follows the stage before; the feature is the new last stage's output."""
    pnl_reshape: Literal["authors-code", "per-position"] = "authors-code"
    """Pixel non-local block: "authors-code" reads the (C/2, H, W) maps as (C, H*W/2) as the authors' PNL does
    (attention between half-maps of 2C/2 rows); "per-position" attends between the H*W positions."""
    triplet_weight: float = ranged(1.0, minimum=0)
    triplet_margin: float = ranged(0.3, minimum=0)
    """Hard-mining triplet over the pooled features of every embedding (the authors' OriTripletLoss)."""
    cpm_weight: float = ranged(0.8, minimum=0)
    """lambda_1: weight of the center-guided pair mining loss (summed over the generated embeddings)."""
    cpm_margin: float = ranged(0.2, minimum=0)
    ort_weight: float = ranged(0.01, minimum=0)
    """lambda_2: weight of the orthogonality loss between the generated embeddings."""
    test_branches: Literal["all", "original"] = "all"
    """Test feature from every embedding (the authors' test code) or the original one only."""
    test_weights: list[float] = ranged(factory=lambda: [1.0, 1.0], length=2, minimum=0)
    """Weights of the pooled and the BN part in the test similarity: [1, 1] is the authors' distmat7 (every
    part counts once), [0.1, 0.9] their distmat8."""


@dataclass
class TrainConfig(RangeChecked):
    epochs: int = ranged(80, minimum=1)
    iters_per_epoch: int | None = ranged(None, minimum=1)
    """None: as the AGW/MCLNet code, int(N / (P*K)) + 1 steps, N the larger modality's image count."""
    num_identities: int = ranged(8, minimum=1)
    """P: identities per batch."""
    images_per_modality: int = ranged(4, minimum=1)
    """K: visible and K infrared images per identity per batch."""
    lr: float = ranged(0.01, above=0)
    head_lr: float = ranged(0.1, above=0)
    center_lr: float = ranged(0.1, minimum=0)
    momentum: float = ranged(0.9, minimum=0, maximum=1)
    nesterov: bool = True
    weight_decay: float = ranged(0.0005, minimum=0)
    warmup_epochs: int = ranged(10, minimum=0)
    milestones: list[int] = ranged(factory=lambda: [20, 50], minimum=1, ascending=True)
    gamma: float = ranged(0.1, above=0, maximum=1)
    pad: int = ranged(10, minimum=0)
    flip: bool = True
    erasing_p: float = ranged(0.5, minimum=0, maximum=1)
    grayscale_p: float = ranged(0.0, minimum=0, maximum=1)
    """Probability of showing a training image without colour (0 = off, as in AGW/MCLNet)."""
    erasing_area: list[float] = ranged(factory=lambda: [0.02, 0.4], length=2, above=0, maximum=1, ascending=True)
    """(lo, hi): fraction of the image a random erasing covers, 0 < lo <= hi <= 1."""
    erasing_ratio: list[float] = ranged(factory=lambda: [0.3, 3.3], length=2, above=0, ascending=True)
    """(lo, hi): aspect ratio (height / width) of the erased box (the MCLNet code: 0.3 to 1/0.3)."""
    erasing_aspect: Literal["log-uniform", "uniform"] = "log-uniform"
    """How the aspect ratio is drawn in erasing_ratio (the MCLNet code: uniform)."""
    erasing_fill: Literal["random", "constant"] = "random"
    """random: N(0, 1) noise; constant: erasing_value per channel, written after normalisation (the MCLNet code)."""
    erasing_value: list[float] = ranged(factory=lambda: [0.4914, 0.4822, 0.4465], length=3)
    """The constant fill (the MCLNet code's values)."""
    erasing_attempts: int | None = ranged(None, minimum=1, maximum=100)
    """None: one box, clipped to the image. N: up to N draws, the first that fits is used, else no erasing
    (the MCLNet code: 100)."""
    channel_aug: ChannelAugConfig = added_key(factory=ChannelAugConfig)
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    fused_optimizer: bool = False
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    threads: int | None = ranged(None, minimum=1)
    """torch intra-op threads on CPU (None: torch's default)."""
    eval_batch_size: int = ranged(128, minimum=1)


@dataclass
class RerankConfig(RangeChecked):
    """k-reciprocal re-ranking of the test distances (Zhong et al., CVPR 2017): off, as in the papers' tables."""

    enabled: bool = False
    k1: int = ranged(20, minimum=1)
    k2: int = ranged(6, minimum=1)
    lambda_value: float = ranged(0.3, minimum=0, maximum=1)
    """Weight of the original distance against the Jaccard distance."""


@dataclass
class EvaluationConfig(RangeChecked):
    rerank: RerankConfig = field(default_factory=RerankConfig)
    flip: bool = added_key(False)
    """Test-time flip averaging (the CAJ code's testa.py): each image's feature and its horizontal mirror's,
    each L2-normalised, are averaged and normalised again."""


@dataclass
class TrialConfig(RangeChecked):
    method: str = "mclnet"
    seed: int = ranged(0, minimum=0, maximum=SEED_MAX)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mcm: MCMConfig = field(default_factory=MCMConfig)
    deen: DEENConfig = added_key(factory=DEENConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """What identifies the configuration (`to_dict` less the `added_key` keys at their default)."""
        return key_data(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, where: str = "config") -> TrialConfig:
        return build_dataclass(cls, data or {}, where)

    def with_overrides(self, overrides: dict[str, Any], *, where: str = "override") -> TrialConfig:
        merged = self.to_dict()
        for dotted, value in overrides.items():
            set_dotted(merged, dotted, value, where=where)
        return TrialConfig.from_dict(merged, where=where)


def field_paths(cls: type = TrialConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf path of a config class (for messages and search-space validation)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out += field_paths(hints[f.name], path + ".")
        else:
            out.append(path)
    return out


def _file_path(value: Any, folder: Path) -> Any:
    """A relative path string read from a file in `folder`, as the config keeps it: relative to the
    working folder when it lies below it (records stay portable between checkouts), else absolute."""
    if not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    resolved = os.path.normpath(os.path.join(os.path.abspath(folder), value))
    here = os.getcwd()
    return os.path.relpath(resolved, here) if os.path.commonpath([resolved, here]) == here else resolved


def resolve_file_paths(tree: dict[str, Any], folder: str | Path, prefix: str = "") -> dict[str, Any]:
    """A config mapping read from a file in `folder` (nested and/or dotted keys) with its relative
    path keys (`path_keys`: model.pretrained_file, data.root, data.cache_dir) resolved against
    `folder`, not against the folder the command runs in; lists of values (grid, choices) each."""
    keys = set(path_keys(TrialConfig))
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in keys:
            out[key] = resolve_file_paths(value, folder, f"{dotted}.")
        elif dotted in keys:
            out[key] = [_file_path(v, Path(folder)) for v in value] if isinstance(value, list) else \
                _file_path(value, Path(folder))
        else:
            out[key] = value
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, *, where: str = "override") -> None:
    node = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            close = difflib.get_close_matches(dotted, field_paths(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{where}: unknown config key {dotted!r}{hint}")
        if i == len(parts) - 1:
            node[part] = copy.deepcopy(value)
        else:
            node = node[part]


def get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` from the command line; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=2")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml_text(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"override {text!r}: {exc}") from None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
    return key.strip(), value


def load_yaml(path: str | Path) -> Any:
    """A YAML file's content (see harness.yaml_loader), or ConfigError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return load_yaml_text(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
