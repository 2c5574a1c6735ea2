"""Forward + backward cost of the MCLNet losses at the real batch (64 x 2048).

Each loss is timed as the batched implementation in methods.losses and as a straightforward
per-class (or per-anchor) Python loop, after checking that both give the same value.

    .venv/bin/python -m pytest benchmarks/test_bench_losses.py --benchmark-only -q -p no:cacheprovider
"""

from __future__ import annotations

import pytest
import torch

from methods.center_losses import center_loss, marginal_center_loss
from methods.losses import (
    modality_classification_loss,
    modality_confusion_loss,
    wrt_loss,
)

BATCH_IDS, IMAGES_PER_ID, FEATURE_DIM = 8, 8, 2048
NUM_IDENTITIES, NUM_CAMERAS = 395, 6
SIGMA, RHO = 8.0, 4500.0

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
    ),
]
IMPLEMENTATIONS = ["batched", "loop"]


# --------------------------------------------------------------------------------------------
# loop references
# --------------------------------------------------------------------------------------------


def wrt_loss_loop(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total = features.new_zeros(())
    anchors = 0
    for i in range(features.shape[0]):
        gaps = (features - features[i]).square().sum(dim=1).clamp_min(1e-12).sqrt()
        gaps = torch.where(torch.arange(features.shape[0], device=features.device) == i, 0.0, gaps)
        same = labels == labels[i]
        if same.all():
            continue
        pos, neg = gaps[same], gaps[~same]
        weighted_pos = (torch.softmax(pos, dim=0) * pos).sum()
        weighted_neg = (torch.softmax(-neg, dim=0) * neg).sum()
        total = total + torch.nn.functional.softplus(weighted_pos - weighted_neg)
        anchors += 1
    return total / max(anchors, 1)


def center_loss_loop(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor
) -> torch.Tensor:
    total = features.new_zeros(())
    for k in labels.unique().tolist():
        total = total + (features[labels == k] - centers[k]).square().sum()
    return total / features.shape[0]


def marginal_center_loss_loop(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, sigma: float, rho: float
) -> torch.Tensor:
    pull = features.new_zeros(())
    push = features.new_zeros(())
    for k in labels.unique().tolist():
        members = features[labels == k]
        to_center = (members - centers[k]).square().sum(dim=1)
        pull = pull + torch.relu(to_center - to_center.min() - sigma).sum()
        gaps = (centers - centers[k]).square().sum(dim=1)
        others = torch.cat([gaps[:k], gaps[k + 1 :]])
        push = push + members.shape[0] * torch.relu(rho - others.min())
    return (pull + push) / features.shape[0]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def make_batch(device: str, num_centers: int, labels_kind: str):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(BATCH_IDS * IMAGES_PER_ID, FEATURE_DIM, generator=generator)
    centers = torch.randn(num_centers, FEATURE_DIM, generator=generator)
    if labels_kind == "identities":
        ids = torch.randperm(num_centers, generator=generator)[:BATCH_IDS]
        labels = ids.repeat_interleave(IMAGES_PER_ID)
    else:
        labels = torch.randint(0, num_centers, (features.shape[0],), generator=generator)
    return (
        features.to(device).requires_grad_(True),
        labels.to(device),
        centers.to(device).requires_grad_(True),
    )


def timed(device: str, loss_fn, inputs):
    def step():
        grads = torch.autograd.grad(loss_fn(), inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        return grads

    return step


def describe(benchmark, num_classes: int) -> None:
    benchmark.extra_info.update(features=f"{BATCH_IDS * IMAGES_PER_ID} x {FEATURE_DIM}", classes=num_classes,
                                work="forward + backward")


def assert_same_value(batched: torch.Tensor, loop: torch.Tensor) -> None:
    assert batched.item() == pytest.approx(loop.item(), rel=1e-4)


# --------------------------------------------------------------------------------------------
# benchmarks
# --------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="wrt_loss")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bench_wrt_loss(benchmark, device, implementation):
    features, labels, _ = make_batch(device, NUM_IDENTITIES, "identities")
    assert_same_value(wrt_loss(features, labels), wrt_loss_loop(features, labels))
    fn = wrt_loss if implementation == "batched" else wrt_loss_loop
    benchmark(timed(device, lambda: fn(features, labels), [features]))
    describe(benchmark, NUM_IDENTITIES)


@pytest.mark.benchmark(group="center_loss")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bench_center_loss(benchmark, device, implementation):
    features, labels, centers = make_batch(device, NUM_IDENTITIES, "identities")
    assert_same_value(
        center_loss(features, labels, centers), center_loss_loop(features, labels, centers)
    )
    fn = center_loss if implementation == "batched" else center_loss_loop
    benchmark(timed(device, lambda: fn(features, labels, centers), [features, centers]))
    describe(benchmark, NUM_IDENTITIES)


@pytest.mark.parametrize(
    "num_centers,labels_kind",
    [
        pytest.param(
            NUM_IDENTITIES,
            "identities",
            marks=pytest.mark.benchmark(group="marginal_center_loss ICA"),
            id="ica",
        ),
        pytest.param(
            NUM_CAMERAS,
            "cameras",
            marks=pytest.mark.benchmark(group="marginal_center_loss CCA"),
            id="cca",
        ),
    ],
)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bench_marginal_center_loss(benchmark, device, implementation, num_centers, labels_kind):
    features, labels, centers = make_batch(device, num_centers, labels_kind)
    batched_value = marginal_center_loss(features, labels, centers, sigma=SIGMA, rho=RHO)
    loop_value = marginal_center_loss_loop(features, labels, centers, SIGMA, RHO)
    assert_same_value(batched_value, loop_value)
    if implementation == "batched":
        fn = lambda: marginal_center_loss(features, labels, centers, sigma=SIGMA, rho=RHO)  # noqa: E731
    else:
        fn = lambda: marginal_center_loss_loop(features, labels, centers, SIGMA, RHO)  # noqa: E731
    benchmark(timed(device, fn, [features, centers]))
    describe(benchmark, num_centers)


@pytest.mark.benchmark(group="mcm step")
@pytest.mark.parametrize("device", DEVICES)
def test_bench_mcm_step(benchmark, device):
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(
        torch.nn.Linear(FEATURE_DIM, 128), torch.nn.Linear(128, 2)
    ).to(device)
    features, _, _ = make_batch(device, NUM_CAMERAS, "cameras")
    modality = (torch.arange(features.shape[0], device=device) // 4) % 2
    params = list(classifier.parameters())

    def step():
        # M step on detached features, then the confusion loss for the extractor with M frozen
        classify = modality_classification_loss(classifier(features.detach()), modality)
        classifier_grads = torch.autograd.grad(classify, params)
        confuse = modality_confusion_loss(classifier(features))
        feature_grads = torch.autograd.grad(confuse, [features])
        if device == "cuda":
            torch.cuda.synchronize()
        return classifier_grads, feature_grads

    benchmark(step)
