"""Functional losses of MCLNet, CAJ and their AGW baseline: the triplet family (WRT, ADP), the KL term
and the modality confusion losses; the center losses are in `methods.center_losses`.

Every loss takes plain tensors and returns a scalar tensor that is differentiable with respect to
the features (and the centers, where there are any). Inputs of any floating dtype are accepted,
including bfloat16 / float16 activations produced under autocast: the arithmetic runs in float32
(float64 stays float64) with autocast switched off, because squared distances of 2048-d features
lose too much precision in half precision. All work is batched tensor algebra: no Python loop over
samples or classes, so the same code runs on CPU and CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.errors import InputError
from methods._loss_checks import (
    autocast_disabled,
    check_features,
    check_label_range,
    check_labels,
    check_logits,
    check_margin,
    check_matrix,
    compute_dtype,
)

WRT_VARIANTS: tuple[str, ...] = ("paper", "authors-code")
ADP_VARIANTS: tuple[str, ...] = ("paper", "authors-code")

# Squared distances are clamped to this before the square root so that its gradient stays finite
# for coincident points.
_SQUARED_DISTANCE_FLOOR = 1e-12
# The CAJ code clamps its squared gap at this value (exp(88) is near float32's largest number).
_AUTHORS_SQUARED_GAP_MAX = 88.0
# The CAJ code adds this to the KL term's target distribution before its logarithm.
_KL_TARGET_FLOOR = 1e-7


def _squared_distances(left: Tensor, right: Tensor) -> Tensor:
    """All-pairs squared Euclidean distances through one matmul (|a|^2 + |b|^2 - 2ab)."""
    left_norms = left.square().sum(dim=1, keepdim=True)
    right_norms = right.square().sum(dim=1).unsqueeze(0)
    return (left_norms + right_norms - 2.0 * (left @ right.T)).clamp_min(0.0)


# --------------------------------------------------------------------------------------------
# weighted regularised triplet
# --------------------------------------------------------------------------------------------


def wrt_loss(features: Tensor, labels: Tensor, *, variant: str = "paper") -> Tensor:
    """Weighted regularised triplet loss of AGW over the whole mixed-modality batch.

    `variant="paper"` is the formula below; `variant="authors-code"` is the AGW code's
    computation (see `_weighted_distances_authors_code`), whose negative term vanishes at large
    distances.

    Every sample is an anchor. Its positives are the samples of its identity, itself included,
    its negatives all other samples. Positive distances are weighted by a softmax of the distance
    (hard positives count most), negative distances by a softmax of minus the distance (hard
    negatives count most); the weights are not detached. The per-anchor loss is
    softplus(weighted positive distance - weighted negative distance), averaged over anchors.

    An anchor without negatives (possible only when the batch holds a single identity) has no
    triplet; such anchors are left out of the mean, and a batch without any valid anchor gives a
    loss of exactly zero that is still attached to the graph.
    """
    check_features("wrt_loss", features)
    check_labels("wrt_loss", labels, features)
    if variant not in WRT_VARIANTS:
        raise InputError(f"wrt_loss: variant must be one of {', '.join(map(repr, WRT_VARIANTS))}; got {variant!r}")
    dtype = compute_dtype(features)
    with autocast_disabled(features.device):
        feats = features.to(dtype)
        if variant == "authors-code":
            weighted_positive, weighted_negative = _weighted_distances_authors_code(feats, labels, 1.0)
            return F.soft_margin_loss(weighted_negative - weighted_positive, torch.ones_like(weighted_positive))
        weighted_positive, weighted_negative, valid = _weighted_distances(feats, labels, 1.0)
        per_anchor = F.softplus(weighted_positive - weighted_negative)
        return (per_anchor * valid).sum() / valid.sum().clamp_min(1.0)


def _weighted_distances(feats: Tensor, labels: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per anchor: softmax(alpha d)-weighted positive distance, softmax(-alpha d)-weighted negative distance.

    Returns (weighted positive, weighted negative, valid) where `valid` is 1 for anchors with at
    least one negative (0 rows get a weighted negative of 0). The softmaxes are exact over each
    anchor's positives (itself included, at distance 0) and negatives.
    """
    dtype = feats.dtype
    # Distances do not change under translation; centring first keeps |a|^2 + |b|^2 - 2ab
    # from cancelling catastrophically when all features share a large offset.
    feats = feats - feats.mean(dim=0, keepdim=True)
    squared = _squared_distances(feats, feats)
    batch_size = feats.shape[0]
    self_pairs = torch.eye(batch_size, dtype=torch.bool, device=feats.device)
    # The diagonal is set to an exact zero; `where` also blocks the sqrt gradient there.
    distances = torch.where(
        self_pairs,
        torch.zeros((), dtype=dtype, device=feats.device),
        squared.clamp_min(_SQUARED_DISTANCE_FLOOR).sqrt(),
    )

    same_identity = labels.unsqueeze(0) == labels.unsqueeze(1)
    other_identity = ~same_identity
    has_negative = other_identity.any(dim=1)
    minus_inf = torch.tensor(float("-inf"), dtype=dtype, device=feats.device)
    scaled = distances if alpha == 1.0 else alpha * distances

    positive_weights = torch.softmax(torch.where(same_identity, scaled, minus_inf), dim=1)
    negative_logits = torch.where(other_identity, -scaled, minus_inf)
    # Rows with no negative would be all -inf (NaN softmax); give them a finite dummy row
    # whose weights are zeroed by the mask right after.
    negative_logits = torch.where(has_negative.unsqueeze(1), negative_logits, 0.0)
    negative_weights = torch.softmax(negative_logits, dim=1) * other_identity

    weighted_positive = (positive_weights * distances).sum(dim=1)
    weighted_negative = (negative_weights * distances).sum(dim=1)
    return weighted_positive, weighted_negative, has_negative.to(dtype)


