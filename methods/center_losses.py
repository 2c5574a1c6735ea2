"""Center losses of MCLNet: the center loss of Wen et al. (its "center instead of ICA" ablation) and the
marginal center aggregation (ICA with identity labels, CCA with camera labels).

Conventions as in `methods.losses`: plain tensors in, a scalar tensor out, differentiable with
respect to the features and the centers; float32 arithmetic for half-precision inputs with
autocast off; batched tensor algebra, no Python loop over samples or classes.
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
    check_labels,
    check_margin,
    compute_dtype,
)
from methods.losses import _squared_distances

MARGINAL_VARIANTS: tuple[str, ...] = ("paper", "authors-code")
NEAREST_WEIGHTINGS: tuple[str, ...] = ("per-sample", "per-class-8")

# The authors' code multiplies the sum of per-identity nearest distances by this batch constant
# (their identity sampler draws 8 images per identity).
_AUTHORS_IMAGES_PER_IDENTITY = 8.0
# Above this many K x K x D elements the push-term search uses the |a|^2 + |b|^2 - 2ab matmul.
_DIRECT_PAIRS_MAX_ELEMENTS = 1 << 20


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
