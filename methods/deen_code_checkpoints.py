"""Checkpoints of the DEEN code: `embed_net(class_num, dataset)` of ZYK100/LLCM `DEEN/model.py`.

The code's `train.py` saves `{'net': net.state_dict(), 'cmc', 'mAP', 'mINP', 'epoch'}` (distmat7's
metrics, the epoch of its best test Rank-1). Facts of the network the rules and the config keys
reproduce:

- Stems and trunk as in the AGW code: three torchvision-named ResNet-50s (layer4 stride 1, no fc);
  the forward runs conv1/bn1 of `visible_module.visible` and of `thermal_module.thermal` and the
  stages of `base_resnet.base`. The other copies' stages and `base_resnet`'s stem are saved, never
  run: dropped.
- `MFA<i>` (`CNL` then `PNL`, each ending in `W.0` conv + `W.1` BN) follows stage i, from its
  output to its input; `DEE` (`FC<b><d>`: branch b's 3x3 convolution of dilation d to C/4
  channels; `FC<b>`: its 1x1 projection back to C) follows the last MFA block. The PNL reads each
  (C/2, H, W) map as (C, H W / 2) rows (`deen.pnl_reshape: authors-code`).
- SYSU-MM01 and LLCM: MFA1-3 after layer1-3, DEE(1024) after MFA3, layer4 last, 2048-d neck.
  RegDB (`embed_net(n, 'regdb')`): no MFA3, DEE(512) after MFA2, layer3 last, 1024-d neck; its
  layer4 is saved but never run (`deen.drop_last_stage`). The converter tells the two networks
  apart by MFA3's presence; `--dataset regdb` builds the RegDB network, so a file of the other
  network is refused with its keys named.
- `bottleneck` (BatchNorm1d, bias frozen) and `classifier` (Linear, no bias) as the BNNeck.
- Test: images resized to 144x384 with PIL ANTIALIAS in `TestData`; test.py sums each image's six
  L2-normalised features (pooled and BN, three embeddings) with its flipped copy's and ranks by
  the sum of the six dot products (distmat7): `deen.test_branches: all`, `evaluation.flip`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from methods.importers import Converted, KeyRules, register_importer

_TRUNK = "net.backbone.model"
BRANCHES, DILATIONS = 2, 3
"""DEE_module's generated embeddings (FC1*, FC2*) and dilated convolutions per branch (FC*1..FC*3)."""


def _rules(last_stage: int) -> KeyRules:
    """Rules for the network whose last ResNet stage is `last_stage` (4: SYSU-MM01 / LLCM; 3: RegDB)."""
    wrapped = last_stage - 1  # stages 1..wrapped are followed by MFA<i>; DEE follows stage `wrapped`
    dee = f"{_TRUNK}.layer{wrapped}.dee.branches"
    rename: list[tuple[str, str]] = [
        (r"visible_module\.visible\.(conv1|bn1)\.(.+)", rf"{_TRUNK}.\1.branches.0.\2"),
        (r"thermal_module\.thermal\.(conv1|bn1)\.(.+)", rf"{_TRUNK}.\1.branches.1.\2"),
        (rf"MFA([1-{wrapped}])\.((?:CNL|PNL)\..+)", rf"{_TRUNK}.layer\1.mfa.\2"),
        (rf"base_resnet\.base\.layer([1-{wrapped}])\.(\d+\..+)", rf"{_TRUNK}.layer\1.stage.\2"),
        (rf"base_resnet\.base\.layer{last_stage}\.(\d+\..+)", rf"{_TRUNK}.layer{last_stage}.\1"),
        (r"bottleneck\.(.+)", r"net.neck.bn.\1"),
        (r"classifier\.weight", "net.neck.classifier.weight"),
    ]
    for branch in range(BRANCHES):
        rename += [(rf"DEE\.FC{branch + 1}{d + 1}\.weight", f"{dee}.{branch}.dilated.{d}.weight")
                   for d in range(DILATIONS)]
        rename.append((rf"DEE\.FC{branch + 1}\.(weight|bias)", rf"{dee}.{branch}.project.\1"))
    drop = [r"(visible_module\.visible|thermal_module\.thermal)\.layer[1-4]\..+", r"base_resnet\.base\.(conv1|bn1)\..+"]
    drop += [rf"base_resnet\.base\.layer{s}\..+" for s in range(last_stage + 1, 5)]
    return KeyRules(rename=tuple(rename), drop=tuple(drop))


DEEN_CODE_RULES = _rules(4)
DEEN_CODE_REGDB_RULES = _rules(3)

DEEN_CODE_CONFIG: dict[str, object] = {
    # the network embed_net builds (the rules above assume it) and test.py's features; the rest is the recipe
    "model.backbone": "resnet50",
    "model.last_stride_one": True,
    "model.non_local": False,
    "deen.branches": BRANCHES,
    "deen.dilations": [1, 2, 3],
    "deen.reduction": 4,
    "deen.pnl_reshape": "authors-code",
    "deen.drop_last_stage": False,
    "deen.test_branches": "all",
    "deen.test_weights": [1.0, 1.0],
    "data.height": 384,
    "data.width": 144,
    "data.test_resize": "lanczos",
    "evaluation.flip": True,
}
DEEN_CODE_NOTES = (
    "three ResNet-50s are built; only visible_module.visible and thermal_module.thermal conv1/bn1 (the stems) "
    "and base_resnet.base's stages run; the other saved stages and base_resnet's stem are dropped",
    "MFA1-3 after layer1-3 and DEE(1024, 2 branches, dilations 1-3, C/4 inner channels) after MFA3; the RegDB "
    "network (embed_net(n, 'regdb')) has no MFA3, DEE(512) after MFA2 and never runs its saved layer4 (dropped): "
    "deen.drop_last_stage true for --dataset regdb",
    "PNL reads each (C/2, H, W) map as (C, HW/2) rows: deen.pnl_reshape authors-code",
    "test.py's distmat7: the six L2-normalised pooled and BN features of the three embeddings, each summed with "
    "the flipped image's, ranked by the sum of dot products: deen.test_branches all, evaluation.flip",
    "test images resized with PIL ANTIALIAS (LANCZOS) to 144x384 in TestData: data.test_resize lanczos",
    "train.py keeps the checkpoint of the best distmat7 test Rank-1",
)


@register_importer(
    "deen", method="deen", recipe="deen-authors",
    source="ZYK100/LLCM DEEN/model.py embed_net(class_num, dataset) (train.py: {'net': state_dict, ...})",
    config=DEEN_CODE_CONFIG,
    # train.py's per-dataset choices: the RegDB network, SYSU-MM01's erasing of U(0.2, 0.8) of the image
    dataset_config={"regdb": {"deen.drop_last_stage": True}, "sysu": {"train.erasing_area": [0.2, 0.8]}},
    published={"all-single": "deen.sysu_all", "indoor-single": "deen.sysu_indoor",
               "v2t": "deen.regdb_v2t", "t2v": "deen.regdb_t2v",
               "ir2vis": "deen.llcm_ir2vis", "vis2ir": "deen.llcm_vis2ir"},
    notes=DEEN_CODE_NOTES,
)
def convert_deen_code(state: Mapping[str, torch.Tensor]) -> Converted:
    """embed_net(n, 'sysu' | 'llcm') or embed_net(n, 'regdb') (no MFA3) -> the harness's DEEN network names."""
    rules = DEEN_CODE_RULES if any(key.startswith("MFA3.") for key in state) else DEEN_CODE_REGDB_RULES
    return rules(state)
