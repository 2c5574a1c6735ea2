"""Functional losses of MCLNet, CAJ and their AGW baseline.

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
    check_centers,
    check_features,
    check_label_range,
    check_labels,
    check_logits,
    check_margin,
    check_matrix,
    compute_dtype,
)

MARGINAL_VARIANTS: tuple[str, ...] = ("paper", "authors-code")
WRT_VARIANTS: tuple[str, ...] = ("paper", "authors-code")
ADP_VARIANTS: tuple[str, ...] = ("paper", "authors-code")
NEAREST_WEIGHTINGS: tuple[str, ...] = ("per-sample", "per-class-8")

# Squared distances are clamped to this before the square root so that its gradient stays finite
# for coincident points.
_SQUARED_DISTANCE_FLOOR = 1e-12
# The authors' code multiplies the sum of per-identity nearest distances by this batch constant
# (their identity sampler draws 8 images per identity).
_AUTHORS_IMAGES_PER_IDENTITY = 8.0
# The CAJ code clamps its squared gap at this value (exp(88) is near float32's largest number).
_AUTHORS_SQUARED_GAP_MAX = 88.0
# The CAJ code adds this to the KL term's target distribution before its logarithm.
_KL_TARGET_FLOOR = 1e-7
# Above this many K x K x D elements the push-term search uses the |a|^2 + |b|^2 - 2ab matmul.
_DIRECT_PAIRS_MAX_ELEMENTS = 1 << 20


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


def center_loss(features: Tensor, labels: Tensor, centers: Tensor) -> Tensor:
    """Center loss of Wen et al. (ECCV 2016): mean squared distance of each feature to its center.

    Centers of classes absent from the batch receive no gradient.
    """
    check_features("center_loss", features)
    check_labels("center_loss", labels, features)
    check_centers("center_loss", features, labels, centers)
    dtype = compute_dtype(features, centers)
    with autocast_disabled(features.device):
        feats, cents = features.to(dtype), centers.to(dtype)
        return (feats - cents.index_select(0, labels)).square().sum(dim=1).mean()


def _center_partners(centers: Tensor, labels: Tensor, *,
                     distinct_rows: bool | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """For the push term: which center is nearest to each batch class's center.

    Returns (anchor_ids (R,), partner (R,), sample_to_anchor (N,) or None), where partner[r] is
    argmin over k != anchor_ids[r] of ||c_{anchor_ids[r]} - c_k||^2 and sample i uses row
    sample_to_anchor[i] (row i itself when None). Decided without gradient from the
    |a|^2 + |b|^2 - 2ab expansion (or directly for K <= N); the chosen pair's distance is recomputed
    exactly by the caller. With exact ties one of the tied centers is taken, a valid subgradient of the min.

    The rows: all K centers when K <= N (cameras). Otherwise (identities) either the distinct
    batch labels (`distinct_rows`, 8 rows instead of 64 for a P=8 batch; the default on CPU) or one
    row per sample (the default elsewhere: `torch.unique` has a data-dependent size and would cost
    a host sync on an accelerator, where 64 rows cost nothing more).
    """
    num_classes = centers.shape[0]
    class_ids = torch.arange(num_classes, device=labels.device)
    if distinct_rows is None:
        distinct_rows = centers.device.type == "cpu"
    if num_classes <= labels.shape[0]:
        anchor_ids, sample_to_anchor = class_ids, labels
    elif distinct_rows:
        anchor_ids, sample_to_anchor = torch.unique(labels, return_inverse=True)
    else:
        anchor_ids, sample_to_anchor = labels, None
    with torch.no_grad():
        if anchor_ids is class_ids and num_classes**2 * centers.shape[1] <= _DIRECT_PAIRS_MAX_ELEMENTS:
            # a few centers (cameras): the K x K x D differences cost less than the matmul expansion's ops
            squared = (centers.unsqueeze(1) - centers.unsqueeze(0)).square().sum(dim=2).fill_diagonal_(float("inf"))
        else:
            squared = _squared_distances(centers.index_select(0, anchor_ids), centers)
            squared = squared.masked_fill(anchor_ids.unsqueeze(1) == class_ids.unsqueeze(0), float("inf"))
        return anchor_ids, squared.argmin(dim=1), sample_to_anchor


class _MarginalCenterAggregation(torch.autograd.Function):
    """Value and gradient of the marginal center loss in one pass each.

    Every term is a hinge of squared distances, so the gradient has a closed form: with
    d_j = ||f_j - c_{y_j}||^2 and w_j = dL/dd_j (a hinge indicator over N, minus, for the class's
    nearest sample f^o, what the class's hinges take back through m_k),
        dL/df_j = 2 w_j (f_j - c_{y_j}),   dL/dc_k -= sum_{j: y_j = k} dL/df_j,
    and each push hinge moves the two centers of its pair apart along their difference. Forward
    computes w and the push coefficients without recording a graph; backward is a few scaled
    copies and two index_adds, where autograd through the same expressions replays about fifty
    small kernels (each a launch on a GPU, each an overhead on a CPU).
    """

    @staticmethod
    def forward(ctx, feats: Tensor, cents: Tensor, labels: Tensor, sigma: float, rho: float, variant: str,
                nearest_weighting: str, detach_nearest: bool) -> Tensor:
        batch_size, num_classes = feats.shape[0], cents.shape[0]
        dtype = feats.dtype
        diff = feats - cents.index_select(0, labels)
        to_own_center = torch.linalg.vecdot(diff, diff)

        # m_{y_i}: a row-min over the (N x N) table of d_j, other classes masked. Every member of
        # a class sees the same row, so all of them name the same nearest sample f^o.
        same_class = labels.unsqueeze(0) == labels.unsqueeze(1)
        nearest_in_class, nearest_index = torch.where(same_class, to_own_center, float("inf")).min(dim=1)

        if num_classes > 1:
            anchor_ids, partner, sample_to_anchor = _center_partners(cents, labels)
            delta = cents.index_select(0, anchor_ids) - cents.index_select(0, partner)
            gap_rows = torch.linalg.vecdot(delta, delta)
            center_gap = gap_rows if sample_to_anchor is None else gap_rows.index_select(0, sample_to_anchor)

        # dl_dd[j] = dL/dd_j with m treated as a constant; take_back[i] is what sample i's share of
        # the loss takes from d_{j*} through m_{y_i} (j* = nearest_index[i]), so that the full
        # gradient is dl_dd with take_back index-added, negated, at nearest_index.
        if variant == "paper":
            pull_terms = to_own_center - nearest_in_class - sigma
            dl_dd = (pull_terms > 0).to(dtype) / batch_size
            take_back = dl_dd
            total = F.relu(pull_terms).sum()
            if num_classes > 1:
                push_terms = rho - center_gap
                total = total + F.relu(push_terms).sum()
                dl_dgap = (push_terms > 0).to(dtype) / -batch_size
            value = total / batch_size
        else:
            if nearest_weighting == "per-sample":
                nearest_term = nearest_in_class.mean()
            else:
                # the sum over the classes present of m_k: each of the n_k samples carries m_k / n_k
                class_sizes = same_class.sum(dim=1).to(dtype)
                nearest_term = (_AUTHORS_IMAGES_PER_IDENTITY / batch_size) * (nearest_in_class / class_sizes).sum()
            pull_term = to_own_center.mean() - nearest_term - sigma
            value = F.relu(pull_term)
            dl_dd = ((pull_term > 0).to(dtype) / batch_size).expand(batch_size)
            take_back = (dl_dd if nearest_weighting == "per-sample"
                         else dl_dd * _AUTHORS_IMAGES_PER_IDENTITY / class_sizes)
            if num_classes > 1:
                push_term = rho - center_gap.mean()
                value = value + F.relu(push_term)
                dl_dgap = ((push_term > 0).to(dtype) / -batch_size).expand(batch_size)

        if not detach_nearest:
            dl_dd = dl_dd.index_add(0, nearest_index, take_back, alpha=-1)
        saved = [diff, dl_dd, labels]
        if num_classes > 1:
            dl_dgap_rows = dl_dgap if sample_to_anchor is None else torch.zeros_like(gap_rows).index_add_(
                0, sample_to_anchor, dl_dgap)
            saved += [delta * (2 * dl_dgap_rows).unsqueeze(1), anchor_ids, partner]
        ctx.save_for_backward(*saved)
        ctx.num_classes = num_classes
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value: Tensor):
        diff, dl_dd, labels, *push = ctx.saved_tensors
        grad_feats = diff * (2 * grad_value * dl_dd).unsqueeze(1)
        grad_cents = None
        if ctx.needs_input_grad[1]:
            grad_cents = torch.zeros(ctx.num_classes, diff.shape[1], dtype=diff.dtype, device=diff.device)
            grad_cents.index_add_(0, labels, grad_feats, alpha=-1)
            if push:
                push_rows, anchor_ids, partner = push
                push_rows = push_rows * grad_value
                grad_cents.index_add_(0, anchor_ids, push_rows).index_add_(0, partner, push_rows, alpha=-1)
        return (grad_feats if ctx.needs_input_grad[0] else None), grad_cents, None, None, None, None, None, None


def marginal_center_loss(
    features: Tensor,
    labels: Tensor,
    centers: Tensor,
    *,
    sigma: float,
    rho: float,
    variant: str = "paper",
    nearest_weighting: str = "per-sample",
    detach_nearest: bool = False,
) -> Tensor:
    """Marginal center aggregation of MCLNet (ICA with identity labels, CCA with camera labels).

    With d_i = ||f_i - c_{y_i}||^2 and m_k the smallest d_j among the batch samples of class k
    (the class's sample f^o nearest its center):

    variant "paper" (hinge per sample)
        pull = mean_i [d_i - m_{y_i} - sigma]_+
        push = mean_i [rho - min_{k != y_i} ||c_{y_i} - c_k||^2]_+
    variant "authors-code" (hinge once, on batch means)
        pull = [mean_i d_i - nearest - sigma]_+
        push = [rho - mean_i min_{k != y_i} ||c_{y_i} - c_k||^2]_+
      where `nearest_weighting` picks the authors' nearest term:
        "per-sample"  nearest = (1/N) sum_k n_k m_k    (their camera term; n_k = batch count)
        "per-class-8" nearest = (8/N) sum_{k in batch} m_k   (their identity term)
      `nearest_weighting` is ignored by the "paper" variant.

    Returns pull + push. The neighbours of a center are all other centers, including those of
    classes absent from the batch; with a single center the push term is zero.

    m_k is a batch sample's distance, so by default the gradient flows through it as through any
    other d_j: each active pull hinge of class k then also pushes the class's nearest sample f^o
    away from c_k. `detach_nearest=True` treats m_k as a constant instead, so only the other
    samples move (toward their center). Where a min is tied, one of the tied entries takes the
    gradient (a valid subgradient). The gradient is computed in closed form (see
    `_MarginalCenterAggregation`) and is not differentiable a second time.
    """
    name = "marginal_center_loss"
    if variant not in MARGINAL_VARIANTS:
        raise InputError(
            f"{name}: variant must be one of {', '.join(map(repr, MARGINAL_VARIANTS))}; "
            f"got {variant!r}"
        )
    if nearest_weighting not in NEAREST_WEIGHTINGS:
        raise InputError(
            f"{name}: nearest_weighting must be one of {', '.join(map(repr, NEAREST_WEIGHTINGS))}; "
            f"got {nearest_weighting!r}"
        )
    sigma = check_margin(name, "sigma", sigma)
    rho = check_margin(name, "rho", rho)
    check_features(name, features)
    check_labels(name, labels, features)
    check_centers(name, features, labels, centers)

    dtype = compute_dtype(features, centers)
    with autocast_disabled(features.device):
        return _MarginalCenterAggregation.apply(features.to(dtype), centers.to(dtype), labels, sigma, rho, variant,
                                                nearest_weighting, bool(detach_nearest))


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
