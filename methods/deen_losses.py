"""Functional losses of DEEN (Zhang & Wang, CVPR 2023): hard-mining triplet, CPM, orthogonality.

Conventions as in `methods.losses`: plain tensors in, a scalar tensor out, differentiable with
respect to the features; any floating dtype is accepted and the arithmetic runs in float32 or wider
with autocast off; everything is batched tensor algebra (no Python loop over samples, identities or
centers). Euclidean distances are sqrt(max(squared distance, 1e-12)), as the authors' code takes
them, so a coincident pair has a finite distance and a zero gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.errors import InputError
from methods._loss_checks import (
    autocast_disabled,
    check_features,
    check_label_range,
    check_labels,
    check_margin,
    check_matrix,
    compute_dtype,
)
from methods.losses import _squared_distances

_SQUARED_DISTANCE_FLOOR = 1e-12


def _distances(left: Tensor, right: Tensor) -> Tensor:
    return _squared_distances(left, right).clamp_min(_SQUARED_DISTANCE_FLOOR).sqrt()


def _pair_distances(left: Tensor, right: Tensor) -> Tensor:
    """Row-wise distances ||left_i - right_i|| (the diagonal of the all-pairs matrix, computed directly)."""
    return (left - right).square().sum(dim=1).clamp_min(_SQUARED_DISTANCE_FLOOR).sqrt()


def hard_triplet_loss(features: Tensor, labels: Tensor, *, margin: float = 0.3) -> Tensor:
    """Triplet loss with batch-hard mining (Hermans et al. 2017), over every sample as anchor.

    For anchor i: d_ap = the largest distance to a sample of its identity (itself included, at
    the floor distance 1e-6), d_an = the smallest distance to a sample of another identity;
    loss = mean over anchors of max(0, d_ap - d_an + margin). An anchor without a negative (a
    batch of one identity) has no triplet and is left out of the mean; a batch without any gives
    an exact zero that is still attached to the graph.
    """
    check_features("hard_triplet_loss", features)
    check_labels("hard_triplet_loss", labels, features)
    margin = check_margin("hard_triplet_loss", "margin", margin)
    dtype = compute_dtype(features)
    with autocast_disabled(features.device):
        feats = features.to(dtype)
        # translation keeps distances; centring keeps |a|^2 + |b|^2 - 2ab from cancelling
        feats = feats - feats.mean(dim=0, keepdim=True)
        distances = _distances(feats, feats)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        has_negative = (~same).any(dim=1)
        hardest_positive = torch.where(same, distances, float("-inf")).amax(dim=1)
        hardest_negative = torch.where(same, float("inf"), distances).amin(dim=1)
        hardest_negative = torch.where(has_negative, hardest_negative, hardest_positive)
        per_anchor = (hardest_positive - hardest_negative + margin).clamp_min(0.0)
        valid = has_negative.to(dtype)
        return (per_anchor * valid).sum() / valid.sum().clamp_min(1.0)


def _dense_codes(labels: Tensor) -> Tensor:
    """Identity codes 0..K-1 in ascending label order, computed without reading K back to the host."""
    sorted_labels, order = labels.sort()
    starts = torch.ones_like(sorted_labels, dtype=torch.bool)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    return torch.empty_like(order).scatter_(0, order, starts.long().cumsum(0) - 1)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _nearest_other(centers: Tensor, present: Tensor) -> Tensor:
    """Distance from each center slot to the nearest OTHER present one (+inf when there is none)."""
    distances = _distances(centers, centers)
    excluded = torch.eye(centers.shape[0], dtype=torch.bool, device=centers.device) | ~present.unsqueeze(0)
    return distances.masked_fill(excluded, float("inf")).amin(dim=1)


def cpm_loss(original: Tensor, generated: Tensor, labels: Tensor, modality: Tensor, *,
             margin: float = 0.2) -> Tensor:
    """Center-guided pair mining loss between a batch's original and generated embeddings.

    `original` and `generated` are (N, D) with the same rows: generated[i] was expanded from
    original[i], of identity labels[i] and modality[i] (0 visible, 1 infrared). For every
    identity k of the batch take the centers (per-identity means) v_k, r_k of the original
    visible and infrared embeddings and gv_k, gr_k of the generated ones. A generated center
    should lie nearer the OTHER modality's original center than its own modality's (that
    distance is a constant, not differentiated), and nearer than the nearest other identity's
    center, both among the generated centers of its modality and among the original ones:

        L_v = h(d(r_k, gv_k), [d(v_k, gv_k)]) + (h(d(r_k, gv_k), n(gv)_k) + h(d(r_k, gv_k), n(v)_k)) / 2
        L_r = h(d(v_k, gr_k), [d(r_k, gr_k)]) + (h(d(v_k, gr_k), n(gr)_k) + h(d(v_k, gr_k), n(r)_k)) / 2
        L = (L_v + L_r) / 2

    with h(p, n) = mean over identities of max(0, p - n + margin), [.] a detached value and
    n(c)_k = min over identities j != k of d(c_k, c_j) (+inf, a zero hinge, for a lone identity).
    Identities without visible or without infrared samples have no centers to compare and are left
    out (the identity sampler's P x (K visible + K infrared) batches have both for every identity).
    The centers are one matmul with a one-hot matrix: deterministic on every device, no host sync.
    """
    name = "cpm_loss"
    check_features(name, original)
    check_matrix(name, "generated", generated, "N, D")
    if generated.shape != original.shape:
        raise InputError(f"{name}: generated has shape {tuple(generated.shape)} but original has "
                         f"{tuple(original.shape)}; expected one generated embedding per original row")
    check_labels(name, labels, original)
    check_labels(name, modality, original, "modality")
    check_label_range(name, modality, 2, "modality")
    margin = check_margin(name, "margin", margin)
    dtype = compute_dtype(original, generated)
    with autocast_disabled(original.device):
        rows = original.shape[0]
        # slot of each row: group (0 original visible, 1 original infrared, 2 / 3 generated) x identity code
        slots = torch.cat([modality, modality + 2]).long() * rows + _dense_codes(labels).repeat(2)
        one_hot = (slots.unsqueeze(0) == torch.arange(4 * rows, device=slots.device).unsqueeze(1)).to(dtype)
        counts = one_hot.sum(dim=1, keepdim=True)
        centers = ((one_hot @ torch.cat([original, generated]).to(dtype)) / counts.clamp_min(1.0)).view(4, rows, -1)
        present = (counts.view(4, rows) > 0).all(dim=0)
        visible, infrared, generated_visible, generated_infrared = centers.unbind(0)

        def one_side(own: Tensor, other: Tensor, generated_own: Tensor) -> Tensor:
            positive = _pair_distances(other, generated_own)

            def hinge(negative: Tensor) -> Tensor:
                return _masked_mean((positive - negative + margin).clamp_min(0.0), present)

            return hinge(_pair_distances(own, generated_own).detach()) + 0.5 * (
                hinge(_nearest_other(generated_own, present)) + hinge(_nearest_other(own, present)))

        return 0.5 * (one_side(visible, infrared, generated_visible)
                      + one_side(infrared, visible, generated_infrared))


def orthogonality_loss(generated: Tensor, *, embeddings: int | None = None) -> Tensor:
    """Sum of the inner products between the generated embeddings of each sample, per embedding.

    `generated` is (M, N, D): M >= 2 generated embeddings of each of N samples. The loss is
    sum over pairs m < m' and samples i of <g_m,i, g_m',i>, divided by `embeddings` (default
    M * N; DEEN divides by its whole expanded batch, the original embeddings included, (M + 1) * N).
    The inner product is neither squared nor taken in absolute value, as in DEEN, whose pooled
    features follow a ReLU and are never negative; on features that can be negative the term has
    no lower bound.
    """
    name = "orthogonality_loss"
    if not isinstance(generated, Tensor) or generated.dim() != 3 or not generated.is_floating_point():
        raise InputError(f"{name}: generated must be a 3-D floating tensor (M embeddings, N, D); got "
                         f"{'shape ' + str(tuple(generated.shape)) if isinstance(generated, Tensor) else generated!r}")
    count, samples = generated.shape[0], generated.shape[1]
    if count < 2 or samples == 0:
        raise InputError(f"{name}: needs at least two generated embeddings of at least one sample; "
                         f"got shape {tuple(generated.shape)}")
    divisor = count * samples if embeddings is None else embeddings
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise InputError(f"{name}: embeddings must be a positive int; got {embeddings!r}")
    dtype = compute_dtype(generated)
    with autocast_disabled(generated.device):
        feats = generated.to(dtype)
        total = feats.sum(dim=0)
        # sum_{m<m'} <g_m, g_m'> = (|sum_m g_m|^2 - sum_m |g_m|^2) / 2, for all samples at once
        pairs = 0.5 * (total.square().sum() - feats.square().sum())
        return pairs / divisor
