"""`vireid import-checkpoint --from deen`: the DEEN code's checkpoints as saved models of method `deen`.

The source network's key names and shapes are data (tests/data/deen_code_embed_net_resnet50*.txt, read
from the authors' instantiated `embed_net(n, 'sysu')` and `embed_net(n, 'regdb')`); the reference
forward below is the authors' eval forward written out with torch.nn.functional over THEIR key names,
independent of the harness's modules: the imported model must compute the same test features from the
same tensors, and every tensor must land where an independent table of the two networks puts it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.cli import main

DATA = Path(__file__).parent / "data"
KEYS = {"full": DATA / "deen_code_embed_net_resnet50.txt", "regdb": DATA / "deen_code_embed_net_resnet50_regdb.txt"}
CLASSES = {"full": 395, "regdb": 206}
USED = ("visible_module.visible.conv1.", "visible_module.visible.bn1.", "thermal_module.thermal.conv1.",
        "thermal_module.thermal.bn1.", "base_resnet.base.layer", "MFA", "DEE.", "bottleneck.", "classifier.")
RESNET50_STAGES = ((1, 3, 1), (2, 4, 2), (3, 6, 2), (4, 3, 1))  # (stage, blocks, stride): last_conv_stride=1
MFA_STRIDE = {1: 1, 2: 2, 3: 2}  # MFA_block(256, 64, flag=0), (512, 256, 1), (1024, 512, 1): flag 1 strides by 2
LAST_STAGE = {"full": 4, "regdb": 3}  # the RegDB network stops after layer3 (no MFA3, DEE after MFA2)
HEIGHT, WIDTH = 64, 32


def authors_shapes(network: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in KEYS[network].read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split()
            shapes[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return shapes


def used(network: str, key: str) -> bool:
    """Whether the authors' forward reads the tensor (the RegDB network saves layer4, never runs it)."""
    return key.startswith(USED) and not (network == "regdb" and key.startswith("base_resnet.base.layer4."))


