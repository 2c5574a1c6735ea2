"""k-reciprocal re-ranking against a plain per-probe implementation of Zhong et al. (CVPR 2017)."""

import numpy as np
import pytest
import torch

from harness.config import RerankConfig, TrialConfig
from harness.errors import ConfigError
from harness.evaluation import evaluate_trials, rank_metrics
from harness.reranking import original_distance, rerank_distance


def reference_rerank(dist: np.ndarray, num_query: int, k1: int, k2: int, lam: float) -> np.ndarray:
    """Section 3 of the paper, one probe at a time, with Python sets."""
    n = len(dist)
    dist = dist / dist.max(axis=1, keepdims=True)
    rank = np.argsort(dist, axis=1, kind="stable")

    def neighbours(i: int, k: int) -> set[int]:
        return set(rank[i, :k + 1].tolist())

    def reciprocal(i: int, k: int) -> set[int]:
        return {j for j in neighbours(i, k) if i in neighbours(j, k)}

    half = round(k1 / 2)
    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for j in r:
            rj = reciprocal(j, half)
            if len(rj & r) > 2 / 3 * len(rj):
                expanded |= rj
        idx = sorted(expanded)
        w = np.exp(-dist[i, idx])
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    out = np.zeros((num_query, n - num_query))
    for i in range(num_query):
        for g in range(num_query, n):
            jaccard = 1 - np.minimum(v[i], v[g]).sum() / np.maximum(v[i], v[g]).sum()
            out[i, g - num_query] = (1 - lam) * jaccard + lam * dist[i, g]
    return out


def clustered_features(seed: int, ids: int, per_id: int, dim: int = 16) -> tuple[torch.Tensor, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(ids, dim, generator=gen, dtype=torch.float64)
    labels = np.repeat(np.arange(ids), per_id)
    feats = centers[labels] + 0.7 * torch.randn(len(labels), dim, generator=gen, dtype=torch.float64)
    return feats, labels


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.0), (7, 3, 1.0), (3, 2, 0.5)])
def test_matches_reference(k1, k2, lam):
    feats, _ = clustered_features(0, ids=8, per_id=5)
    num_query = 12
    dist = original_distance(feats[:num_query], feats[num_query:])
    got = rerank_distance(dist, num_query, k1=k1, k2=k2, lambda_value=lam)
    expected = reference_rerank(dist.numpy(), num_query, k1, k2, lam)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_lambda_one_is_normalised_original_distance():
    feats, _ = clustered_features(1, ids=4, per_id=4)
    dist = original_distance(feats[:5], feats[5:])
    got = rerank_distance(dist, 5, k1=4, k2=2, lambda_value=1.0)
    expected = dist.numpy() / dist.numpy().max(axis=1, keepdims=True)
    np.testing.assert_allclose(got.numpy(), expected[:5, 5:], rtol=1e-12)


def test_config_defaults_and_ranges():
    assert RerankConfig() == RerankConfig(enabled=False, k1=20, k2=6, lambda_value=0.3)
    with pytest.raises(ConfigError, match="evaluation.rerank.lambda_value"):
        TrialConfig().with_overrides({"evaluation.rerank.lambda_value": 1.5})
    with pytest.raises(ConfigError, match="evaluation.rerank.k1"):
        TrialConfig().with_overrides({"evaluation.rerank.k1": 0})


def test_evaluate_trials_with_rerank_equals_rank_metrics_on_reranked_trial_gallery():
    feats, labels = clustered_features(2, ids=6, per_id=6)
    query = np.arange(0, len(labels), 3)
    gallery = np.setdiff1d(np.arange(len(labels)), query)
    cams_q, cams_g = np.ones(len(query), int), np.full(len(gallery), 2)
    masks = np.ones((2, len(gallery)), bool)
    masks[1, ::2] = False
    params = RerankConfig(enabled=True, k1=6, k2=3, lambda_value=0.3)
    got = evaluate_trials(feats[query], feats[gallery], labels[query], labels[gallery], cams_q, cams_g, masks,
                          protocol="regdb", rerank=params)
    for t in range(2):
        g = gallery[masks[t]]
        dist = rerank_distance(original_distance(feats[query], feats[g]), len(query), k1=6, k2=3, lambda_value=0.3)
        expected = rank_metrics(dist, labels[query], labels[g], cams_q, cams_g[masks[t]], protocol="regdb")
        assert got["trials"][t]["mAP"] == pytest.approx(expected["mAP"])
        np.testing.assert_allclose(got["trials"][t]["cmc"], expected["cmc"])
    plain = evaluate_trials(feats[query], feats[gallery], labels[query], labels[gallery], cams_q, cams_g, masks,
                            protocol="regdb", rerank=RerankConfig(enabled=False))
    assert got["mAP_mean"] != pytest.approx(plain["mAP_mean"])  # re-ranking changed the ranking
