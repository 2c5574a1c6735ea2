"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017) as batched tensor code.

Given the original distances between all N = Q + G probes and gallery images, each image i is
encoded by a sparse vector V_i over the N images: non-zero on its *expanded* k-reciprocal set,
weighted by exp(-d(i, j)) and normalised to sum 1. Its k-reciprocal set R(i, k1) holds the j that
are in i's k1+1 nearest neighbours while i is in theirs; it is expanded by the half-size set
R(j, k1/2) of each member j that shares more than 2/3 of its members with R(i, k1). Local query
expansion replaces V_i by the mean of the V of i's k2 nearest neighbours. The Jaccard distance is
1 - sum_k min(V_ik, V_jk) / sum_k max(V_ik, V_jk) (with unit-sum rows the denominator is
2 - the numerator), and the final distance (1 - lambda) * Jaccard + lambda * original.

The original distance is the squared Euclidean distance between L2-normalised features, each row
divided by its maximum (as in the authors' code). Every step works on whole (N, N) masks and
matmuls; only the Jaccard step runs in blocks of probes over the non-zeros of their V rows, to
bound memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Elements of the (probes x non-zeros x gallery) block of the Jaccard step held at once.
_JACCARD_BLOCK_ELEMENTS = 1 << 24


def original_distance(query_features: torch.Tensor, gallery_features: torch.Tensor, *,
                      similarity: str = "cosine") -> torch.Tensor:
    """(N, N) squared Euclidean distances between the L2-normalised [query; gallery] features.

    `similarity="dot"` (features the method compares by their plain dot product): the squared
    Euclidean distances between the features as given, |a|^2 + |b|^2 - 2 a.b.
    """
    feats = torch.cat([query_features, gallery_features])
    if similarity == "dot":
        norms = feats.square().sum(dim=1)
        return (norms[:, None] + norms[None, :] - 2.0 * feats @ feats.T).clamp_(min=0.0)
    feats = F.normalize(feats, dim=1)
    return (2.0 - 2.0 * feats @ feats.T).clamp_(min=0.0)


def _neighbour_mask(order: torch.Tensor, k: int) -> torch.Tensor:
    """mask[i, j]: j is among i's k+1 nearest neighbours (i itself included)."""
    n = order.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool, device=order.device)
    return mask.scatter_(1, order[:, :k + 1], True)


def rerank_distance(dist: torch.Tensor, num_query: int, *, k1: int = 20, k2: int = 6,
                    lambda_value: float = 0.3) -> torch.Tensor:
    """Re-ranked (Q, G) distances from the (N, N) original distances of [query; gallery].

    `dist` must be symmetric with zeros on the diagonal (e.g. `original_distance`). The
    parameters are validated where they are configured (`harness.config.RerankConfig`).
    """
    n = dist.shape[0]
    if dist.ndim != 2 or dist.shape[1] != n or not 0 < num_query < n:
        raise ValueError(f"rerank_distance: expected an (N, N) matrix with 0 < num_query < N, got "
                         f"{tuple(dist.shape)} and num_query={num_query}")
    dist = dist / dist.max(dim=1, keepdim=True).values.clamp(min=torch.finfo(dist.dtype).tiny)
    order = torch.sort(dist, dim=1, stable=True).indices
    half = min(round(k1 / 2), n - 1)
    k1 = min(k1, n - 1)

    forward = _neighbour_mask(order, k1)
    reciprocal = forward & forward.T  # R(i, k1)
    forward_half = _neighbour_mask(order, half)
    reciprocal_half = (forward_half & forward_half.T).to(dist.dtype)  # R(j, k1/2), one row per j

    # member j of R(i, k1) contributes R(j, k1/2) when |R(j, k1/2) & R(i, k1)| > 2/3 |R(j, k1/2)|
    overlap = reciprocal.to(dist.dtype) @ reciprocal_half.T
    contributes = reciprocal & (overlap > (2.0 / 3.0) * reciprocal_half.sum(dim=1)[None, :])
    expanded = reciprocal | ((contributes.to(dist.dtype) @ reciprocal_half) > 0)

    weights = torch.where(expanded, torch.exp(-dist), torch.zeros((), dtype=dist.dtype, device=dist.device))
    encoding = weights / weights.sum(dim=1, keepdim=True)
    if k2 != 1:  # local query expansion: mean encoding of the k2 nearest neighbours
        k2 = min(k2, n)
        average = torch.zeros(n, n, dtype=dist.dtype, device=dist.device)
        average.scatter_(1, order[:, :k2], 1.0 / k2)
        encoding = average @ encoding

    jaccard = _jaccard_to_gallery(encoding, num_query)
    return jaccard * (1.0 - lambda_value) + dist[:num_query, num_query:] * lambda_value


def _jaccard_to_gallery(encoding: torch.Tensor, num_query: int) -> torch.Tensor:
    """1 - sum min / (2 - sum min) between each query row and each gallery row of `encoding`.

    sum_k min(V_ik, V_jk) only involves the non-zeros k of V_i: each query's non-zero columns are
    gathered (padded with zero weights), then compared with those columns of every gallery row.
    """
    query, gallery_columns = encoding[:num_query], encoding[num_query:].T.contiguous()  # (N, G)
    nonzero = query != 0
    width = max(int(nonzero.sum(dim=1).max()), 1)
    values, columns = torch.topk(query, width, dim=1)  # non-zeros first, zero weights as padding
    rows_per_block = max(1, _JACCARD_BLOCK_ELEMENTS // max(width * gallery_columns.shape[1], 1))
    shared = torch.empty(num_query, gallery_columns.shape[1], dtype=encoding.dtype, device=encoding.device)
    for start in range(0, num_query, rows_per_block):
        block = slice(start, start + rows_per_block)
        gathered = gallery_columns[columns[block]]  # (B, width, G)
        shared[block] = torch.minimum(gathered, values[block, :, None]).sum(dim=1)
    return 1.0 - shared / (2.0 - shared)
