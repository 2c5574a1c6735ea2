"""rank_metrics / evaluate_trials against hand-computed values and a literal per-query reference."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.evaluation import evaluate_trials, pairwise_distance, rank_metrics
from harness.evaluation import ranking as evaluation_internals

# --------------------------------------------------------------------------------------------
# Literal reference: one query at a time, written from the protocol text
# --------------------------------------------------------------------------------------------


def reference_metrics(dist, q_ids, g_ids, q_cams, g_cams, protocol, max_rank=20):
    dist, q_ids, g_ids = np.asarray(dist), np.asarray(q_ids), np.asarray(g_ids)
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    curves, aps, inps = [], [], []
    for query in range(dist.shape[0]):
        ranked = []
        for g in np.argsort(dist[query], kind="stable"):
            if protocol == "sysu" and q_cams[query] == 3 and g_cams[g] == 2:
                continue
            if protocol == "llcm" and g_ids[g] == q_ids[query] and g_cams[g] == q_cams[query]:
                continue
            ranked.append(g)
        ranked_ids = [g_ids[g] for g in ranked]
        matches = [gid == q_ids[query] for gid in ranked_ids]
        if not any(matches):
            continue
        if protocol == "regdb":
            curve_matches = matches
        else:
            seen, curve_matches = set(), []
            for gid in ranked_ids:
                if gid not in seen:
                    seen.add(gid)
                    curve_matches.append(gid == q_ids[query])
        first = curve_matches.index(True)
        curves.append([1.0 if k >= first else 0.0 for k in range(max_rank)])
        hits, precisions, last = 0, [], 0
        for k, is_match in enumerate(matches, start=1):
            if is_match:
                hits += 1
                precisions.append(hits / k)
                last = k
        aps.append(sum(precisions) / hits)
        inps.append(hits / last)
    if not curves:
        return None
    return {
        "cmc": np.mean(curves, axis=0),
        "mAP": float(np.mean(aps)),
        "mINP": float(np.mean(inps)),
        "num_valid_queries": len(curves),
    }


def assert_same_metrics(actual, expected):
    assert actual["num_valid_queries"] == expected["num_valid_queries"]
    assert actual["cmc"].dtype == np.float64
    np.testing.assert_allclose(actual["cmc"], expected["cmc"], rtol=0, atol=1e-12)
    assert actual["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert actual["mINP"] == pytest.approx(expected["mINP"], abs=1e-12)


def random_case(rng, num_queries, num_gallery, num_ids, protocol):
    """Continuous distances (no ties); some query identities absent from the gallery."""
    g_ids = rng.integers(0, num_ids, num_gallery)
    q_ids = rng.integers(0, num_ids + 3, num_queries)
    if protocol == "sysu":
        q_cams = rng.choice([3, 6], num_queries)
        g_cams = rng.choice([1, 2, 4, 5], num_gallery)
    else:
        q_cams = rng.integers(1, 4, num_queries)
        g_cams = rng.integers(1, 4, num_gallery)
    dist = rng.random((num_queries, num_gallery))
    return dist, q_ids, g_ids, q_cams, g_cams


# --------------------------------------------------------------------------------------------
# Hand-computed examples
# --------------------------------------------------------------------------------------------


def test_regdb_hand_example():
    # ranked ids: 5, 7, 9, 3, 7 -> hits at ranks 2 and 5
    dist = np.array([[0.5, 0.2, 0.1, 0.9, 0.3]])
    out = rank_metrics(dist, [7], [3, 7, 5, 7, 9], [1], [2, 2, 2, 2, 2], protocol="regdb", max_rank=5)
    np.testing.assert_array_equal(out["cmc"], [0, 1, 1, 1, 1])
    assert out["mAP"] == pytest.approx(float(Fraction(1, 2) * (Fraction(1, 2) + Fraction(2, 5))))
    assert out["mINP"] == pytest.approx(float(Fraction(2, 5)))
    assert out["num_valid_queries"] == 1


# gallery for the SYSU hand examples: (id, cam, distance)
SYSU_GALLERY = [
    (2, 2, 0.05), (4, 1, 0.10), (4, 4, 0.15), (1, 2, 0.20), (5, 5, 0.25), (4, 5, 0.30), (1, 1, 0.35), (1, 4, 0.50)
]


def sysu_hand_inputs(queries):
    g_ids = [gid for gid, _, _ in SYSU_GALLERY]
    g_cams = [cam for _, cam, _ in SYSU_GALLERY]
    dist = np.array([[d for _, _, d in SYSU_GALLERY]] * len(queries))
    return dist, [q for q, _ in queries], g_ids, [c for _, c in queries], g_cams


def test_sysu_cam3_query_drops_cam2_and_deduplicates():
    # after removing cam2: ids 4, 4, 5, 4, 1, 1 -> hits at 5, 6; de-duplicated 4, 5, 1 -> rank 3
    out = rank_metrics(*sysu_hand_inputs([(1, 3)]), protocol="sysu", max_rank=5)
    np.testing.assert_array_equal(out["cmc"], [0, 0, 1, 1, 1])
    assert out["mAP"] == pytest.approx(float(Fraction(1, 2) * (Fraction(1, 5) + Fraction(2, 6))))
    assert out["mINP"] == pytest.approx(1 / 3)


def test_sysu_cam6_query_keeps_cam2():
    # ids 2, 4, 4, 1, 5, 4, 1, 1 -> hits at 4, 7, 8; de-duplicated 2, 4, 1 -> rank 3
    out = rank_metrics(*sysu_hand_inputs([(1, 6)]), protocol="sysu", max_rank=5)
    np.testing.assert_array_equal(out["cmc"], [0, 0, 1, 1, 1])
    assert out["mAP"] == pytest.approx(float((Fraction(1, 4) + Fraction(2, 7) + Fraction(3, 8)) / 3))
    assert out["mINP"] == pytest.approx(3 / 8)


def test_regdb_rule_on_sysu_gallery_is_standard_cmc_without_exclusion():
    out = rank_metrics(*sysu_hand_inputs([(1, 6)]), protocol="regdb", max_rank=5)
    np.testing.assert_array_equal(out["cmc"], [0, 0, 0, 1, 1])
    assert out["mAP"] == pytest.approx(17 / 56)


def test_sysu_mixed_queries_average_and_skip_unmatched():
    # query (2, cam3): its only match is on cam2 -> removed -> skipped; id 99 has no match
    out = rank_metrics(*sysu_hand_inputs([(1, 3), (1, 6), (99, 6), (2, 3)]), protocol="sysu", max_rank=5)
    assert out["num_valid_queries"] == 2
    np.testing.assert_array_equal(out["cmc"], [0, 0, 1, 1, 1])
    assert out["mAP"] == pytest.approx((4 / 15 + 17 / 56) / 2)
    assert out["mINP"] == pytest.approx((1 / 3 + 3 / 8) / 2)


def test_llcm_hand_example_excludes_same_id_same_camera_only():
    # query id 1 cam 2. Kept ranked ids: 3 (cam2, other id), 3, 1, 6, 1 -> hits at 3, 5;
    # de-duplicated 3, 1, 6 -> rank 2, padded with its last value up to max_rank
    g = [(1, 2, 0.1), (3, 2, 0.2), (3, 1, 0.3), (1, 5, 0.4), (1, 2, 0.5), (6, 3, 0.6), (1, 7, 0.7)]
    dist = np.array([[d for _, _, d in g]])
    out = rank_metrics(dist, [1], [i for i, _, _ in g], [2], [c for _, c, _ in g], protocol="llcm", max_rank=5)
    np.testing.assert_array_equal(out["cmc"], [0, 1, 1, 1, 1])
    assert out["mAP"] == pytest.approx(float(Fraction(1, 2) * (Fraction(1, 3) + Fraction(2, 5))))
    assert out["mINP"] == pytest.approx(2 / 5)


def test_ties_keep_gallery_index_order():
    # equal distances: gallery order 5, 7, 7 -> hits at ranks 2 and 3
    out = rank_metrics(np.zeros((1, 3)), [7], [5, 7, 7], [1], [1, 1, 1], protocol="regdb", max_rank=3)
    np.testing.assert_array_equal(out["cmc"], [0, 1, 1])
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert out["mINP"] == pytest.approx(2 / 3)


def test_short_gallery_pads_cmc_with_last_value():
    out = rank_metrics(np.array([[0.2, 0.1]]), [1], [1, 2], [1], [2, 1], protocol="llcm", max_rank=20)
    assert out["cmc"].shape == (20,)
    np.testing.assert_array_equal(out["cmc"], [0.0] + [1.0] * 19)


# --------------------------------------------------------------------------------------------
# Random cases against the literal reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["sysu", "regdb", "llcm"])
def test_random_cases_match_reference(protocol):
    rng = np.random.default_rng({"sysu": 1, "regdb": 2, "llcm": 3}[protocol])
    checked = 0
    for _ in range(60):
        num_queries, num_gallery = int(rng.integers(1, 30)), int(rng.integers(1, 70))
        num_ids = int(rng.integers(1, 12))
        max_rank = int(rng.choice([1, 3, 20, 100]))
        case = random_case(rng, num_queries, num_gallery, num_ids, protocol)
        expected = reference_metrics(*case, protocol, max_rank)
        if expected is None:
            with pytest.raises(HarnessError, match="no query has a true match"):
                rank_metrics(*case, protocol=protocol, max_rank=max_rank)
            continue
        assert_same_metrics(rank_metrics(*case, protocol=protocol, max_rank=max_rank), expected)
        checked += 1
    assert checked > 40


@pytest.mark.parametrize("protocol", ["sysu", "regdb", "llcm"])
def test_small_blocks_and_late_first_match(monkeypatch, protocol):
    """Many query blocks, and first matches far behind a few frequent identities (the slow
    path of the de-duplicated CMC)."""
    monkeypatch.setattr(evaluation_internals, "_CPU_BLOCK_ELEMENTS", 500)  # many blocks per query set
    rng = np.random.default_rng(7)
    num_gallery = 300
    g_ids = np.where(rng.random(num_gallery) < 0.05, 4, rng.integers(0, 4, num_gallery))
    q_ids = rng.choice([0, 4, 4, 4, 9], 40)
    q_cams = rng.choice([3, 6], 40) if protocol == "sysu" else rng.integers(1, 3, 40)
    g_cams = rng.choice([1, 2, 4, 5], num_gallery) if protocol == "sysu" else rng.integers(1, 3, num_gallery)
    dist = rng.random((40, num_gallery))
    for max_rank in (1, 2, 20):
        expected = reference_metrics(dist, q_ids, g_ids, q_cams, g_cams, protocol, max_rank)
        actual = rank_metrics(dist, q_ids, g_ids, q_cams, g_cams, protocol=protocol, max_rank=max_rank)
        assert_same_metrics(actual, expected)


def test_tiny_dedup_window_still_exact(monkeypatch):
    monkeypatch.setattr(evaluation_internals, "_DEDUP_FIRST_WINDOW", 1)
    rng = np.random.default_rng(11)
    case = random_case(rng, 50, 200, 30, "llcm")
    for max_rank in (1, 5, 20):
        expected = reference_metrics(*case, "llcm", max_rank)
        assert_same_metrics(rank_metrics(*case, protocol="llcm", max_rank=max_rank), expected)


def test_numpy_and_torch_inputs_agree():
    rng = np.random.default_rng(5)
    dist, q_ids, g_ids, q_cams, g_cams = random_case(rng, 25, 60, 8, "sysu")
    from_numpy = rank_metrics(dist, q_ids, g_ids, q_cams, g_cams, protocol="sysu")
    from_torch = rank_metrics(
        torch.tensor(dist, dtype=torch.float32),
        torch.tensor(q_ids),
        torch.tensor(g_ids, dtype=torch.int32),
        torch.tensor(q_cams),
        list(g_cams),
        protocol="sysu",
    )
    assert_same_metrics(from_torch, from_numpy)
    read_only = dist.copy()
    read_only.setflags(write=False)
    assert_same_metrics(rank_metrics(read_only, q_ids, g_ids, q_cams, g_cams, protocol="sysu"), from_numpy)


# --------------------------------------------------------------------------------------------
# Trials and distances
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["sysu", "regdb", "llcm"])
def test_evaluate_trials_equals_each_masked_gallery(protocol):
    rng = np.random.default_rng(21)
    num_queries, num_gallery, num_trials = 30, 80, 4
    _, q_ids, g_ids, q_cams, g_cams = random_case(rng, num_queries, num_gallery, 6, protocol)
    query_features = rng.normal(size=(num_queries, 16))
    gallery_features = rng.normal(size=(num_gallery, 16)) * rng.uniform(0.5, 3, (num_gallery, 1))
    masks = rng.random((num_trials, num_gallery)) < 0.6

    out = evaluate_trials(
        query_features, gallery_features, q_ids, g_ids, q_cams, g_cams, masks, protocol=protocol, max_rank=10
    )
    unit_q = query_features / np.linalg.norm(query_features, axis=1, keepdims=True)
    unit_g = gallery_features / np.linalg.norm(gallery_features, axis=1, keepdims=True)
    expected = []
    for trial, mask in enumerate(masks):
        dist = -(unit_q @ unit_g[mask].T)
        expected.append(reference_metrics(dist, q_ids, g_ids[mask], q_cams, g_cams[mask], protocol, 10))
        assert_same_metrics(out["trials"][trial], expected[trial])
    cmc = np.stack([e["cmc"] for e in expected])
    np.testing.assert_allclose(out["cmc_mean"], cmc.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(out["cmc_std"], cmc.std(axis=0, ddof=1), atol=1e-12)
    for key in ("mAP", "mINP"):
        values = np.array([e[key] for e in expected])
        assert out[f"{key}_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert out[f"{key}_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)


@pytest.mark.parametrize("protocol", ["sysu", "regdb", "llcm"])
def test_evaluate_trials_with_query_masks_equals_each_trials_queries(protocol):
    """Per-trial query sets (a sampled query side): trial t averages only its own queries."""
    rng = np.random.default_rng(5)
    num_queries, num_gallery, num_trials = 40, 60, 3
    _, q_ids, g_ids, q_cams, g_cams = random_case(rng, num_queries, num_gallery, 6, protocol)
    query_features, gallery_features = rng.normal(size=(num_queries, 8)), rng.normal(size=(num_gallery, 8))
    gallery_masks = rng.random((num_trials, num_gallery)) < 0.7
    query_masks = rng.random((num_trials, num_queries)) < 0.5

    out = evaluate_trials(query_features, gallery_features, q_ids, g_ids, q_cams, g_cams, gallery_masks,
                          protocol=protocol, max_rank=10, query_masks=query_masks)
    unit_q = query_features / np.linalg.norm(query_features, axis=1, keepdims=True)
    unit_g = gallery_features / np.linalg.norm(gallery_features, axis=1, keepdims=True)
    for trial in range(num_trials):
        q, g = query_masks[trial], gallery_masks[trial]
        expected = reference_metrics(-(unit_q[q] @ unit_g[g].T), q_ids[q], g_ids[g], q_cams[q], g_cams[g], protocol, 10)
        assert_same_metrics(out["trials"][trial], expected)
    with pytest.raises(HarnessError, match="query_masks"):
        evaluate_trials(query_features, gallery_features, q_ids, g_ids, q_cams, g_cams, gallery_masks,
                        protocol=protocol, query_masks=query_masks[:2])


def test_evaluate_trials_single_trial_has_zero_std_and_matches_rank_metrics():
    rng = np.random.default_rng(3)
    _, q_ids, g_ids, q_cams, g_cams = random_case(rng, 12, 40, 5, "sysu")
    qf, gf = rng.normal(size=(12, 8)), rng.normal(size=(40, 8))
    out = evaluate_trials(qf, gf, q_ids, g_ids, q_cams, g_cams, np.ones((1, 40), bool), protocol="sysu")
    direct = rank_metrics(pairwise_distance(qf, gf), q_ids, g_ids, q_cams, g_cams, protocol="sysu")
    assert_same_metrics(out["trials"][0], direct)
    assert out["mAP_std"] == 0.0 and out["mINP_std"] == 0.0
    np.testing.assert_array_equal(out["cmc_std"], np.zeros(20))
    assert out["mAP_mean"] == direct["mAP"]


def test_pairwise_distance_is_negative_cosine():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(4, 6)), rng.normal(size=(5, 6))
    expected = -np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in g] for a in q])
    got = pairwise_distance(q, g)
    assert isinstance(got, torch.Tensor) and got.shape == (4, 5)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    unit_q = q / np.linalg.norm(q, axis=1, keepdims=True)
    unit_g = g / np.linalg.norm(g, axis=1, keepdims=True)
    euclidean = np.linalg.norm(unit_q[:, None] - unit_g[None], axis=2)
    np.testing.assert_array_equal(np.argsort(got.numpy(), axis=1), np.argsort(euclidean, axis=1))


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------

GOOD = dict(
    dist=np.random.default_rng(0).random((2, 3)), q_ids=[1, 2], g_ids=[1, 2, 2], q_cams=[3, 6], g_cams=[1, 2, 4]
)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(protocol="market"), "unknown protocol"),
        (dict(max_rank=0), "max_rank"),
        (dict(max_rank=True), "max_rank"),
        (dict(dist=np.zeros(3)), "2-D"),
        (dict(q_ids=[1, 2, 3]), "q_ids has 3 entries"),
        (dict(g_ids=[1, 2]), "g_ids has 2 entries"),
        (dict(q_cams=[3]), "q_cams has 1 entries"),
        (dict(g_cams=[1, 2, 4, 5]), "g_cams has 4 entries"),
        (dict(q_ids=[1.0, 2.0]), "integers"),
        (dict(g_cams=[0, 1, 3]), "SYSU camera numbers"),
        (dict(q_ids=[7, 8]), "no query has a true match"),
        (dict(dist=np.array([[0.1, np.nan, 0.2], [0.1, 0.2, 0.3]])), "NaN"),
        (dict(dist=np.zeros((0, 3)), q_ids=[], q_cams=[]), "at least one query"),
    ],
)
def test_rank_metrics_rejects_bad_input(change, message):
    kwargs = {**GOOD, "protocol": "sysu", **change}
    with pytest.raises(HarnessError, match=message):
        positional = [kwargs.pop(name) for name in ("dist", "q_ids", "g_ids", "q_cams", "g_cams")]
        rank_metrics(*positional, **kwargs)


@pytest.mark.parametrize(
    "gallery_features, masks, message",
    [
        (np.ones((3, 5)), np.ones((2, 3), bool), "dim"),
        (np.ones((3, 4)), np.ones((2, 4), bool), r"shape \(trials >= 1, 3"),
        (np.ones((3, 4)), np.ones((2, 3), int), "bool"),
        (np.ones((3, 4)), np.array([[True, True, False], [False, False, False]]), r"trial\(s\) \[1\]"),
        (np.full((3, 4), np.nan), np.ones((2, 3), bool), "NaN or inf"),
    ],
)
def test_evaluate_trials_rejects_bad_input(gallery_features, masks, message):
    with pytest.raises(HarnessError, match=message):
        evaluate_trials(np.ones((2, 4)), gallery_features, [1, 2], [1, 2, 2], [3, 6], [1, 2, 4], masks, protocol="sysu")


def test_trial_without_any_valid_query_is_named():
    masks = np.array([[True, True, True], [True, False, False]])  # trial 1: only id 1 on cam 1
    with pytest.raises(HarnessError, match="trial 1: no query has a true match"):
        evaluate_trials(np.eye(2, 4), np.eye(3, 4), [2, 2], [1, 2, 2], [3, 6], [1, 4, 5], masks, protocol="sysu")


@pytest.mark.parametrize("protocol", ["sysu", "regdb", "llcm"])
def test_heavy_ties_follow_gallery_index_order(protocol):
    rng = np.random.default_rng(13)
    dist, q_ids, g_ids, q_cams, g_cams = random_case(rng, 20, 3000, 40, protocol)
    dist = np.floor(dist * 3)  # three distinct distances: long runs of ties
    expected = reference_metrics(dist, q_ids, g_ids, q_cams, g_cams, protocol)
    assert_same_metrics(rank_metrics(dist, q_ids, g_ids, q_cams, g_cams, protocol=protocol), expected)


def test_trials_with_duplicate_gallery_features_keep_index_order():
    rng = np.random.default_rng(17)
    _, q_ids, g_ids, q_cams, g_cams = random_case(rng, 10, 2000, 30, "regdb")
    query_features = rng.normal(size=(10, 4))
    gallery_features = rng.normal(size=(5, 4))[rng.integers(0, 5, 2000)]  # 5 distinct vectors
    masks = rng.random((3, 2000)) < 0.5
    out = evaluate_trials(query_features, gallery_features, q_ids, g_ids, q_cams, g_cams, masks, protocol="regdb")
    dist = pairwise_distance(query_features, gallery_features).numpy()
    for trial, mask in enumerate(masks):
        expected = reference_metrics(dist[:, mask], q_ids, g_ids[mask], q_cams, g_cams[mask], "regdb")
        assert_same_metrics(out["trials"][trial], expected)


@pytest.mark.parametrize("protocol", ["sysu", "regdb", "llcm"])
def test_trials_with_small_blocks_late_matches_and_a_cam2_only_trial(monkeypatch, protocol):
    monkeypatch.setattr(evaluation_internals, "_CPU_BLOCK_ELEMENTS", 700)
    monkeypatch.setattr(evaluation_internals, "_DEDUP_FIRST_WINDOW", 1)
    rng = np.random.default_rng(29)
    num_queries, num_gallery = 40, 300
    g_ids = np.where(rng.random(num_gallery) < 0.05, 4, rng.integers(0, 4, num_gallery))
    q_ids = rng.choice([0, 1, 4, 4, 4, 9], num_queries)
    q_cams = rng.choice([3, 6], num_queries) if protocol == "sysu" else rng.integers(1, 3, num_queries)
    g_cams = rng.choice([1, 2, 4, 5], num_gallery) if protocol == "sysu" else rng.integers(1, 3, num_gallery)
    query_features = rng.normal(size=(num_queries, 8))
    gallery_features = rng.normal(size=(num_gallery, 8))
    masks = np.stack([rng.random(num_gallery) < 0.5, rng.random(num_gallery) < 0.2, g_cams == 2])
    dist = -(query_features / np.linalg.norm(query_features, axis=1, keepdims=True)) @ (
        gallery_features / np.linalg.norm(gallery_features, axis=1, keepdims=True)
    ).T
    for max_rank in (1, 3, 20):
        out = evaluate_trials(
            query_features, gallery_features, q_ids, g_ids, q_cams, g_cams, masks, protocol=protocol, max_rank=max_rank
        )
        for trial, mask in enumerate(masks):
            expected = reference_metrics(dist[:, mask], q_ids, g_ids[mask], q_cams, g_cams[mask], protocol, max_rank)
            assert_same_metrics(out["trials"][trial], expected)


def test_sysu_cam3_queries_against_a_cam2_only_gallery_are_skipped():
    dist = np.array([[0.3, 0.1], [0.3, 0.1], [0.4, 0.2]])
    out = rank_metrics(dist, [1, 2, 1], [1, 2], [3, 3, 6], [2, 2], protocol="sysu", max_rank=2)
    assert out["num_valid_queries"] == 1  # only the cam6 query: ranked 1, 2 -> first match at rank 2
    np.testing.assert_array_equal(out["cmc"], [0, 1])
    assert out["mAP"] == pytest.approx(1 / 2)


# --------------------------------------------------------------------------------------------
# Test-time flip averaging (evaluation.flip)
# --------------------------------------------------------------------------------------------


class _ColumnWeighted(torch.nn.Module):
    """A stand-in method whose feature is not mirror-symmetric: channel sums weighted by column."""

    def test_features(self, images, modality):
        width = images.shape[-1]
        weights = torch.linspace(1.0, 3.0, width, dtype=images.dtype)
        return torch.cat([(images * weights).sum(dim=(2, 3)), images.mean(dim=(2, 3)) + modality[:, None]], dim=1)


def test_flip_averaging_is_the_normalised_mean_of_both_normalised_views():
    from harness.trial import extract_features

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 8, 4), generator=generator, dtype=torch.uint8)
    modalities = np.array([0, 0, 1, 1, 1])
    kwargs = dict(device=torch.device("cpu"), batch_size=2, amp="none", channels_last=False)
    method = _ColumnWeighted()
    plain, _ = extract_features(method, images, modalities, **kwargs)
    flipped, _ = extract_features(method, images, modalities, flip=True, **kwargs)

    # testa.py, written out per image in float64: u = f(x)/|f(x)|, v = f(mirror x)/|f(mirror x)|, (u+v)/2 normalised
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(3, 1, 1)
    for i in range(len(images)):
        x = ((images[i].double() / 255 - mean) / std)[None]
        m = torch.tensor([int(modalities[i])])
        u = method.test_features(x, m)[0]
        v = method.test_features(x[..., torch.arange(x.shape[-1] - 1, -1, -1)], m)[0]
        assert torch.allclose(plain[i].double(), u, rtol=1e-5, atol=1e-5)
        u, v = u / u.norm(), v / v.norm()
        expected = (u + v) / 2
        expected = expected / expected.norm()
        assert torch.allclose(flipped[i].double(), expected, rtol=1e-5, atol=1e-6)
    # an image and its mirror get one feature; without the flip they differ
    mirrored, _ = extract_features(method, images.flip(-1), modalities, flip=True, **kwargs)
    assert torch.allclose(mirrored, flipped, atol=1e-6)
    assert not torch.allclose(plain / plain.norm(dim=1, keepdim=True), flipped, atol=1e-3)


def test_a_trial_with_evaluation_flip_ranks_with_flip_averaged_features(tiny_config):
    from harness.trial import run_trial

    plain = run_trial(tiny_config())
    flipped = run_trial(tiny_config(**{"evaluation.flip": True}))
    assert plain.status == flipped.status == "ok"
    # the same training (flip acts at test time only), another ranking
    weights = [r.trained.method.net.neck.classifier.weight for r in (plain, flipped)]
    assert torch.equal(*weights)
    assert plain.key != flipped.key
    assert [r["mAP"] for r in plain.records] != [r["mAP"] for r in flipped.records]
