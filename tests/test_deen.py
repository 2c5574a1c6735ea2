"""DEEN: its modules and losses against references written from the formulas, its network and switches."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from harness.config import TrialConfig
from harness.errors import ConfigError, HarnessError, InputError
from harness.evaluation import evaluate_trials, pairwise_distance
from harness.preflight import check_buildable
from harness.provenance import config_key
from methods import create_method
from methods.deen import DEEN, trace_stages
from methods.deen_losses import cpm_loss, hard_triplet_loss, orthogonality_loss
from methods.deen_modules import CNL, PNL, DEEModule, MFABlock


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)


def _randomise_bn(module: torch.nn.Module) -> None:
    """Non-trivial eval-mode batch norms (the blocks start with a zero BN, i.e. as the identity)."""
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)


def _conv1x1(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution (any stride) written as a matrix product per position."""
    s = conv.stride[0]
    x = x[:, :, ::s, ::s]
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + conv.bias.view(1, -1, 1, 1)


def _bn_eval(bn: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(
        shape) + bn.bias.view(shape)


# ---------------------------------------------------------------- modules


def test_dee_stacks_the_input_and_the_branches_of_averaged_dilated_convolutions():
    module = DEEModule(8, branches=3, dilations=(1, 2), reduction=2, dropout=0.5).double().eval()
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    expected = [x]
    for branch in module.branches:
        inner = sum(F.conv2d(x, conv.weight, padding=d, dilation=d)
                    for conv, d in zip(branch.dilated, (1, 2))) / 2
        expected.append(F.conv2d(torch.relu(inner), branch.project.weight, branch.project.bias))
    with torch.no_grad():
        torch.testing.assert_close(module(x), torch.cat(expected))
    module.train()
    assert module(x).shape == (8, 8, 6, 5)  # dropout in training, on the whole expanded batch


@pytest.mark.parametrize("stride", [1, 2])
def test_cnl_matches_the_channel_attention_formula(stride):
    block = CNL(6, 4, stride).double().eval()
    _randomise_bn(block)
    x_h = torch.randn(2, 6, 3, 2, dtype=torch.float64)
    x_l = torch.randn(2, 4, 3 * stride, 2 * stride, dtype=torch.float64)
    g, theta, phi = (_conv1x1(c, x) for c, x in ((block.g, x_l), (block.theta, x_h), (block.phi, x_l)))
    attention = torch.einsum("bcn,bdn->bcd", theta.flatten(2), phi.flatten(2)) / 4  # / the low channels
    y = torch.einsum("bcd,bdhw->bchw", attention, g)
    expected = x_h + _bn_eval(block.W[1], _conv1x1(block.W[0], y))
    with torch.no_grad():
        torch.testing.assert_close(block(x_h, x_l), expected)


def _pnl_rows(maps: torch.Tensor, layout: str, low: int) -> torch.Tensor:
    """(B, C', H, W) -> (B, rows, features) by explicit indexing.

    per-position: one row per position, its C' values. authors-code: the maps read as (low, C'HW/low):
    with H W = h * (HW/h) for h = low / C' pieces, feature f of row j is piece f % h of channel f // h.
    """
    batch, channels, height, width = maps.shape
    flat = maps.reshape(batch, channels, height * width)
    if layout == "per-position":
        return flat.transpose(1, 2)
    pieces = low // channels
    length = height * width // pieces
    features = [flat[:, f // pieces, (f % pieces) * length:(f % pieces + 1) * length] for f in range(low)]
    return torch.stack(features, dim=2)


@pytest.mark.parametrize("layout", ["per-position", "authors-code"])
def test_pnl_matches_the_position_attention_formula(layout):
    block = PNL(5, 4, reshape=layout).double().eval()
    _randomise_bn(block)
    x_h = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    x_l = torch.randn(2, 4, 4, 3, dtype=torch.float64)
    g = _pnl_rows(_conv1x1(block.g, x_l), layout, 4)
    theta = _pnl_rows(_conv1x1(block.theta, x_h), layout, 4)
    phi = _pnl_rows(_conv1x1(block.phi, x_l), layout, 4)
    attention = theta @ phi.transpose(1, 2) / phi.shape[1]
    rows = attention @ g  # (B, rows of x_h, features)
    if layout == "per-position":
        y = rows.transpose(1, 2).reshape(2, 2, 2, 3)
    else:  # the inverse reading: feature f of row j back to channel f // 2, piece f % 2
        flat = torch.empty(2, 2, 6, dtype=torch.float64)
        for f in range(4):
            flat[:, f // 2, (f % 2) * 3:(f % 2 + 1) * 3] = rows[:, :, f]
        y = flat.view(2, 2, 2, 3)
    expected = x_h + _bn_eval(block.W[1], _conv1x1(block.W[0], y))
    with torch.no_grad():
        torch.testing.assert_close(block(x_h, x_l), expected)


@pytest.mark.parametrize("train", [False, True])
def test_mfa_starts_as_the_identity_on_the_stage_output(train):
    block = MFABlock(6, 4, 2).train(train)
    x_h, x_l = torch.randn(3, 6, 4, 2), torch.randn(3, 4, 8, 4)
    torch.testing.assert_close(block(x_h, x_l), x_h, rtol=0, atol=0)


# ---------------------------------------------------------------- losses


def _reference_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp(((a - b) ** 2).sum(), min=1e-12))


def _reference_triplet(features, labels, margin):
    losses, n = [], len(labels)
    for i in range(n):
        positives = [_reference_distance(features[i], features[j]) for j in range(n) if labels[j] == labels[i]]
        negatives = [_reference_distance(features[i], features[j]) for j in range(n) if labels[j] != labels[i]]
        losses.append(torch.clamp(max(positives) - min(negatives) + margin, min=0))
    return sum(losses) / len(losses)


def test_hard_triplet_hand_computed():
    features = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: ap 3, an 1 -> 2.3; anchor 1: ap 3, an 2 -> 1.3; anchor 2: ap sqrt5, an 1 -> sqrt5-0.7;
    # anchor 3: ap sqrt5, an 2 -> sqrt5-1.7
    expected = (2.3 + 1.3 + (5 ** 0.5 - 0.7) + (5 ** 0.5 - 1.7)) / 4
    assert hard_triplet_loss(features, labels, margin=0.3).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_hard_triplet_matches_the_loop_reference_in_value_and_gradient(seed):
    torch.manual_seed(seed)
    features = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2] * 2)
    loss = hard_triplet_loss(features, labels, margin=0.3)
    expected = _reference_triplet(features, labels, 0.3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(torch.autograd.grad(loss, features)[0], torch.autograd.grad(expected, features)[0])


def test_hard_triplet_single_identity_is_zero_and_attached():
    features = torch.randn(4, 3, requires_grad=True)
    loss = hard_triplet_loss(features, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(features.grad).all()


def _reference_cpm(original, generated, labels, modality, margin):
    ids = sorted(set(labels.tolist()))

    def center(feats, k, m):
        rows = [i for i in range(len(labels)) if labels[i] == k and modality[i] == m]
        return sum(feats[i] for i in rows) / len(rows)

    def hinge(positive, negative):
        return torch.clamp(positive - negative + margin, min=0)

    sides = []
    for own_m in (0, 1):
        other_m = 1 - own_m
        terms = []
        for k in ids:
            gen = center(generated, k, own_m)
            positive = _reference_distance(center(original, k, other_m), gen)
            own = _reference_distance(center(original, k, own_m), gen).detach()
            nearest_gen = min(_reference_distance(gen, center(generated, j, own_m)) for j in ids if j != k)
            nearest_own = min(_reference_distance(center(original, k, own_m), center(original, j, own_m))
                              for j in ids if j != k)
            terms.append((hinge(positive, own), hinge(positive, nearest_gen), hinge(positive, nearest_own)))
        first, second, third = (sum(t[i] for t in terms) / len(ids) for i in range(3))
        sides.append(first + 0.5 * (second + third))
    return (sides[0] + sides[1]) / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpm_matches_the_loop_reference_in_value_and_gradient(seed):
    torch.manual_seed(seed)
    labels = torch.tensor([3, 3, 7, 7, 1, 1, 3, 3, 7, 7, 1, 1])
    modality = torch.tensor([0] * 6 + [1] * 6)
    original = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    generated = (original.detach() + 0.5 * torch.randn(12, 6, dtype=torch.float64)).requires_grad_(True)
    loss = cpm_loss(original, generated, labels, modality, margin=0.2)
    expected = _reference_cpm(original, generated, labels, modality, 0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    for got, want in zip(torch.autograd.grad(loss, (original, generated)),
                         torch.autograd.grad(expected, (original, generated))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_cpm_does_not_depend_on_the_row_order():
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    modality = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    original, generated = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    permutation = torch.randperm(8)
    assert cpm_loss(original, generated, labels, modality).item() == pytest.approx(
        cpm_loss(original[permutation], generated[permutation], labels[permutation],
                 modality[permutation]).item(), rel=1e-12)


def test_cpm_hand_computed_one_dimension():
    # identities 0, 1; visible original 0 / 10, infrared original 1 / 11, generated-from-visible 0.5 / 10.5,
    # generated-from-infrared 0.5 / 10.5 (one sample each). Visible side: positive d(r, gv) = 0.5,
    # own d(v, gv) = 0.5 -> 0.2; nearest generated 10 -> 0; nearest visible 10 -> 0. Same on the infrared side.
    labels, modality = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    original = torch.tensor([[0.0], [10.0], [1.0], [11.0]], dtype=torch.float64)
    generated = torch.tensor([[0.5], [10.5], [0.5], [10.5]], dtype=torch.float64)
    assert cpm_loss(original, generated, labels, modality, margin=0.2).item() == pytest.approx(0.2, rel=1e-9)


def test_cpm_refuses_modality_values_outside_0_1():
    with pytest.raises(InputError, match="modality"):
        cpm_loss(torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 2, 2]))


def test_orthogonality_hand_computed_and_against_pair_sum():
    generated = torch.tensor([[[1.0, 2.0], [0.0, 1.0]], [[3.0, -1.0], [2.0, 2.0]]], dtype=torch.float64)
    # <(1,2),(3,-1)> = 1, <(0,1),(2,2)> = 2: sum 3 over M*N = 4 embeddings, or over (M+1)*N = 6
    assert orthogonality_loss(generated).item() == pytest.approx(0.75)
    assert orthogonality_loss(generated, embeddings=6).item() == pytest.approx(0.5)
    many = torch.randn(4, 5, 3, dtype=torch.float64)
    pairs = sum((many[a] * many[b]).sum() for a, b in itertools.combinations(range(4), 2))
    assert orthogonality_loss(many).item() == pytest.approx(pairs.item() / 20, rel=1e-12)


def test_losses_read_nothing_back_from_the_device():
    meta = torch.device("meta")
    features = torch.empty(16, 8, device=meta, requires_grad=True)
    labels = torch.empty(16, dtype=torch.long, device=meta)
    modality = torch.empty(8, dtype=torch.long, device=meta)
    total = (hard_triplet_loss(features, labels) + cpm_loss(features[:8], features[8:], labels[:8], modality)
             + orthogonality_loss(features.view(2, 8, 8)))
    assert torch.autograd.grad(total, features)[0].shape == features.shape


# ---------------------------------------------------------------- network and method


def _cfg(method: str = "deen", backbone: str = "test_resnet", **deen) -> TrialConfig:
    return TrialConfig.from_dict({"method": method, "model": {"backbone": backbone, "non_local": False},
                                  "data": {"height": 64, "width": 32}, "deen": deen})


def test_the_stages_are_the_feature_stages_outside_the_stem():
    stages = trace_stages("resnet50", 384, 144)
    assert [s.name for s in stages] == ["layer1", "layer2", "layer3", "layer4"]
    assert [s.output_shape for s in stages] == [(256, 96, 36), (512, 48, 18), (1024, 24, 9), (2048, 24, 9)]
    assert [s.stride for s in stages] == [1, 2, 2, 1]  # last stride one


def test_deen_on_resnet50_places_mfa_after_three_stages_and_dee_after_the_third():
    method = create_method(TrialConfig.from_dict({"method": "deen", "data": {"height": 384, "width": 144}}), 4, 2)
    model = method.net.backbone.model
    assert [type(model.get_submodule(n)).__name__ for n in ("layer1", "layer2", "layer3", "layer4")] == [
        "ExpandedStage", "ExpandedStage", "ExpandedStage", "Sequential"]
    mfa = [(model.get_submodule(n).mfa.CNL.theta.in_channels, model.get_submodule(n).mfa.CNL.g.in_channels,
            model.get_submodule(n).mfa.CNL.phi.stride[0]) for n in ("layer1", "layer2", "layer3")]
    assert mfa == [(256, 64, 1), (512, 256, 2), (1024, 512, 2)]  # (high, low, stride) as the authors' blocks
    assert model.layer3.dee is not None and model.layer1.dee is None and model.layer2.dee is None
    assert model.layer3.dee.branches[0].dilated[0].out_channels == 256
    assert method.net.feature_dim == 2048


def test_drop_last_stage_is_the_authors_regdb_network():
    method = create_method(TrialConfig.from_dict({"method": "deen", "data": {"height": 384, "width": 144},
                                                  "deen": {"drop_last_stage": True}}), 4, 2)
    model = method.net.backbone.model
    assert isinstance(model.layer4, torch.nn.Identity) and isinstance(model.layer3, torch.nn.Sequential)
    assert model.layer2.dee is not None and model.layer2.dee.branches[0].project.out_channels == 512
    assert method.net.feature_dim == 1024


def test_training_forward_expands_the_batch_and_the_test_feature_sums_part_cosines():
    method = create_method(_cfg(), 5, 2)
    images, modality = torch.randn(8, 3, 64, 32), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    out = method(images, modality)
    assert out["pool"].shape[0] == 24 and out["logits"].shape == (24, 5)
    method.eval()
    with torch.no_grad():
        out = method(images, modality)
        features = method.test_features(images, modality)
    dim = method.net.feature_dim
    assert features.shape == (8, 6 * dim) and method.test_similarity == "dot"
    parts = [F.normalize(out[key][k * 8:(k + 1) * 8], dim=1) for k in range(3) for key in ("pool", "bn")]
    expected = sum(p[:4] @ p[4:].T for p in parts)  # the authors' distmat7: six cosines added
    torch.testing.assert_close(features[:4] @ features[4:].T, expected, rtol=1e-5, atol=1e-5)


def test_test_weights_give_the_authors_weighted_similarity():
    method = create_method(_cfg(test_weights=[0.1, 0.9]), 5, 2).eval()
    images, modality = torch.randn(4, 3, 64, 32), torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        out, features = method(images, modality), method.test_features(images, modality)
    unit = {key: [F.normalize(out[key][k * 4:(k + 1) * 4], dim=1) for k in range(3)] for key in ("pool", "bn")}
    cos = {key: sum(u[:2] @ u[2:].T for u in parts) for key, parts in unit.items()}
    torch.testing.assert_close(features[:2] @ features[2:].T, 0.1 * cos["pool"] + 0.9 * cos["bn"],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method, terms", [("deen", {"ce", "triplet", "cpm", "ort"}), ("deen-base", {"ce", "triplet"}),
                                           ("deen-no-cpm", {"ce", "triplet", "ort"}),
                                           ("deen-base+dee+cpm", {"ce", "triplet", "cpm"})])
def test_switches_choose_the_loss_terms(method, terms):
    deen = create_method(_cfg(method), 4, 2)
    losses = deen.training_losses(torch.randn(8, 3, 64, 32), torch.tensor([0] * 4 + [1] * 4),
                                  torch.tensor([0, 0, 1, 1] * 2), torch.zeros(8, dtype=torch.long))
    assert set(losses) == terms
    sum(losses.values()).backward()


def test_the_modules_learn_at_the_backbone_rate_and_the_neck_at_the_head_rate():
    method = create_method(_cfg().with_overrides({"train.lr": 0.01, "train.head_lr": 0.1}), 4, 2)
    groups = {g["name"]: g for g in method.param_groups()}
    assert (groups["backbone"]["lr"], groups["head"]["lr"]) == (0.01, 0.1)
    backbone_ids = {id(p) for p in groups["backbone"]["params"]}
    model = method.net.backbone.model
    assert all(id(p) in backbone_ids for p in model.layer3.dee.parameters())
    assert all(id(p) in backbone_ids for p in model.layer1.mfa.parameters())
    assert len(backbone_ids) + len(groups["head"]["params"]) == sum(p.requires_grad for p in method.parameters())


@pytest.mark.parametrize("method, deen, fragment", [
    ("deen-base+cpm", {}, "switch dee on"),
    ("deen", {"branches": 1}, "deen.branches=1"),
    ("deen-base+dee+gan", {}, "unknown switch 'gan'"),
])
def test_bad_switches_are_refused_before_training(method, deen, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_buildable(_cfg(method, **deen))


@pytest.mark.parametrize("backbone, deen, fragment", [
    ("test_vit", {}, "need \\(B, C, H, W\\) maps"),
    ("test_efficientnet", {"drop_last_stage": True}, "layers after its last stage"),
])
def test_networks_deen_cannot_sit_on_are_refused_before_training(backbone, deen, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_buildable(_cfg(backbone=backbone, **deen))


def test_an_input_size_the_authors_pnl_cannot_read_is_refused_naming_the_option():
    # 36x36 on test_resnet: layer1 sees 9x9 maps of 32 channels; 16 x 81 values are not 32 equal rows
    cfg = TrialConfig.from_dict({"method": "deen", "model": {"backbone": "test_resnet"},
                                 "data": {"height": 36, "width": 36}})
    with pytest.raises(ConfigError, match="deen.pnl_reshape=per-position"):
        check_buildable(cfg)
    check_buildable(cfg.with_overrides({"deen.pnl_reshape": "per-position"}))


def test_deen_builds_on_other_convolutional_families():
    for backbone in ("test_convnext", "test_efficientnet"):
        check_buildable(_cfg(backbone=backbone))
        assert isinstance(create_method(_cfg(backbone=backbone), 3, 2), DEEN)


def test_the_deen_section_at_its_default_leaves_existing_keys_alone():
    from harness.config_schema import fill_added_keys
    from harness.provenance import keyed_config

    agw = TrialConfig.from_dict({"method": "agw"})
    assert "deen" not in keyed_config(agw)  # a section added later: out of the key at its default
    assert "deen" in keyed_config(agw.with_overrides({"deen.cpm_weight": 0.5}))
    assert fill_added_keys(TrialConfig, {"method": "agw"})["deen"] == TrialConfig().to_dict()["deen"]
    deen = TrialConfig.from_dict({"method": "deen"})
    assert config_key(deen) != config_key(deen.with_overrides({"deen.cpm_weight": 0.5}))


# ---------------------------------------------------------------- evaluation of "dot" features


def test_flip_averaging_of_dot_features_adds_the_views_normalised_parts_as_the_authors_test_code():
    from harness.trial import extract_features

    method = create_method(_cfg(), 5, 2).eval()
    images = torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8)
    modality = torch.tensor([0, 0, 1, 1])
    feats, _ = extract_features(method, images, modality.numpy(), device=torch.device("cpu"), batch_size=3,
                                amp="none", channels_last=False, flip=True, similarity=method.test_similarity)
    from harness.data.augment import normalize

    with torch.no_grad():
        x = normalize(images)
        out, mirrored = method(x, modality), method(x.flip(-1), modality)
    # test.py: feat = l2norm(pool(x)) + l2norm(pool(flip x)) per embedding (and the same for BN); its distmat7
    # sums the six parts' dot products, which is the dot product of the concatenated sums
    parts = [F.normalize(a[key][k * 4:(k + 1) * 4], dim=1) + F.normalize(b[key][k * 4:(k + 1) * 4], dim=1)
             for k in range(3) for key in ("pool", "bn") for a, b in [(out, mirrored)]]
    distmat7 = sum(p[:2] @ p[2:].T for p in parts)
    torch.testing.assert_close(4 * feats[:2] @ feats[2:].T, distmat7, rtol=1e-5, atol=1e-5)


def test_dot_similarity_ranks_by_the_plain_dot_product():
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[2.0, 1.0], [0.9, 0.0]])  # cosine prefers gallery 1, the dot product gallery 0
    assert pairwise_distance(query, gallery).argmin().item() == 1
    assert pairwise_distance(query, gallery, similarity="dot").argmin().item() == 0
    result = evaluate_trials(query, gallery, [0], [0, 1], [0], [1, 2], [[True, True]], protocol="regdb",
                             similarity="dot")
    assert result["mAP_mean"] == pytest.approx(1.0)
    result = evaluate_trials(query, gallery, [0], [0, 1], [0], [1, 2], [[True, True]], protocol="regdb")
    assert result["mAP_mean"] == pytest.approx(0.5)
    with pytest.raises(HarnessError, match="similarity"):
        pairwise_distance(query, gallery, similarity="euclid")


def test_a_trained_deen_is_saved_and_loaded_with_the_same_test_features(tmp_path, tiny_config):
    from harness.saved_models import load_method, read_model, save_model
    from harness.trial import run_trial

    result = run_trial(tiny_config(method="deen", **{"train.epochs": 1}))
    assert result.status == "ok", result.failure
    path = save_model(tmp_path, result.key, result.trained)
    loaded = load_method(read_model(path)).eval()
    original = result.trained.method.eval()
    images, modality = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded.test_features(images, modality), original.test_features(images, modality))
    assert loaded.test_similarity == "dot"


def test_the_compiled_network_trains_as_the_eager_one():
    torch.manual_seed(0)
    eager = create_method(_cfg(), 4, 2)
    compiled = create_method(_cfg(), 4, 2)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_network(backend="eager")
    batch = (torch.randn(8, 3, 64, 32), torch.tensor([0] * 4 + [1] * 4), torch.tensor([0, 0, 1, 1] * 2),
             torch.zeros(8, dtype=torch.long))
    torch.manual_seed(1)
    want = eager.training_losses(*batch)
    torch.manual_seed(1)
    got = compiled.training_losses(*batch)
    for key in want:
        torch.testing.assert_close(got[key], want[key])
    assert set(dict(compiled.named_parameters())) == set(dict(eager.named_parameters()))