def authors_state(network: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Their keys and shapes; random values where the forward reads them (BN statistics: `calibrate`)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in authors_shapes(network).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif not used(network, key):  # never read: one shared zero, no memory
            state[key] = torch.zeros(()).expand(shape)
        elif len(shape) == 4:  # convolutions: variance 1 / fan_in
            state[key] = torch.randn(shape, generator=generator) / np.sqrt(np.prod(shape[1:]))
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif re.fullmatch(r"MFA\d\.(CNL|PNL)\.W\.1\.weight", key):  # the attention is cubic in its input:
            state[key] = 0.02 + 0.03 * torch.rand(shape, generator=generator)  # small, so 3 MFAs stay finite
        elif key.endswith("weight") and len(shape) == 1:
            state[key] = 0.2 + 0.6 * torch.rand(shape, generator=generator)
        else:  # BN bias / running_mean, conv biases, the classifier
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    return state


# ------------------------------------------------------------------ the authors' forward, written out


def _conv(x, sd, prefix, **options):
    return F.conv2d(x, sd[prefix + "weight"], sd.get(prefix + "bias"), **options)


def _bn(x, sd, prefix, calibrate=False):
    if calibrate:  # statistics of this input, as training leaves them
        dims = [0, *range(2, x.dim())]
        sd[prefix + "running_mean"], sd[prefix + "running_var"] = x.mean(dims), x.var(dims)
    return F.batch_norm(x, sd[prefix + "running_mean"], sd[prefix + "running_var"], sd[prefix + "weight"],
                        sd[prefix + "bias"], training=False, eps=1e-5)


def _bottleneck(x, sd, prefix, stride, cal):
    out = F.relu(_bn(_conv(x, sd, prefix + "conv1."), sd, prefix + "bn1.", cal))
    out = F.relu(_bn(_conv(out, sd, prefix + "conv2.", stride=stride, padding=1), sd, prefix + "bn2.", cal))
    out = _bn(_conv(out, sd, prefix + "conv3."), sd, prefix + "bn3.", cal)
    if prefix + "downsample.0.weight" in sd:
        x = _bn(_conv(x, sd, prefix + "downsample.0.", stride=stride), sd, prefix + "downsample.1.", cal)
    return F.relu(out + x)


def _channel_non_local(x_h, x_l, sd, prefix, stride, cal):
    """CNL: (C_l x C_l) attention between channels, energy / C_l; phi and W stride to x_h's size."""
    b, low = x_l.shape[:2]
    g = _conv(x_l, sd, prefix + "g.").flatten(2)
    theta = _conv(x_h, sd, prefix + "theta.").flatten(2)
    phi = _conv(x_l, sd, prefix + "phi.", stride=stride).flatten(2)
    y = (theta @ phi.transpose(1, 2) / low @ g).view(b, low, *x_l.shape[2:])
    return x_h + _bn(_conv(y, sd, prefix + "W.0.", stride=stride), sd, prefix + "W.1.", cal)


def _pixel_non_local(x_h, x_l, sd, prefix, cal):
    """PNL: every (C_l / 2, H, W) map read as C_l rows of H W / 2 values, attention over x_l's rows."""
    b, low = x_l.shape[:2]
    g = _conv(x_l, sd, prefix + "g.").reshape(b, low, -1).transpose(1, 2)
    theta = _conv(x_h, sd, prefix + "theta.").reshape(b, low, -1).transpose(1, 2)
    phi = _conv(x_l, sd, prefix + "phi.").reshape(b, low, -1)
    energy = theta @ phi
    y = (energy / energy.shape[-1] @ g).transpose(1, 2).reshape(b, low // 2, *x_h.shape[2:])
    return x_h + _bn(_conv(y, sd, prefix + "W.0."), sd, prefix + "W.1.", cal)


def _diverse_embeddings(x, sd):
    """DEE: two branches (mean of the dilation 1, 2, 3 convolutions, ReLU, 1x1), stacked after x on the batch."""
    out = [x]
    for branch in (1, 2):
        mean = sum(_conv(x, sd, f"DEE.FC{branch}{d}.", padding=d, dilation=d) for d in (1, 2, 3)) / 3
        out.append(_conv(F.relu(mean), sd, f"DEE.FC{branch}."))
    return torch.cat(out, 0)


def _stem(sd, images, infrared: bool, calibrate=False):
    stem = "thermal_module.thermal." if infrared else "visible_module.visible."
    x = F.relu(_bn(_conv(images, sd, stem + "conv1.", stride=2, padding=3), sd, stem + "bn1.", calibrate))
    return F.max_pool2d(x, 3, 2, 1)


def _trunk(sd, x_in, network: str, calibrate=False):
    last = LAST_STAGE[network]
    for stage, blocks, stride in RESNET50_STAGES[:last]:
        x = x_in
        for i in range(blocks):
            x = _bottleneck(x, sd, f"base_resnet.base.layer{stage}.{i}.", stride if i == 0 else 1, calibrate)
        if stage < last:  # MFA<stage> from the stage's output to its input, then DEE after the last one
            z = _channel_non_local(x, x_in, sd, f"MFA{stage}.CNL.", MFA_STRIDE[stage], calibrate)
            x_in = _pixel_non_local(z, x_in, sd, f"MFA{stage}.PNL.", calibrate)
            if stage == last - 1:
                x_in = _diverse_embeddings(x_in, sd)
    pool = x.mean(dim=(2, 3))
    return pool, _bn(pool, sd, "bottleneck.", calibrate)


def authors_forward(sd, images, infrared: bool, network: str):
    """x_pool and bottleneck(x_pool) of embed_net.eval()(x, x, modal=2 if infrared else 1): 3 B rows each."""
    return _trunk(sd, _stem(sd, images, infrared), network)


def calibrate(sd, visible, infrared, network: str) -> None:
    """BN statistics as training leaves them: those of a training forward (both stems, then the shared trunk)."""
    _trunk(sd, torch.cat([_stem(sd, visible, False, True), _stem(sd, infrared, True, True)]), network, True)


def authors_test_feature(sd, images, infrared, network):
    """test.py's six features of each image, side by side: l2norm(pool_k), l2norm(bn_k) for embeddings k = 0..2."""
    pool, feat = authors_forward(sd, images, infrared, network)
    b = images.shape[0]
    return torch.cat([F.normalize(part[k * b:(k + 1) * b], dim=1) for k in range(3) for part in (pool, feat)], 1)


# ------------------------------------------------------------------ fixtures


def _save_checkpoint(path: Path, network: str) -> dict[str, torch.Tensor]:
    """What DEEN's train.py saves: {'net': state_dict, 'cmc', 'mAP', 'mINP', 'epoch'} (numpy metrics)."""
    state = authors_state(network, seed=1 if network == "regdb" else 0)
    calibration = torch.randn(8, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        calibrate(state, calibration[:4], calibration[4:], network)
    torch.save({"net": state, "cmc": np.linspace(0.55, 0.99, 60), "mAP": np.float64(0.62), "mINP": np.float64(0.5),
                "epoch": 37}, path)
    return state


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for network in ("full", "regdb"):
        path = folder / f"{'llcm' if network == 'full' else 'regdb'}_deen_p4_n6_lr_0.1_seed_0_best.t"
        out[network] = (path, _save_checkpoint(path, network))
    return out


@pytest.fixture(scope="module")
def imported(checkpoints, tmp_path_factory):
    from harness.checkpoint_import import import_checkpoint

    folder = tmp_path_factory.mktemp("models")
    size = {"data.height": HEIGHT, "data.width": WIDTH}
    return {"full": import_checkpoint("deen", checkpoints["full"][0], folder / "deen-llcm.safetensors",
                                      dataset="llcm", overrides=size),
            "regdb": import_checkpoint("deen", checkpoints["regdb"][0], folder / "deen-regdb", dataset="regdb",
                                       overrides=size)}


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("network", ["full", "regdb"])
def test_imported_model_computes_the_authors_test_features(checkpoints, imported, network):
    from harness.saved_models import load_method, read_model

    state = checkpoints[network][1]
    method = load_method(read_model(imported[network][0])).eval()  # rebuilt from the card, as eval / extract do
    images = torch.randn(3, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    features = {}
    for infrared in (False, True):
        reference = authors_test_feature(state, images, infrared, network)
        with torch.inference_mode():
            ours = method.test_features(images, torch.full((3,), int(infrared)))
        assert ours.shape == (3, 6 * (2048 if network == "full" else 1024))
        torch.testing.assert_close(ours, reference, rtol=0, atol=2e-5)
        assert (reference[0] - reference[1]).abs().max() > 1e-2  # the features carry the image
        parts = reference.view(3, 6, -1)
        assert (parts[:, 0] - parts[:, 2]).abs().max() > 1e-2  # the generated embeddings differ from the original
        assert (parts[:, 2] - parts[:, 4]).abs().max() > 1e-2  # and from each other: DEE's branches kept apart
        features[infrared] = reference
    assert (features[False] - features[True]).abs().max() > 1e-2  # each stem in its own branch
    # the MFA blocks' share of the features is far above the tolerance: a misplaced one would fail the test
    without_mfa = {k: torch.zeros_like(v) if re.fullmatch(r"MFA\d\.(CNL|PNL)\.W\.1\.(weight|bias)", k) else v
                   for k, v in state.items()}
    assert (authors_test_feature(without_mfa, images, True, network) - features[True]).abs().max() > 1e-3


def _target(network: str, key: str) -> str:
    """Where the harness keeps the authors' tensor `key`: a table of the two networks, written out by module."""
    trunk, last = "net.backbone.model.", LAST_STAGE[network]
    head, _, rest = key.partition(".")
    if head in ("visible_module", "thermal_module"):
        module, leaf = rest.split(".", 2)[1:]  # visible.conv1.weight -> conv1, weight
        return f"{trunk}{module}.branches.{0 if head == 'visible_module' else 1}.{leaf}"
    if head == "base_resnet":
        layer, tail = rest[len("base."):].split(".", 1)
        return f"{trunk}{layer}.{'stage.' if int(layer[-1]) < last else ''}{tail}"
    if head.startswith("MFA"):
        return f"{trunk}layer{head[3]}.mfa.{rest}"
    if head == "DEE":
        conv, leaf = rest.split(".")
        branch = int(conv[2]) - 1
        inner = f"dilated.{int(conv[3]) - 1}" if len(conv) == 4 else "project"
        return f"{trunk}layer{last - 1}.dee.branches.{branch}.{inner}.{leaf}"
    return {"bottleneck": "net.neck.bn.", "classifier": "net.neck.classifier."}[head] + rest


@pytest.mark.parametrize("network", ["full", "regdb"])
def test_every_tensor_lands_where_the_authors_had_it(checkpoints, imported, network):
    from safetensors.torch import load_file

    state = checkpoints[network][1]
    saved = load_file(str(imported[network][0]))
    targets = {key: _target(network, key) for key in state if used(network, key)}
    assert set(targets.values()) == set(saved)  # one-to-one: every harness tensor comes from the checkpoint
    for key, target in targets.items():
        assert torch.equal(saved[target], state[key]), key
    # 3 x 318 ResNet-50 tensors, 13 per non-local block, 10 of DEE, 6 of the neck; the two stem copies' stages and
    # base_resnet's stem (2 x 312 + 6) are dropped, and the RegDB network's unused layer4 (60 tensors) too
    block = imported[network][1]
    mfa_blocks = 3 if network == "full" else 2
    assert block["tensors"] + block["dropped"] == len(authors_shapes(network)) == 3 * 318 + 2 * mfa_blocks * 13 + 16
    assert block["dropped"] == 2 * 312 + 6 + (60 if network == "regdb" else 0)
    assert block["initialised_tensors"] == [] and block["optional_absent"] == []


def test_card_names_source_recipe_and_what_the_code_implies_per_dataset(checkpoints, imported):
    from harness.provenance import file_sha256

    for network, dataset, classes in (("full", "llcm", 395), ("regdb", "regdb", 206)):
        weights, block = imported[network]
        card = json.loads(weights.with_suffix(".json").read_text())
        assert card["method"] == "deen" and card["dataset"] == dataset and card["num_classes"] == classes
        assert block["recipe"] == "deen-authors" and "ZYK100/LLCM" in block["source"]
        assert block["sha256"] == file_sha256(checkpoints[network][0])
        deen = card["config"]["deen"]
        assert deen["drop_last_stage"] is (network == "regdb") and block["config"]["deen.drop_last_stage"] is (
            network == "regdb")
        assert deen["pnl_reshape"] == "authors-code" and deen["test_branches"] == "all"
        assert card["config"]["evaluation"]["flip"] is True and card["config"]["data"]["test_resize"] == "lanczos"
        assert card["config"]["train"]["epochs"] == 151  # the recipe's
        assert block["checkpoint_record"] == {"epoch": 37, "rank1": 55.0, "rank5": pytest.approx(57.9831, abs=1e-3),
                                              "rank10": pytest.approx(61.7119, abs=1e-3),
                                              "rank20": pytest.approx(69.1695, abs=1e-3), "mAP": 62.0, "mINP": 50.0}
        assert block["published"] == {"all-single": "deen.sysu_all", "indoor-single": "deen.sysu_indoor",
                                      "v2t": "deen.regdb_v2t", "t2v": "deen.regdb_t2v",
                                      "ir2vis": "deen.llcm_ir2vis", "vis2ir": "deen.llcm_vis2ir"}


def test_sysu_import_records_the_codes_sysu_erasing(checkpoints, tmp_path):
    from harness.checkpoint_import import import_checkpoint

    weights, _ = import_checkpoint("deen", checkpoints["full"][0], tmp_path / "sysu", dataset="sysu",
                                   overrides={"data.height": HEIGHT, "data.width": WIDTH})
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["config"]["train"]["erasing_area"] == [0.2, 0.8] and card["num_cameras"] == 6


def _shape_only(network: str) -> dict[str, torch.Tensor]:
    return {k: torch.zeros((), dtype=torch.long if k.endswith("num_batches_tracked") else torch.float).expand(s)
            for k, s in authors_shapes(network).items()}  # refused before any value is read: shapes are enough


def test_incomplete_misshapen_or_other_network_checkpoints_are_refused_naming_keys(tmp_path, capsys):
    full, regdb = _shape_only("full"), _shape_only("regdb")
    cases = {
        "missing": ("llcm", {k: v for k, v in full.items() if not k.startswith("MFA2.PNL.")},
                    ["missing", "layer2.mfa.PNL.g.{bias,weight}", "layer2.mfa.PNL.W.1."]),
        "shapes": ("llcm", {**full, "DEE.FC12.weight": torch.zeros(128, 1024, 3, 3)},
                   ["DEE.FC12.weight (128, 1024, 3, 3)", "expected (256, 1024, 3, 3)"]),
        "unknown": ("llcm", {**full, "DEE.FC31.weight": torch.zeros(256, 1024, 3, 3)}, ["DEE.FC31.weight"]),
        # a SYSU / LLCM network under --dataset regdb, and the RegDB network under --dataset sysu
        "full as regdb": ("regdb", full, ["without a place", "DEE.FC11.weight", "missing",
                                          "layer2.dee.branches.0.dilated.0.weight"]),
        "regdb as sysu": ("sysu", regdb, ["missing", "layer3.dee.branches.0.dilated.0.weight", "DEE.FC11.weight"]),
    }
    for name, (dataset, content, named) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.t"
        torch.save({"net": content, "epoch": 1}, path)
        assert main(["import-checkpoint", "--from", "deen", str(path), str(tmp_path / "out"), "--dataset",
                     dataset]) == 2, name
        err = capsys.readouterr().err
        assert str(path) in err and all(n in err for n in named), (name, err)
    assert not list(tmp_path.glob("out*"))


def test_eval_prints_the_published_llcm_numbers_beside_the_imported_model(imported, tmp_path, capsys):
    """vireid eval on an LLCM-layout tree (generated images, the LLCM loader) under both official directions."""
    root = tmp_path / "llcm"
    assert main(["data", "synth", "--layout", "llcm", str(root), "--identities", "6", "--images-per-camera", "1",
                 "--height", str(HEIGHT), "--width", str(WIDTH)]) == 0
    assert main(["eval", str(imported["full"][0]), "--results-dir", str(tmp_path), "--quiet", "--set",
                 f"data.root={root}", "--set", "data.gallery_trials=1"]) == 0
    out = capsys.readouterr().out
    # the published entries carry a source label ("README LLCM update"), printed in the table, not as a number
    assert ("ir2vis rank1 55.52, rank10 83.88, rank20 89.98, mAP 62.07; "
            "vis2ir rank1 69.21, rank10 90.95, rank20 95.07, mAP 55.52") in out
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "deen (published)" in table and "55.52" in table and "69.21" in table
