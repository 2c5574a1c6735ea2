"""The public ranking functions: distance, one protocol, every gallery trial at once.

The protocol rules they implement are documented in `harness.evaluation`.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.config import RerankConfig
from harness.errors import InputError, TrialFailure
from harness.evaluation.ranking import (
    ArrayLike,
    _aggregate_trials,
    _as_tensor,
    _check_protocol,
    _features_pair,
    _Labels,
    _query_groups,
    _QueryResults,
    _RankedBlock,
    _take_block,
    _trial_masks,
)
from harness.reranking import original_distance, rerank_distance

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def pairwise_distance(query_features: ArrayLike, gallery_features: ArrayLike, *,
                      similarity: str = "cosine") -> torch.Tensor:
    """Negative cosine similarity ``-(q . g)`` of L2-normalised features, shape (Q, G).

    It orders every gallery exactly like the Euclidean distance between unit vectors
    (``|q - g|^2 = 2 - 2 q.g``) without the extra pass over the matrix. Computed on the query
    features' device, in float32 unless the features are float64. ``similarity="dot"``: the
    features are not normalised, ``-(q . g)`` of the features as given.
    """
    query, gallery = _features_pair(query_features, gallery_features, "pairwise_distance", similarity)
    return -(query @ gallery.T)


def rank_metrics(
    dist: ArrayLike,
    q_ids: ArrayLike,
    g_ids: ArrayLike,
    q_cams: ArrayLike,
    g_cams: ArrayLike,
    *,
    protocol: str,
    max_rank: int = 20,
) -> dict[str, Any]:
    """CMC / mAP / mINP of one query set against one gallery under ``protocol``'s rules.

    ``dist`` is (Q, G), smaller = more similar. Cameras are only read by the ``"sysu"`` (SYSU
    camera numbers 1..6) and ``"llcm"`` rules. Returns ``{"cmc": float64 array (max_rank,),
    "mAP": float, "mINP": float, "num_valid_queries": int}``; raises TrialFailure when no
    query has a true match in the gallery.
    """
    where = "rank_metrics"
    _check_protocol(protocol, max_rank, where)
    dist_t = _as_tensor(dist, "dist", None, where)
    if dist_t.ndim != 2:
        raise InputError(f"{where}: dist must be a 2-D (queries x gallery) matrix, got shape {tuple(dist_t.shape)}")
    if dist_t.dtype == torch.bool or dist_t.is_complex():
        raise InputError(f"{where}: dist must hold real numbers, got dtype {dist_t.dtype}")
    num_queries, num_gallery = dist_t.shape
    labels = _Labels.build(q_ids, g_ids, q_cams, g_cams, num_queries, num_gallery, protocol, dist_t.device, where)
    if torch.isnan(dist_t).any():
        raise TrialFailure(f"{where}: dist contains NaN (check the features for NaN/inf)")

    results = _QueryResults(num_queries, dist_t.device)
    for rows, view in _query_groups(labels, protocol):
        for block_rows in torch.split(rows, view.rows_per_block):
            order = torch.sort(_take_block(dist_t, block_rows, view.columns), dim=1, stable=True).indices
            ranking = _RankedBlock(order, block_rows, labels, view)
            results.store(block_rows, ranking.metrics(None, protocol, max_rank))
    return results.summary(max_rank, where)


def evaluate_trials(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    q_ids: ArrayLike,
    g_ids: ArrayLike,
    q_cams: ArrayLike,
    g_cams: ArrayLike,
    trial_masks: ArrayLike,
    *,
    protocol: str,
    max_rank: int = 20,
    query_masks: ArrayLike | None = None,
    rerank: RerankConfig | None = None,
    similarity: str = "cosine",
) -> dict[str, Any]:
    """Metrics of every gallery trial of a protocol from ONE ranking of the union gallery.

    ``gallery_features`` is the union of all trial galleries and ``trial_masks`` (T, G) bool
    selects trial t's gallery. The query x union-gallery distance (``pairwise_distance``) is
    computed and sorted once; each trial's ranking is that order restricted to its gallery
    (a subset keeps its relative order), so every trial equals ``rank_metrics`` on its own
    gallery. ``query_masks`` (T, Q) bool, when given, restricts trial t's averages to its
    queries (protocols that sample the query side); every query is still ranked once.
    ``*_std`` are sample standard deviations (ddof=1) over trials, 0.0 when T == 1.
    ``rerank`` (a ``harness.config.RerankConfig``), when enabled, applies k-reciprocal
    re-ranking (``harness.reranking``) to each trial's query x trial-gallery distances.
    ``similarity`` as in ``pairwise_distance`` ("cosine" or "dot").
    """
    where = "evaluate_trials"
    _check_protocol(protocol, max_rank, where)
    query, gallery = _features_pair(query_features, gallery_features, where, similarity)
    num_queries, num_gallery = query.shape[0], gallery.shape[0]
    device = query.device
    labels = _Labels.build(q_ids, g_ids, q_cams, g_cams, num_queries, num_gallery, protocol, device, where)
    masks = _trial_masks(trial_masks, num_gallery, device, where)

    trial_results = [_QueryResults(num_queries, device) for _ in range(masks.shape[0])]
    if rerank is None or not rerank.enabled:
        for rows, view in _query_groups(labels, protocol):
            view_gallery = gallery if view.columns is None else gallery.index_select(0, view.columns)
            view_masks = masks if view.columns is None else masks.index_select(1, view.columns)
            for block_rows in torch.split(rows, view.rows_per_block):
                block = -(query.index_select(0, block_rows) @ view_gallery.T)
                ranking = _RankedBlock(torch.sort(block, dim=1, stable=True).indices, block_rows, labels, view)
                for trial, results in enumerate(trial_results):
                    results.store(block_rows, ranking.metrics(view_masks[trial], protocol, max_rank))
    else:  # re-ranking depends on the whole gallery: one re-ranked distance per trial
        for trial, results in enumerate(trial_results):
            dist = _reranked_trial_distance(query, gallery, masks[trial], rerank, similarity)
            for rows, view in _query_groups(labels, protocol):
                view_mask = masks[trial] if view.columns is None else masks[trial].index_select(0, view.columns)
                for block_rows in torch.split(rows, view.rows_per_block):
                    order = torch.sort(_take_block(dist, block_rows, view.columns), dim=1, stable=True).indices
                    ranking = _RankedBlock(order, block_rows, labels, view)
                    results.store(block_rows, ranking.metrics(view_mask, protocol, max_rank))

    if query_masks is not None:
        selected = _as_tensor(query_masks, "query_masks", device, where)
        if selected.dtype != torch.bool or tuple(selected.shape) != (masks.shape[0], num_queries):
            raise InputError(
                f"{where}: query_masks must be a bool array of shape ({masks.shape[0]}, {num_queries}),"
                f" got {selected.dtype} {tuple(selected.shape)}"
            )
        for results, chosen in zip(trial_results, selected):
            results.valid &= chosen
    trials = [
        results.summary(max_rank, f"{where}: trial {trial}") for trial, results in enumerate(trial_results)
    ]
    return _aggregate_trials(trials)


def _reranked_trial_distance(
    query: torch.Tensor, gallery: torch.Tensor, trial_mask: torch.Tensor, params: RerankConfig,
    similarity: str = "cosine",
) -> torch.Tensor:
    """(Q, G) re-ranked distances to trial t's gallery; +inf in the columns outside it."""
    columns = trial_mask.nonzero().flatten()
    original = original_distance(query, gallery.index_select(0, columns), similarity=similarity)
    reranked = rerank_distance(original, query.shape[0],
                               k1=params.k1, k2=params.k2, lambda_value=params.lambda_value)
    dist = torch.full((query.shape[0], gallery.shape[0]), float("inf"), dtype=reranked.dtype, device=query.device)
    dist[:, columns] = reranked
    return dist


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


