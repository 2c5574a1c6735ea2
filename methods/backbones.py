"""Two-stream backbone over any timm model: one stem per modality, every later stage shared.

Approach: ONE timm model is built. Each of its stem submodules that holds state (parameters
or buffers) is replaced in place by a :class:`ModalitySwitch` holding two copies of it
(index 0 visible, 1 infrared). Before the model's own ``forward_features`` runs, the
backbone hands every switch the routing of the batch (which rows are visible, which
infrared); each switch sends the rows of a modality through that modality's copy and puts the
results back in batch order. timm's ``forward_features`` is therefore reused unchanged, and
the switch does not depend on the order in which timm calls the stem modules. Parameter-free
stem modules (ResNet ``act1``/``maxpool``) compute the same function for both modalities and
are left shared. Batch-norm layers in a stem see only the samples of their own modality.

Stem discovery: ``model.group_matcher(coarse=True)['stem']`` (regexes over parameter names,
matched with ``re.match`` as timm does) is mapped to the top-level child modules owning the
matched parameters. Where the regex also names bare model parameters (ViT ``cls_token`` /
``pos_embed``), only the patch embedding is made modality-specific and the token / position
parameters and ``norm_pre`` stay shared.

Output: a feature map ``(B, C, H, W)`` for every family. Token models (ViT) drop their prefix
(class / register) tokens and return the patch tokens as ``(B, C, gh, gw)``; when the grid is
unknown the tokens are returned as ``(B, C, N, 1)``. Both are GeM-poolable.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import InputError
from methods._timm_models import create_timm_model

MODALITY_COUNT = 2  # 0 visible, 1 infrared

# Families whose stem is known exactly; checked before the generic group_matcher rule.
_KNOWN_STEMS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    # (attributes that identify the family, stem modules in forward order)
    (("conv1", "bn1", "act1", "maxpool", "layer1", "layer4"), ("conv1", "bn1", "act1", "maxpool")),
    (("conv_stem", "bn1", "blocks"), ("conv_stem", "bn1")),
    (("stem", "stages"), ("stem",)),
    (("patch_embed", "blocks"), ("patch_embed",)),
)


@dataclass(frozen=True)
class ModalityRouting:
    """Where the rows of each modality sit in a batch, computed once per forward."""

    batch_size: int
    order: torch.Tensor | None  # batch indices sorted by modality; None when one modality only
    inverse_order: torch.Tensor | None
    counts: tuple[int, ...]  # rows per modality

    @staticmethod
    def from_modality(modality: torch.Tensor, batch_size: int) -> ModalityRouting:
        if not isinstance(modality, torch.Tensor) or modality.dim() != 1 or modality.shape[0] != batch_size:
            shape = tuple(modality.shape) if isinstance(modality, torch.Tensor) else type(modality).__name__
            raise InputError(
                f"modality must be an int64 tensor of shape ({batch_size},) matching the image batch; got {shape}"
            )
        if modality.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise InputError(f"modality must be an integer tensor (0 visible, 1 infrared); got dtype {modality.dtype}")
        modality = modality.long()
        if batch_size == 0:
            return ModalityRouting(0, None, None, (0,) * MODALITY_COUNT)
        low, high = torch.aminmax(modality)
        # one host sync for validation and the split sizes together
        low_value, high_value, visible = torch.stack([low, high, (modality == 0).sum()]).tolist()
        if low_value < 0 or high_value >= MODALITY_COUNT:
            raise InputError(f"modality values must be 0 (visible) or 1 (infrared); "
                             f"got values in [{low_value}, {high_value}]")
        counts = (visible, batch_size - visible)
        if 0 in counts:
            return ModalityRouting(batch_size, None, None, counts)
        order = torch.argsort(modality, stable=True)
        inverse_order = torch.argsort(order)
        return ModalityRouting(batch_size, order, inverse_order, counts)

    def single_modality(self) -> int | None:
        """The modality of every row when the batch holds only one, else None."""
        if self.order is not None:
            return None
        return 0 if self.counts[0] == self.batch_size else 1


class ModalitySwitch(nn.Module):
    """Holds one copy of a stem module per modality and routes each batch row to its copy."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList([module] + [copy.deepcopy(module) for _ in range(MODALITY_COUNT - 1)])
        self.routing: ModalityRouting | None = None

    def __getattr__(self, name: str) -> Any:
        # timm reads structural attributes of its stem (ViT: patch_embed.grid_size, patch_size);
        # they are identical in both copies, so the visible copy answers
        try:
            return super().__getattr__(name)
        except AttributeError:
            branches = self.__dict__.get("_modules", {}).get("branches")
            if branches is None:
                raise
            return getattr(branches[0], name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.routing
        if routing is None or routing.batch_size != x.shape[0]:
            raise InputError(
                "a modality-specific stem was called without the modality of the batch; "
                "call TwoStreamBackbone.forward(images, modality) instead of the timm model directly"
            )
        single = routing.single_modality()
        if single is not None:
            return self.branches[single](x)
        parts = torch.split(x.index_select(0, routing.order), list(routing.counts))
        outputs = [branch(part) for branch, part in zip(self.branches, parts)]
        return torch.cat(outputs, dim=0).index_select(0, routing.inverse_order)


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def find_stem_module_names(model: nn.Module) -> tuple[str, ...]:
    """Top-level children of a timm model that form its stem (modality-specific candidates)."""
    children = dict(model.named_children())
    for family_attributes, stem in _KNOWN_STEMS:
        if all(attribute in children for attribute in family_attributes):
            return stem
    if not hasattr(model, "group_matcher"):
        raise InputError(f"{type(model).__name__} has no group_matcher: cannot find its stem for the two-stream split")
    spec = model.group_matcher(coarse=True).get("stem")
    if spec is None:
        raise InputError(f"{type(model).__name__}.group_matcher names no 'stem': cannot build a two-stream backbone")
    entries = [spec] if isinstance(spec, str) else spec
    patterns = [entry[0] if isinstance(entry, (tuple, list)) else entry for entry in entries]
    compiled = [re.compile(pattern) for pattern in patterns]
    matched = [name for name, _ in model.named_parameters() if any(p.match(name) for p in compiled)]
    owners: list[str] = []
    bare_parameters = False
    for name in matched:
        if "." not in name:
            bare_parameters = True
            continue
        owner = name.split(".", 1)[0]
        if owner not in owners:
            owners.append(owner)
    order = list(children)
    owners.sort(key=order.index)
    if not owners:
        raise InputError(f"the stem of {type(model).__name__} owns no module with parameters: "
                         "cannot split it per modality")
    if bare_parameters:
        # tokens / position embeddings are added after the patch embedding: only that stays per modality
        owners = owners[:1]
    return tuple(owners)


def is_resnet_family(model: nn.Module) -> bool:
    """True for timm ResNet-like models (conv stem + layer1..layer4 of residual blocks)."""
    return all(isinstance(getattr(model, f"layer{i}", None), nn.Sequential) for i in range(1, 5))


def _stride_of(module: nn.Module) -> int:
    stride = getattr(module, "stride", 1)
    if isinstance(stride, (tuple, list)):
        return max(int(s) for s in stride) if stride else 1
    return int(stride) if isinstance(stride, int) else 1


def set_last_stride_one(model: nn.Module) -> None:
    """Make layer4 keep its input resolution by removing the stride of its first block, no dilation.

    Strided convolutions in ``layer4[0]`` (BasicBlock: conv1, Bottleneck: conv2, the 1x1
    downsample conv) get stride 1; strided average / max pools (``avg_down`` downsample) and
    anti-aliasing layers become identities, as timm builds them for stride 1.
    """
    if not is_resnet_family(model):
        raise InputError("last_stride_one applies to ResNet-family backbones (layer1..layer4); "
                         f"got {type(model).__name__}")
    first_block = model.layer4[0]
    replacements: list[str] = []
    for name, module in first_block.named_modules():
        if isinstance(module, nn.Conv2d):
            if any(d != 1 for d in module.dilation):
                raise InputError(f"layer4.0.{name} uses dilation {module.dilation}; "
                                 "last_stride_one expects an undilated layer4")
            if any(s != 1 for s in module.stride):
                module.stride = (1, 1)
        elif isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)) or name.rpartition(".")[2] == "aa":
            # strided pools (avg_down downsample, anti-aliasing) are identities at stride 1
            if _stride_of(module) != 1:
                replacements.append(name)
        elif name and _stride_of(module) != 1:
            raise InputError(
                f"layer4.0.{name} ({type(module).__name__}) has stride {module.stride}; "
                "last_stride_one cannot remove it"
            )
    if hasattr(first_block, "stride"):
        first_block.stride = 1
    for name in replacements:
        parent_name, _, child_name = name.rpartition(".")
        parent = first_block.get_submodule(parent_name) if parent_name else first_block
        setattr(parent, child_name, nn.Identity())
    feature_info = getattr(model, "feature_info", None)
    last = feature_info[-1] if isinstance(feature_info, list) and feature_info else None
    if isinstance(last, dict) and last.get("module") == "layer4" and "reduction" in last:
        last["reduction"] = feature_info[-2]["reduction"] if len(feature_info) > 1 else last["reduction"]


