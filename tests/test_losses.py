"""Tests of methods.losses against hand-computed values and brute-force loop references."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from harness.errors import HarnessError
from methods.center_losses import _center_partners, center_loss, marginal_center_loss
from methods.losses import (
    modality_classification_loss,
    modality_confusion_loss,
    wrt_loss,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# --------------------------------------------------------------------------------------------
# brute-force references: one sample / one class at a time, plain Python where possible
# --------------------------------------------------------------------------------------------


def reference_wrt(features: torch.Tensor, labels: torch.Tensor) -> float:
    rows = features.double().tolist()
    ids = labels.tolist()
    per_anchor = []
    for i, anchor in enumerate(rows):
        pos = [math.dist(anchor, other) for j, other in enumerate(rows) if ids[j] == ids[i]]
        neg = [math.dist(anchor, other) for j, other in enumerate(rows) if ids[j] != ids[i]]
        if not neg:
            continue
        pos_norm = sum(math.exp(d - max(pos)) for d in pos)
        neg_norm = sum(math.exp(-d + min(neg)) for d in neg)
        weighted_pos = sum(d * math.exp(d - max(pos)) / pos_norm for d in pos)
        weighted_neg = sum(d * math.exp(-d + min(neg)) / neg_norm for d in neg)
        per_anchor.append(softplus(weighted_pos - weighted_neg))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def reference_marginal(
    features: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor,
    sigma: float,
    rho: float,
    variant: str = "paper",
    nearest_weighting: str = "per-sample",
    detach_nearest: bool = False,
) -> torch.Tensor:
    """Sample-by-sample, class-by-class; built of torch scalars so it can be differentiated."""
    n = features.shape[0]
    ids = labels.tolist()
    num_classes = centers.shape[0]
    to_center = [((features[i] - centers[ids[i]]) ** 2).sum() for i in range(n)]
    nearest = {}
    for k in set(ids):
        nearest[k] = torch.stack([to_center[j] for j in range(n) if ids[j] == k]).min()
        if detach_nearest:
            nearest[k] = nearest[k].detach()
    gaps = []
    for i in range(n):
        others = [((centers[ids[i]] - centers[k]) ** 2).sum() for k in range(num_classes) if k != ids[i]]
        gaps.append(torch.stack(others).min() if others else None)
    zero = features.sum() * 0
    if variant == "paper":
        pull = sum(torch.relu(to_center[i] - nearest[ids[i]] - sigma) for i in range(n)) / n
        push = sum(torch.relu(rho - g) for g in gaps) / n if num_classes > 1 else zero
    else:
        mean_to_center = sum(to_center) / n
        if nearest_weighting == "per-sample":
            nearest_term = sum(nearest[ids[i]] for i in range(n)) / n
        else:
            nearest_term = 8.0 / n * sum(nearest.values())
        pull = torch.relu(mean_to_center - nearest_term - sigma)
        push = torch.relu(rho - sum(gaps) / n) if num_classes > 1 else zero
    return pull + push


def random_batch(seed: int, n: int = 12, dim: int = 5, num_classes: int = 6, scale: float = 3.0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=generator, dtype=torch.float64) * scale
    centers = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64) * scale
    # classes 0, 2, 3 only (1, 4, 5 absent); uneven class sizes
    labels = torch.tensor([0, 0, 0, 0, 0, 2, 2, 2, 3, 3, 0, 2][:n])
    return features, labels, centers


VARIANTS = [
    ("paper", "per-sample"),
    ("authors-code", "per-sample"),
    ("authors-code", "per-class-8"),
]


# --------------------------------------------------------------------------------------------
# WRT
# --------------------------------------------------------------------------------------------


def test_wrt_hand_computed():
    # f0=(0,0) id0, f1=(3,0) id0, f2=(0,4) id1  ->  d01=3, d02=4, d12=5
    features = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1])
    pos_01 = 3 * math.exp(3) / (1 + math.exp(3))  # softmax over {0, 3} of the distances
    loss_0 = softplus(pos_01 - 4)  # only negative: f2 at 4
    loss_1 = softplus(pos_01 - 5)  # only negative: f2 at 5
    neg_2 = (4 * math.exp(-4) + 5 * math.exp(-5)) / (math.exp(-4) + math.exp(-5))
    loss_2 = softplus(0 - neg_2)  # only positive is itself at distance 0
    expected = (loss_0 + loss_1 + loss_2) / 3
    assert wrt_loss(features, labels).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wrt_matches_loop_reference(seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(16, 8, generator=generator) * 2 + 5  # offset tests the centring
    labels = torch.randint(0, 4, (16,), generator=generator)
    assert wrt_loss(features, labels).item() == pytest.approx(reference_wrt(features, labels), rel=1e-5)


def test_wrt_float32_is_accurate_far_from_the_origin():
    # distances do not depend on a shared offset; float32 must not lose them to cancellation
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(16, 8, generator=generator) + 1000.0
    labels = torch.randint(0, 4, (16,), generator=generator)
    assert wrt_loss(features, labels).item() == pytest.approx(reference_wrt(features, labels), rel=1e-4)


def test_wrt_single_identity_is_zero_with_finite_gradient():
    features = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    loss = wrt_loss(features, torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_wrt_gradcheck():
    features, labels, _ = random_batch(4, n=8, dim=3)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: wrt_loss(f, labels), (features,))


def test_wrt_gradient_finite_with_duplicate_features():
    features = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    wrt_loss(features, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(features.grad).all()


# --------------------------------------------------------------------------------------------
# center loss
# --------------------------------------------------------------------------------------------


def test_center_loss_hand_computed():
    # (1,2) vs c0=(0,0): 1+4=5 ; (3,4) vs c1=(3,3): 0+1=1 ; mean 3
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    centers = torch.tensor([[0.0, 0.0], [3.0, 3.0]])
    assert center_loss(features, torch.tensor([0, 1]), centers).item() == pytest.approx(3.0)


def test_center_loss_matches_loop_and_absent_centers_get_no_gradient():
    features, labels, centers = random_batch(5)
    centers.requires_grad_(True)
    expected = sum(((features[i] - centers[labels[i]]) ** 2).sum().item() for i in range(12)) / 12
    loss = center_loss(features, labels, centers)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    for absent in (1, 4, 5):
        assert torch.equal(centers.grad[absent], torch.zeros(5, dtype=torch.float64))
    assert centers.grad[0].abs().sum() > 0


def test_center_loss_gradcheck():
    features, labels, centers = random_batch(6, n=6, dim=3)
    features.requires_grad_(True)
    centers.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, c: center_loss(f, labels, c), (features, centers))


# --------------------------------------------------------------------------------------------
# marginal center loss
# --------------------------------------------------------------------------------------------

# class 0: (1,0) d=1, (0,2) d=4, (3,0) d=9 around c0=(0,0); class 1: (10,1) d=1 around c1=(10,0);
# class 2 (absent from the batch) has c2=(0,5).  m0 = 1, m1 = 1.
# center gaps: c0-c1 = 100, c0-c2 = 25, c1-c2 = 125  ->  nearest other: c0 -> 25, c1 -> 100.
HAND_FEATURES = [[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [10.0, 1.0]]
HAND_LABELS = [0, 0, 0, 1]
HAND_CENTERS = [[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]]


def hand_marginal(sigma, rho, **kwargs):
    return marginal_center_loss(
        torch.tensor(HAND_FEATURES),
        torch.tensor(HAND_LABELS),
        torch.tensor(HAND_CENTERS),
        sigma=sigma,
        rho=rho,
        **kwargs,
    ).item()


def test_marginal_paper_hand_computed():
    # pull: [1-1-.5]+ + [4-1-.5]+ + [9-1-.5]+ + [1-1-.5]+ = 0 + 2.5 + 7.5 + 0 = 10 -> /4 = 2.5
    # push: 3 samples of class 0 give [60-25]+ = 35, class 1 gives [60-100]+ = 0 -> 105/4 = 26.25
    assert hand_marginal(0.5, 60.0) == pytest.approx(2.5 + 26.25)


def test_marginal_authors_code_hand_computed():
    # mean d = (1+4+9+1)/4 = 3.75 ; mean gap = (25+25+25+100)/4 = 43.75 -> push [60-43.75]+ = 16.25
    # per-sample nearest = (1+1+1+1)/4 = 1 -> pull [3.75 - 1 - .5]+ = 2.25
    assert hand_marginal(0.5, 60.0, variant="authors-code") == pytest.approx(2.25 + 16.25)
    # per-class-8 nearest = 8/4 * (m0 + m1) = 4 -> pull [3.75 - 4 + 10]+ = 9.75 (sigma=-10)
    value = hand_marginal(-10.0, 60.0, variant="authors-code", nearest_weighting="per-class-8")
    assert value == pytest.approx(9.75 + 16.25)
    # with sigma=0.5 the per-class-8 hinge is inactive: only the push is left
    value = hand_marginal(0.5, 60.0, variant="authors-code", nearest_weighting="per-class-8")
    assert value == pytest.approx(16.25)


def test_marginal_nearest_weighting_ignored_by_paper():
    assert hand_marginal(0.5, 60.0, nearest_weighting="per-class-8") == pytest.approx(28.75)


# 6 centers <= 12 samples and 20 centers > 12 samples take the two search layouts of the push term
@pytest.mark.parametrize("variant,weighting", VARIANTS)
@pytest.mark.parametrize("seed,num_classes", [(0, 6), (1, 20)])
@pytest.mark.parametrize("detach_nearest", [False, True])
def test_marginal_value_and_gradient_match_loop_reference(
    variant, weighting, seed, num_classes, detach_nearest
):
    features, labels, centers = random_batch(seed, num_classes=num_classes)
    # sigma small enough and rho large enough that both hinges are active
    sigma, rho = 1.0, 60.0
    if weighting == "per-class-8":
        sigma = -60.0
    kwargs = dict(variant=variant, nearest_weighting=weighting, detach_nearest=detach_nearest)
    features.requires_grad_(True)
    centers.requires_grad_(True)
    loss = marginal_center_loss(features, labels, centers, sigma=sigma, rho=rho, **kwargs)
    expected = reference_marginal(
        features, labels, centers, sigma, rho, variant, weighting, detach_nearest
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    assert expected.item() > 0
    grads = torch.autograd.grad(loss, (features, centers))
    expected_grads = torch.autograd.grad(expected, (features, centers))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("distinct_rows", [True, False])
@pytest.mark.parametrize("num_classes", [6, 20])
def test_center_partners_both_search_layouts_find_the_nearest_other_center(distinct_rows, num_classes):
    # distinct_rows=True is the CPU default (torch.unique), False the accelerator default (one
    # row per sample, no host sync)
    _, labels, centers = random_batch(4, num_classes=num_classes)
    anchor_ids, partner, sample_to_anchor = _center_partners(centers, labels, distinct_rows=distinct_rows)
    rows = torch.arange(len(labels)) if sample_to_anchor is None else sample_to_anchor
    assert torch.equal(anchor_ids[rows], labels)
    gaps = ((centers[anchor_ids[rows]] - centers[partner[rows]]) ** 2).sum(dim=1)
    expected = torch.stack([
        torch.stack([((centers[y] - centers[k]) ** 2).sum() for k in range(num_classes) if k != y]).min()
        for y in labels.tolist()
    ])
    torch.testing.assert_close(gaps, expected, rtol=1e-12, atol=0)
    assert not (partner == anchor_ids).any()


@pytest.mark.parametrize("num_classes,dim", [(6, 2048), (40, 1024)])  # direct K x K x D, and the matmul search
def test_center_partners_with_all_centers_as_rows(num_classes, dim):
    generator = torch.Generator().manual_seed(7)
    centers = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (64,), generator=generator)
    anchor_ids, partner, sample_to_anchor = _center_partners(centers, labels)
    assert torch.equal(anchor_ids, torch.arange(num_classes)) and torch.equal(sample_to_anchor, labels)
    brute = torch.tensor([
        min((k for k in range(num_classes) if k != a), key=lambda k: float(((centers[a] - centers[k]) ** 2).sum()))
        for a in range(num_classes)
    ])
    assert torch.equal(partner, brute)


@pytest.mark.parametrize("variant,weighting", VARIANTS)
def test_marginal_one_row_per_sample_layout_matches_reference(monkeypatch, variant, weighting):
    # the layout accelerators use for the push term, forced on CPU: value and gradient unchanged
    import methods.center_losses as losses

    monkeypatch.setattr(losses, "_center_partners", functools.partial(_center_partners, distinct_rows=False))
    features, labels, centers = random_batch(5, num_classes=20)
    features.requires_grad_(True)
    centers.requires_grad_(True)
    sigma = -60.0 if weighting == "per-class-8" else 1.0
    loss = marginal_center_loss(features, labels, centers, sigma=sigma, rho=60.0, variant=variant,
                                nearest_weighting=weighting)
    expected = reference_marginal(features, labels, centers, sigma, 60.0, variant, weighting)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    for got, want in zip(torch.autograd.grad(loss, (features, centers)),
                         torch.autograd.grad(expected, (features, centers))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_losses_read_nothing_back_from_the_device():
    # On the meta device tensors have no values: any host read (.item(), .tolist(), int(),
    # torch.unique) raises. The losses' forward and backward must get through, so on an
    # accelerator they queue work without a host sync.
    n, dim, ids, cams = 16, 32, 395, 6
    meta = torch.device("meta")
    features = torch.empty(n, dim, device=meta, requires_grad=True)
    id_centers = torch.empty(ids, dim, device=meta, requires_grad=True)
    cam_centers = torch.empty(cams, dim, device=meta, requires_grad=True)
    pids = torch.empty(n, dtype=torch.long, device=meta)
    camids = torch.empty(n, dtype=torch.long, device=meta)
    logits = torch.empty(n, 2, device=meta, requires_grad=True)
    total = (
        wrt_loss(features, pids)
        + center_loss(features, pids, id_centers)
        + marginal_center_loss(features, pids, id_centers, sigma=8.0, rho=4500.0)
        + marginal_center_loss(features, camids, cam_centers, sigma=8.0, rho=4500.0, variant="authors-code")
        + modality_classification_loss(logits, pids.remainder(2))
        + modality_confusion_loss(logits)
    )
    grads = torch.autograd.grad(total, (features, id_centers, cam_centers, logits))
    assert total.shape == () and total.device == meta
    assert [g.shape for g in grads] == [features.shape, id_centers.shape, cam_centers.shape, logits.shape]


def test_marginal_detach_changes_the_gradient_of_the_nearest_sample_only():
    features, labels, centers = random_batch(2)
    features.requires_grad_(True)
    def gradient(detach_nearest):
        loss = marginal_center_loss(
            features, labels, centers, sigma=1.0, rho=0.0, detach_nearest=detach_nearest
        )
        return torch.autograd.grad(loss, features)[0]

    attached, detached = gradient(False), gradient(True)
    to_center = ((features - centers[labels]) ** 2).sum(1).detach()
    nearest_rows = {
        min((i for i in range(12) if labels[i] == k), key=lambda i: to_center[i]) for k in (0, 2, 3)
    }
    for i in range(12):
        if i in nearest_rows:
            assert not torch.allclose(attached[i], detached[i])
        else:
            torch.testing.assert_close(attached[i], detached[i])


def test_marginal_balanced_per_class_8_equals_per_sample():
    # with exactly 8 samples per class the authors' identity term is the per-sample term
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(24, 4, generator=generator, dtype=torch.float64) * 3
    centers = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    labels = torch.tensor([1, 5, 8]).repeat_interleave(8)
    common = dict(sigma=-5.0, rho=50.0, variant="authors-code")
    a = marginal_center_loss(features, labels, centers, nearest_weighting="per-class-8", **common)
    b = marginal_center_loss(features, labels, centers, nearest_weighting="per-sample", **common)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


@pytest.mark.parametrize("variant", ["paper", "authors-code"])
@pytest.mark.parametrize("num_classes", [5, 11])
def test_marginal_gradcheck(variant, num_classes):
    features, labels, centers = random_batch(3, n=8, dim=3, num_classes=num_classes)
    features.requires_grad_(True)
    centers.requires_grad_(True)

    def loss(f, c):
        return marginal_center_loss(f, labels, c, sigma=1.0, rho=30.0, variant=variant)

    assert loss(features, centers).item() > 0
    assert torch.autograd.gradcheck(loss, (features, centers))


def test_marginal_absent_center_counts_as_neighbour():
    # moving the absent c2 from (0,5) to (0,7) changes c0's nearest gap from 25 to 49
    features = torch.tensor(HAND_FEATURES)
    labels = torch.tensor(HAND_LABELS)
    moved = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 7.0]], requires_grad=True)
    loss = marginal_center_loss(features, labels, moved, sigma=0.5, rho=60.0)
    # push: 3 * [60-49]+ = 33 -> /4 = 8.25 ; pull unchanged 2.5
    assert loss.item() == pytest.approx(2.5 + 8.25)
    loss.backward()
    assert moved.grad[2].abs().sum() > 0  # the absent center is pushed away from c0


@pytest.mark.parametrize("variant", ["paper", "authors-code"])
def test_marginal_single_center_has_no_push(variant):
    features = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    centers = torch.zeros(1, 2, requires_grad=True)
    labels = torch.tensor([0, 0])
    loss = marginal_center_loss(features, labels, centers, sigma=0.5, rho=1e6, variant=variant)
    # paper pull: [1-1-.5]+ + [9-1-.5]+ = 7.5 -> /2 ; authors: [5 - 1 - .5]+ = 3.5
    assert loss.item() == pytest.approx(3.75 if variant == "paper" else 3.5)
    loss.backward()
    assert torch.isfinite(centers.grad).all()


# --------------------------------------------------------------------------------------------
# properties shared by all losses
# --------------------------------------------------------------------------------------------


def all_losses(features, labels, centers, modality_logits, modality):
    values = {
        "wrt": wrt_loss(features, labels),
        "center": center_loss(features, labels, centers),
        "mcm_cls": modality_classification_loss(modality_logits, modality),
        "mcm_conf": modality_confusion_loss(modality_logits),
    }
    for variant, weighting in VARIANTS:
        values[f"{variant}/{weighting}"] = marginal_center_loss(
            features, labels, centers, sigma=1.0, rho=60.0, variant=variant, nearest_weighting=weighting
        )
    return values


def test_all_losses_are_invariant_to_batch_permutation():
    features, labels, centers = random_batch(9)
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(12, 2, generator=generator, dtype=torch.float64)
    modality = torch.randint(0, 2, (12,), generator=generator)
    order = torch.randperm(12, generator=generator)
    before = all_losses(features, labels, centers, logits, modality)
    after = all_losses(features[order], labels[order], centers, logits[order], modality[order])
    for name in before:
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-12), name


def test_half_precision_inputs_are_computed_in_float32():
    features, labels, centers = random_batch(11)
    features16 = features.to(torch.bfloat16)
    centers32 = centers.float()
    logits16 = features16[:, :2]
    modality = labels % 2
    low = all_losses(features16, labels, centers32, logits16, modality)
    high = all_losses(features16.float(), labels, centers32, logits16.float(), modality)
    for name in low:
        assert low[name].dtype == torch.float32, name
        assert low[name].item() == pytest.approx(high[name].item(), rel=1e-6), name


def test_autocast_does_not_lower_the_precision():
    features, labels, centers = random_batch(12, n=12, dim=64)
    features, centers = features.float() * 10, centers.float() * 10
    logits = features[:, :2]
    modality = labels % 2
    plain = all_losses(features, labels, centers, logits, modality)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = all_losses(features, labels, centers, logits, modality)
    for name in plain:
        assert autocast[name].dtype == torch.float32, name
        assert autocast[name].item() == pytest.approx(plain[name].item(), rel=1e-6), name


# --------------------------------------------------------------------------------------------
# modality confusion module losses
# --------------------------------------------------------------------------------------------


def test_modality_losses_hand_computed():
    # logits (0, ln 3): p = (1/4, 3/4)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    # true modality 0 then 1: CE = (ln 4 + ln(4/3)) / 2
    cls = modality_classification_loss(logits, torch.tensor([0, 1]))
    assert cls.item() == pytest.approx((math.log(4.0) + math.log(4.0 / 3.0)) / 2)
    # confused: -0.5 (ln 1/4 + ln 3/4) for both samples
    confused = 0.5 * (math.log(4.0) + math.log(4.0 / 3.0))
    assert modality_confusion_loss(logits).item() == pytest.approx(confused)
    # equal logits: both probabilities 1/2 -> ln 2, the minimum
    assert modality_confusion_loss(torch.zeros(3, 2)).item() == pytest.approx(math.log(2.0))


def test_modality_losses_match_loop_reference_and_confusion_is_minimal_when_confused():
    generator = torch.Generator().manual_seed(13)
    logits = torch.randn(10, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    modality = torch.randint(0, 2, (10,), generator=generator)
    cls_expected = conf_expected = 0.0
    for row, m in zip(logits.tolist(), modality.tolist()):
        norm = math.log(math.exp(row[0]) + math.exp(row[1]))
        log_p = [row[0] - norm, row[1] - norm]
        cls_expected -= log_p[m] / 10
        conf_expected -= 0.5 * (log_p[0] + log_p[1]) / 10
    classification = modality_classification_loss(logits, modality)
    assert classification.item() == pytest.approx(cls_expected, rel=1e-10)
    confusion = modality_confusion_loss(logits)
    assert confusion.item() == pytest.approx(conf_expected, rel=1e-10)
    assert confusion.item() > math.log(2.0)
    # equal logits are a stationary point (the minimum) of the confusion loss
    leaf = torch.full((4, 2), 1.5, requires_grad=True)
    (grad,) = torch.autograd.grad(modality_confusion_loss(leaf), [leaf])
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-7)


# --------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------

F2 = torch.zeros(3, 2)
L3 = torch.tensor([0, 1, 1])
C2 = torch.zeros(2, 2)


@pytest.mark.parametrize(
    "call,fragment",
    [
        (
            lambda: marginal_center_loss(F2, L3, C2, sigma=1, rho=1, variant="papers"),
            "'paper', 'authors-code'",
        ),
        (
            lambda: marginal_center_loss(F2, L3, C2, sigma=1, rho=1, nearest_weighting="auto"),
            "per-class-8",
        ),
        (lambda: marginal_center_loss(F2, torch.tensor([0, 1, 2]), C2, sigma=1, rho=1), "[0, 2)"),
        (lambda: marginal_center_loss(F2, torch.tensor([0, -1, 1]), C2, sigma=1, rho=1), "from -1 to 1"),
        (lambda: marginal_center_loss(F2, L3, C2, sigma=float("nan"), rho=1), "sigma"),
        (lambda: marginal_center_loss(F2, L3, torch.zeros(2, 3), sigma=1, rho=1), "dimension 3"),
        (lambda: marginal_center_loss(F2, L3, torch.zeros(0, 2), sigma=1, rho=1), "centers"),
        (lambda: center_loss(F2, torch.tensor([0, 5, 1]), C2), "[0, 2)"),
        (lambda: center_loss(F2, torch.tensor([0, 1]), C2), "2 entries"),
        (lambda: center_loss(F2, L3.float(), C2), "integer"),
        (lambda: wrt_loss(torch.zeros(3), L3), "2-D floating"),
        (lambda: wrt_loss(torch.zeros(3, 2, dtype=torch.long), L3), "2-D floating"),
        (lambda: wrt_loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), "empty"),
        (lambda: wrt_loss(F2, L3.view(3, 1)), "1-D integer"),
        (lambda: modality_classification_loss(F2, torch.tensor([0, 2, 1])), "modality"),
        (lambda: modality_confusion_loss(torch.zeros(3, 1)), "two modalities"),
    ],
)
def test_bad_inputs_raise_harness_error(call, fragment):
    with pytest.raises(HarnessError) as excinfo:
        call()
    assert fragment in str(excinfo.value)


# --------------------------------------------------------------------------------------------
# WRT as the AGW code computes it (variant "authors-code")
# --------------------------------------------------------------------------------------------


def reference_wrt_authors_code(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The AGW code's formula one anchor and one partner at a time, from torch scalars (differentiable).

    d_ij = sqrt(max(|a_i|^2 + |a_j|^2 - 2 a_i.a_j, 1e-12)); for the masked rows m (positives, or
    negatives with values -d), w_ij = m_ij exp(v_ij - max_k(v_ik m_ik)) / (sum_k m_ik exp(...) + 1e-6);
    loss = mean_i log(1 + exp(sum_j w+_ij d_ij - sum_j w-_ij d_ij)).
    """
    n = features.shape[0]
    ids = labels.tolist()
    total = features.new_zeros(())
    for i in range(n):
        dist = []
        for j in range(n):
            squared = features[i].dot(features[i]) + features[j].dot(features[j]) - 2 * features[i].dot(features[j])
            dist.append(torch.clamp(squared, min=1e-12).sqrt())
        terms = []
        for sign, member in ((1.0, lambda j, i=i: ids[j] == ids[i]), (-1.0, lambda j, i=i: ids[j] != ids[i])):
            mask = [1.0 if member(j) else 0.0 for j in range(n)]
            values = [sign * dist[j] * mask[j] for j in range(n)]
            top = max(values[j] * mask[j] for j in range(n))
            norm = sum(torch.exp(values[j] - top) * mask[j] for j in range(n)) + 1e-6
            terms.append(sum(dist[j] * mask[j] * torch.exp(values[j] - top) * mask[j] / norm for j in range(n)))
        total = total + torch.log1p(torch.exp(terms[0] - terms[1]))
    return total / n


