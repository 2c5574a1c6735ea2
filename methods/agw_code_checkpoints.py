"""Checkpoints of the AGW code base: `embed_net` of mangye16/Cross-Modal-Re-ID-baseline `model.py`.

MCLNet's public code (bitreidgroup/Modality-Confusion-Learning `model.py`) and CAJ's
(ICCV21_CAJ/model.py) keep this network unchanged, so their checkpoints share these rules. The
code's `train.py` saves `{'net': net.state_dict(), 'cmc', 'mAP', 'mINP', 'epoch'}`. Facts of the
network the rules and the config keys reproduce:

- Stems: three torchvision-named ResNet-50s are built; the forward uses conv1/bn1 of
  `visible_module.visible` (visible stem) and of `thermal_module.thermal` (infrared stem) and
  layer1..layer4 of `base_resnet.base`. The other two copies' stages and `base_resnet`'s stem are
  saved but never run: dropped. layer4 has stride 1 (`last_conv_stride=1`), no dilation.
- Non-local blocks after blocks 2, 3 of layer2 (`NL_2.0`, `NL_2.1`) and 3, 4, 5 of layer3
  (`NL_3.0..2`), each with ONE inner channel (`reduc_ratio // reduc_ratio`), `g` wrapped in a
  Sequential (`g.0`); no softmax, attention divided by H*W.
- GeM with p = 3 as (mean(x^3) + 1e-12)^(1/3); BN neck `bottleneck` (BatchNorm1d, bias frozen),
  `classifier` Linear without bias (its rows: the training identities).
- Test images are resized to 144x288 with PIL ANTIALIAS (LANCZOS) in `TestData`; the transform's
  Resize to the same size then changes nothing. Features: l2norm of the pooled and of the BN
  feature; the best checkpoint is chosen by the BN feature's Rank-1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from methods.importers import Converted, KeyRules, register_importer

NON_LOCAL_BLOCKS = {2: (2, 3), 3: (3, 4, 5)}
"""ResNet stage -> blocks followed by `NL_<stage>.<i>` in embed_net (non_layers [0, 2, 3, 0])."""
_TRUNK = "net.backbone.model"


def _rules() -> KeyRules:
    rename: list[tuple[str, str]] = [
        (r"visible_module\.visible\.(conv1|bn1)\.(.+)", rf"{_TRUNK}.\1.branches.0.\2"),
        (r"thermal_module\.thermal\.(conv1|bn1)\.(.+)", rf"{_TRUNK}.\1.branches.1.\2"),
        (r"bottleneck\.(.+)", r"net.neck.bn.\1"),
        (r"classifier\.weight", "net.neck.classifier.weight"),
    ]
    for stage, blocks in NON_LOCAL_BLOCKS.items():
        followed = "|".join(str(b) for b in blocks)
        # a block followed by a non-local block is nn.Sequential(block, NonLocalBlock) in the harness
        rename.append((rf"base_resnet\.base\.layer{stage}\.({followed})\.(.+)", rf"{_TRUNK}.layer{stage}.\1.0.\2"))
        for index, block in enumerate(blocks):
            position = f"{_TRUNK}.layer{stage}.{block}.1"
            rename += [(rf"NL_{stage}\.{index}\.g\.0\.(weight|bias)", rf"{position}.g.\1"),
                       (rf"NL_{stage}\.{index}\.(theta|phi)\.(weight|bias)", rf"{position}.\1.\2"),
                       (rf"NL_{stage}\.{index}\.W\.([01])\.(.+)", rf"{position}.W.\1.\2")]
    rename.append((r"base_resnet\.base\.(layer[1-4]\.\d+\..+)", rf"{_TRUNK}.\1"))
    drop = (r"(visible_module\.visible|thermal_module\.thermal)\.layer[1-4]\..+",
            r"base_resnet\.base\.(conv1|bn1)\..+")
    return KeyRules(rename=tuple(rename), drop=drop)


AGW_CODE_RULES = _rules()

AGW_CODE_CONFIG: dict[str, object] = {
    # what embed_net and the code's test pipeline imply, for every importer of this network
    "model.backbone": "resnet50",
    "model.non_local": True,
    "model.non_local_ratio": 1e-6,  # max(1, int(C * 1e-6)) = 1 inner channel, the code's reduc_ratio // reduc_ratio
    "model.gem_p": 3.0,
    "model.gem_variant": "authors-code",
    "model.last_stride_one": True,
    "model.test_feature": "bn",
    "data.height": 288,
    "data.width": 144,
    "data.test_resize": "lanczos",
}
AGW_CODE_NOTES = (
    "three ResNet-50s are built; only visible_module.visible and thermal_module.thermal conv1/bn1 (the stems) "
    "and base_resnet.base layer1-4 run; the other saved stages and base_resnet's stem are dropped",
    "non-local blocks with one inner channel: model.non_local_ratio 1e-6",
    "GeM (mean(x^3) + 1e-12)^(1/3): model.gem_variant authors-code",
    "test images resized with PIL ANTIALIAS (LANCZOS) to 144x288 in TestData: data.test_resize lanczos",
    "the best checkpoint is chosen by the BN feature's test Rank-1: model.test_feature bn",
)
_GEM = {"net.pool.p": "GeM power: the code's fixed p = 3.0 (model.gem_p)"}


@register_importer(
    "caj", method="caj", recipe="caj-authors",
    source="mangye16/Cross-Modal-Re-ID-baseline ICCV21_CAJ model.py embed_net (train_ext.py: {'net': state_dict, ...})",
    config=AGW_CODE_CONFIG,
    initialised=_GEM,
    published={"all-single": "caj.sysu_all", "indoor-single": "caj.sysu_indoor",
               "v2t": "caj.regdb_v2t", "t2v": "caj.regdb_t2v"},
    notes=AGW_CODE_NOTES,
)
@register_importer(
    "mclnet", method="mclnet", recipe="mclnet-authors",
    source="bitreidgroup/Modality-Confusion-Learning model.py embed_net (train.py: {'net': state_dict, ...})",
    config=AGW_CODE_CONFIG,
    initialised={**_GEM,
                 "mcm.": "MCM discriminator: train.py's D is not saved; training only, test features never use it",
                 "id_centers": "ICA centers live in train.py's criterion, not saved; training only",
                 "cam_centers": "CCA centers live in train.py's criterion, not saved; training only"},
    published={"all-single": "mclnet.sysu_all", "indoor-single": "mclnet.sysu_indoor",
               "v2t": "mclnet.regdb_v2t", "t2v": "mclnet.regdb_t2v"},
    notes=AGW_CODE_NOTES,
)
@register_importer(
    "agw", method="agw", recipe="mclnet-authors",
    source="mangye16/Cross-Modal-Re-ID-baseline model.py embed_net (train.py: {'net': state_dict, ...})",
    # the AGW code's own training: 81 epochs (range(0, 81)), no random erasing
    config={**AGW_CODE_CONFIG, "train.epochs": 81, "train.erasing_p": 0.0},
    initialised=_GEM,
    published={"all-single": "agw.sysu_all", "v2t": "agw.regdb_v2t"},
    notes=AGW_CODE_NOTES,
)
def convert_agw_code(state: Mapping[str, torch.Tensor]) -> Converted:
    """embed_net (no_local='on', gm_pool='on', arch='resnet50') -> the harness's AGW network names."""
    return AGW_CODE_RULES(state)