class TwoStreamBackbone(nn.Module):
    """A timm model whose stem is modality-specific (visible 0, infrared 1) and whose stages are shared."""

    def __init__(
        self,
        name: str,
        *,
        pretrained: str | None = None,
        pretrained_file: str | None = None,
        last_stride_one: bool = True,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.model_name = name
        self.model = create_timm_model(name, pretrained=pretrained, pretrained_file=pretrained_file, **timm_kwargs)
        candidates = find_stem_module_names(self.model)
        stateful = tuple(c for c in candidates if _has_state(self.model.get_submodule(c)))
        self.stem_module_names: tuple[str, ...] = stateful
        for stem_name in self.stem_module_names:
            setattr(self.model, stem_name, ModalitySwitch(self.model.get_submodule(stem_name)))
        # last stride 1 is a ResNet re-ID convention; other families keep their strides
        self.last_stride_one = bool(last_stride_one) and is_resnet_family(self.model)
        if self.last_stride_one:
            set_last_stride_one(self.model)
        self.num_features: int = int(self.model.num_features)
        self.inserted_after: list[str] = []
        """timm module names followed by a module the harness added (`insert_after`)."""

    def insert_after(self, position: str, module: nn.Module) -> None:
        """Run `module` after the timm submodule at `position` (e.g. "layer2.3": a ResNet block).

        The submodule becomes ``nn.Sequential(original, module)``: its tensors are named
        `position.0.*`, the added module's `position.1.*`; `timm_state_dict` maps them back.
        """
        parent_name, _, child = position.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, child, nn.Sequential(parent.get_submodule(child), module))
        self.inserted_after.append(position)

    def stem(self, modality: int) -> dict[str, nn.Module]:
        """The stem modules used for one modality, by timm module name."""
        return {n: self.model.get_submodule(n).branches[modality] for n in self.stem_module_names}

    def stage_modules(self) -> dict[str, nn.Module]:
        """The stages named by timm's feature_info (stem output first), by module name."""
        stages: dict[str, nn.Module] = {}
        for info in getattr(self.model, "feature_info", []) or []:
            module_name = info.get("module") if isinstance(info, dict) else None
            if module_name:
                stages[module_name] = self.model.get_submodule(module_name)
        return stages

    def stage_channels(self, module_name: str) -> int:
        """Output channels of a feature_info stage."""
        for info in getattr(self.model, "feature_info", []) or []:
            if isinstance(info, dict) and info.get("module") == module_name:
                return int(info["num_chs"])
        raise InputError(f"{self.model_name!r} has no feature stage named {module_name!r}")

    def blocks_for_nonlocal(self) -> dict[str, nn.Sequential]:
        """ResNet layer2 / layer3 block sequences, where AGW places its non-local blocks."""
        if not is_resnet_family(self.model):
            raise InputError(
                f"non-local positions are defined for ResNet stages (layer2/layer3) only; backbone {self.model_name!r} "
                "has none: set the config key model.non_local to false"
            )
        return {"layer2": self.model.layer2, "layer3": self.model.layer3}

    def _set_routing(self, routing: ModalityRouting) -> None:
        for stem_name in self.stem_module_names:
            self.model.get_submodule(stem_name).routing = routing

    def _to_map(self, features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        if features.dim() == 4:
            if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                features = features.permute(0, 3, 1, 2)
            return features
        if features.dim() == 3:
            tokens = features[:, int(getattr(self.model, "num_prefix_tokens", 0)) :]
            batch, count, channels = tokens.shape
            grid = self._token_grid(image_size)
            if grid is not None and grid[0] * grid[1] == count:
                return tokens.transpose(1, 2).reshape(batch, channels, grid[0], grid[1])
            return tokens.transpose(1, 2).unsqueeze(-1)
        raise InputError(f"{self.model_name!r} forward_features returned shape {tuple(features.shape)}; "
                         "expected 3 or 4 dims")

    def _token_grid(self, image_size: tuple[int, int]) -> tuple[int, int] | None:
        patch_embed = getattr(self.model, "patch_embed", None)
        if isinstance(patch_embed, ModalitySwitch):
            patch_embed = patch_embed.branches[0]
        if patch_embed is None:
            return None
        if getattr(self.model, "dynamic_img_size", False) and hasattr(patch_embed, "dynamic_feat_size"):
            return tuple(patch_embed.dynamic_feat_size(image_size))
        grid = getattr(patch_embed, "grid_size", None)
        return tuple(grid) if grid is not None else None

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Feature map (B, C, H, W) of images x (B, 3, H, W); modality (B,) int64, 0 visible 1 infrared."""
        if x.dim() != 4:
            raise InputError(f"images must be a (B, C, H, W) tensor; got shape {tuple(x.shape)}")
        self._set_routing(ModalityRouting.from_modality(modality, x.shape[0]))
        features = self.model.forward_features(x)
        return self._to_map(features, (x.shape[-2], x.shape[-1]))


def _timm_name(backbone: TwoStreamBackbone, key: str, modality: int) -> str | None:
    """The plain timm model's name of a two-stream state-dict key; None for the other stem and added modules."""
    for stem in backbone.stem_module_names:
        prefix = f"{stem}.branches."
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            return f"{stem}.{rest}" if int(index) == modality else None
    for position in backbone.inserted_after:
        if key.startswith(f"{position}.0."):
            return f"{position}.{key[len(position) + 3:]}"
        if key.startswith(f"{position}.1."):
            return None
    return key


def timm_state_dict(backbone: TwoStreamBackbone, modality: int = 0) -> dict[str, torch.Tensor]:
    """A two-stream backbone's weights as its plain timm model names them, with one modality's stem.

    What `model.pretrained_file` loads: a backbone trained here can initialise another run the
    way ImageNet weights do (both stems start from the exported one). Modules the harness added
    after timm blocks (non-local blocks) are left out and the blocks keep their timm names; a
    timm weight without counterpart, or a weight timm does not have, is an error.
    """
    if modality not in range(MODALITY_COUNT):
        raise InputError(f"modality {modality!r}: expected 0 (visible) or 1 (infrared)")
    with torch.device("meta"):
        expected = create_timm_model(backbone.model_name).state_dict()
    exported: dict[str, torch.Tensor] = {}
    for key, value in backbone.model.state_dict().items():
        name = _timm_name(backbone, key, modality)
        if name is not None:
            exported[name] = value.detach().clone().contiguous()
    missing = sorted(k for k in expected if k not in exported)
    unexpected = sorted(k for k in exported if k not in expected)
    mismatched = sorted(k for k, v in exported.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape))
    if missing or unexpected or mismatched:
        raise InputError(f"backbone {backbone.model_name!r}: the weights do not map onto the timm model "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {mismatched[:5]})")
    return exported