def _weighted_distances_authors_code(feats: Tensor, labels: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """The AGW / CAJ code's weighted distances: its distance, its masked softmax weights.

    Distances are sqrt(clamp(|a|^2 + |b|^2 - 2ab, 1e-12)) (the diagonal too). Each softmax (of
    alpha * d over positives, -alpha * d over negatives) subtracts the row maximum of the MASKED
    matrix (masked entries count as 0) and adds 1e-6 to its normaliser. For the negatives the
    values are -alpha d <= 0, so that maximum is 0 and, once the negatives are farther than
    about 14 / alpha, exp(-alpha d) falls below 1e-6 and the negative term vanishes. An anchor
    without negatives gets a negative term of 0.
    """
    norms = feats.square().sum(dim=1, keepdim=True)
    distances = (norms + norms.T - 2.0 * (feats @ feats.T)).clamp_min(_SQUARED_DISTANCE_FLOOR).sqrt()
    same_identity = labels.unsqueeze(0) == labels.unsqueeze(1)
    is_positive = same_identity.to(feats.dtype)
    is_negative = (~same_identity).to(feats.dtype)

    def masked_softmax(values: Tensor, mask: Tensor) -> Tensor:
        shifted = torch.exp(values - (values * mask).max(dim=1, keepdim=True).values) * mask
        return shifted / (shifted.sum(dim=1, keepdim=True) + 1e-6)

    positive = distances * is_positive
    negative = distances * is_negative
    positive_logits, negative_logits = (positive, -negative) if alpha == 1.0 else (positive * alpha, -negative * alpha)
    weighted_positive = (positive * masked_softmax(positive_logits, is_positive)).sum(dim=1)
    weighted_negative = (negative * masked_softmax(negative_logits, is_negative)).sum(dim=1)
    return weighted_positive, weighted_negative


def adp_loss(features: Tensor, labels: Tensor, *, alpha: float = 1.0, gamma: float = 1.0, square: bool = True,
             variant: str = "paper") -> Tensor:
    """CAJ's enhanced squared difference (Ye et al., ICCV 2021; the CAJ code's TripletLoss_ADP).

    Per anchor, with p and n the weighted positive and negative distances of WRT whose softmaxes
    are sharpened by `alpha` (softmax(alpha d) over positives, softmax(-alpha d) over negatives;
    the weights multiply the plain distances) and g = p - n the gap:

        square=True:   softplus(+gamma g^2) where g > 0 (a violated triplet), softplus(-gamma g^2) else
        square=False:  softplus(gamma g)            (alpha = gamma = 1: WRT)

    averaged over anchors. Squaring makes the loss grow fast with a violation and keeps pushing,
    ever less, triplets that are already satisfied.

    `variant="paper"`: the weighting of `wrt_loss`'s paper variant (exact masked softmaxes,
    anchors without negatives left out of the mean). `variant="authors-code"`: the CAJ code's
    computation: its weighting (`_weighted_distances_authors_code`), gamma g^2 clamped at 88
    (the code's guard against overflow, which also stops the gradient of larger violations) and
    torch's soft-margin loss, every anchor in the mean.
    """
    name = "adp_loss"
    check_features(name, features)
    check_labels(name, labels, features)
    if variant not in ADP_VARIANTS:
        raise InputError(f"{name}: variant must be one of {', '.join(map(repr, ADP_VARIANTS))}; got {variant!r}")
    alpha = check_margin(name, "alpha", alpha)
    gamma = check_margin(name, "gamma", gamma)
    if alpha < 0 or gamma <= 0:
        raise InputError(f"{name}: expected alpha >= 0 and gamma > 0; got alpha={alpha}, gamma={gamma}")
    dtype = compute_dtype(features)
    with autocast_disabled(features.device):
        feats = features.to(dtype)
        if variant == "authors-code":
            weighted_positive, weighted_negative = _weighted_distances_authors_code(feats, labels, alpha)
            if not square:
                margin = gamma * (weighted_negative - weighted_positive)
                return F.soft_margin_loss(margin, torch.ones_like(margin))
            gap = weighted_positive - weighted_negative
            violated = weighted_positive > weighted_negative
            sign = torch.where(violated, -1.0, 1.0).to(dtype)  # the code's target y
            return F.soft_margin_loss((gamma * gap.square()).clamp_max(_AUTHORS_SQUARED_GAP_MAX), sign)
        weighted_positive, weighted_negative, valid = _weighted_distances(feats, labels, alpha)
        gap = weighted_positive - weighted_negative
        if square:
            squared = gamma * gap.square()
            per_anchor = F.softplus(torch.where(gap > 0, squared, -squared))
        else:
            per_anchor = F.softplus(gamma * gap)
        return (per_anchor * valid).sum() / valid.sum().clamp_min(1.0)


def kl_divergence_loss(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 3.0) -> Tensor:
    """CAJ's KL term: T^2 KL(q || p) per row, averaged, with p = softmax(student / T), q = softmax(teacher / T).

    The teacher's distribution is a constant (detached) and, as in the CAJ code, 1e-7 is added to
    it before its logarithm.
    """
    name = "kl_divergence_loss"
    check_matrix(name, "student_logits", student_logits, "N, num_classes")
    check_matrix(name, "teacher_logits", teacher_logits, "N, num_classes")
    if student_logits.shape != teacher_logits.shape:
        raise InputError(f"{name}: student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    temperature = check_margin(name, "temperature", temperature)
    if temperature <= 0:
        raise InputError(f"{name}: temperature must be > 0; got {temperature}")
    dtype = compute_dtype(student_logits, teacher_logits)
    with autocast_disabled(student_logits.device):
        log_p = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
        q = F.softmax(teacher_logits.detach().to(dtype) / temperature, dim=1) + _KL_TARGET_FLOOR
        return temperature**2 * (q * (q.log() - log_p)).sum(dim=1).mean()


# --------------------------------------------------------------------------------------------
# center losses
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# modality confusion module
# --------------------------------------------------------------------------------------------


def modality_classification_loss(logits: Tensor, modality: Tensor) -> Tensor:
    """Cross-entropy of the modality classifier against the true modality (the M step)."""
    name = "modality_classification_loss"
    check_logits(name, logits)
    check_labels(name, modality, logits, field="modality")
    check_label_range(name, modality, logits.shape[1], field="modality")
    with autocast_disabled(logits.device):
        return F.cross_entropy(logits.to(compute_dtype(logits)), modality)


def modality_confusion_loss(logits: Tensor) -> Tensor:
    """Cross-entropy against the uniform "confused" target (the extractor step).

    For two modalities this is -(1/N) sum_i 0.5 (log p0_i + log p1_i); it is smallest when the
    classifier cannot tell the modalities apart.
    """
    check_logits("modality_confusion_loss", logits)
    with autocast_disabled(logits.device):
        log_probs = F.log_softmax(logits.to(compute_dtype(logits)), dim=1)
        return -log_probs.mean(dim=1).mean()