@pytest.mark.parametrize("scale", [0.05, 1.0, 4.0, 12.0])
def test_wrt_authors_code_matches_the_agw_formula_in_values_and_gradients(scale):
    generator = torch.Generator().manual_seed(3)
    features = (scale * torch.randn(12, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    loss = wrt_loss(features, labels, variant="authors-code")
    (grad,) = torch.autograd.grad(loss, features)
    reference_features = features.detach().clone().requires_grad_()
    expected = reference_wrt_authors_code(reference_features, labels)
    (expected_grad,) = torch.autograd.grad(expected, reference_features)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(grad, expected_grad, rtol=1e-6, atol=1e-9 * expected_grad.abs().max().item())


def test_wrt_authors_code_loses_its_negative_term_at_large_distances():
    # negatives ~40 apart, positives ~1: the spec formula keeps a strong negative term, the code's drops out
    generator = torch.Generator().manual_seed(0)
    centers = 20.0 * torch.eye(4, 8, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(3)
    features = centers[labels] + 0.3 * torch.randn(12, 8, generator=generator, dtype=torch.float64)
    paper = wrt_loss(features, labels).item()
    authors = wrt_loss(features, labels, variant="authors-code").item()
    assert paper < 1e-6  # softplus(~1 - ~28): the negatives are far, the loss is done
    assert authors > 0.9  # softplus(~1 - 0): the negative term vanished (exp(-28) << 1e-6)
    assert authors == pytest.approx(reference_wrt_authors_code(features, labels).item(), rel=1e-6)


def test_wrt_rejects_an_unknown_variant():
    with pytest.raises(HarnessError, match="variant must be one of 'paper', 'authors-code'"):
        wrt_loss(torch.zeros(4, 3), torch.tensor([0, 0, 1, 1]), variant="agw")
