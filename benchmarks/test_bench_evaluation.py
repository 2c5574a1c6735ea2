"""Cost of ranking metrics at SYSU-MM01 multi-shot all-search scale.

Group "sysu-multishot-trial": one trial, 3,803 IR queries (cam3 / cam6) x 3,840 gallery images
(96 identities x cams 1, 2, 4, 5 x 10 images), 2048-d features. ``rank_metrics`` is compared
with its floor (the stable torch.sort of the same distance matrix that it has to do anyway)
and with a straightforward per-query NumPy loop.

Group "gallery-trials": the 10 gallery trials of a protocol, each 10 of the 20 images per
(identity, camera) of a 7,680-image union gallery: ``evaluate_trials`` (one distance matrix,
one sort) against 10 separate ``pairwise_distance`` + ``rank_metrics`` calls. Features are
512-d here so that the matrix products (10x bigger in total for the separate calls) do not
hide the cost of the ranking itself.

    .venv/bin/python -m pytest benchmarks/test_bench_evaluation.py --benchmark-only -q -p no:cacheprovider
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.evaluation import evaluate_trials, pairwise_distance, rank_metrics

NUM_QUERIES, NUM_IDS = 3803, 96
GALLERY_CAMERAS = (1, 2, 4, 5)
MULTI_SHOT_IMAGES, UNION_IMAGES = 10, 20
NUM_TRIALS = 10
# Feature noise relative to the identity centres: rank-1 around 0.6 and mAP around 0.2, so
# true matches are spread over the ranking as with a partly trained model.
NOISE = {2048: 5.0, 512: 3.5}

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")),
]


def synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def sysu_like_split(images_per_camera: int, dim: int, seed: int = 0) -> dict[str, np.ndarray | torch.Tensor]:
    rng = np.random.default_rng(seed)
    g_ids = np.repeat(np.arange(NUM_IDS), len(GALLERY_CAMERAS) * images_per_camera)
    g_cams = np.tile(np.repeat(GALLERY_CAMERAS, images_per_camera), NUM_IDS)
    q_ids = np.sort(rng.integers(0, NUM_IDS, NUM_QUERIES))
    q_cams = rng.choice([3, 6], NUM_QUERIES)
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(NUM_IDS, dim, generator=generator)
    query = centres[q_ids] + NOISE[dim] * torch.randn(NUM_QUERIES, dim, generator=generator)
    gallery = centres[g_ids] + NOISE[dim] * torch.randn(len(g_ids), dim, generator=generator)
    return dict(query=query, gallery=gallery, q_ids=q_ids, g_ids=g_ids, q_cams=q_cams, g_cams=g_cams)


@pytest.fixture(scope="module")
def multishot() -> dict[str, np.ndarray | torch.Tensor]:
    split = sysu_like_split(MULTI_SHOT_IMAGES, 2048)
    split["dist"] = pairwise_distance(split["query"], split["gallery"])
    return split


@pytest.fixture(scope="module")
def trial_union() -> dict[str, np.ndarray | torch.Tensor]:
    split = sysu_like_split(UNION_IMAGES, 512)
    rng = np.random.default_rng(1)
    picks = np.argsort(rng.random((NUM_TRIALS, NUM_IDS * len(GALLERY_CAMERAS), UNION_IMAGES)), axis=2)
    masks = np.zeros((NUM_TRIALS, NUM_IDS * len(GALLERY_CAMERAS), UNION_IMAGES), dtype=bool)
    np.put_along_axis(masks, picks[:, :, :MULTI_SHOT_IMAGES], True, axis=2)
    split["masks"] = masks.reshape(NUM_TRIALS, -1)
    return split


# --------------------------------------------------------------------------------------------
# per-query reference
# --------------------------------------------------------------------------------------------


def numpy_per_query_sysu(dist, q_ids, g_ids, q_cams, g_cams, max_rank=20):
    """The SYSU rules one query at a time, as evaluation scripts commonly write them."""
    cmc, aps, inps = np.zeros(max_rank), [], []
    for query in range(dist.shape[0]):
        order = np.argsort(dist[query], kind="stable")
        kept = ~((q_cams[query] == 3) & (g_cams[order] == 2))
        ranked_ids = g_ids[order][kept]
        matches = ranked_ids == q_ids[query]
        if not matches.any():
            continue
        _, first_seen = np.unique(ranked_ids, return_index=True)
        deduplicated = ranked_ids[np.sort(first_seen)]
        first = int(np.flatnonzero(deduplicated == q_ids[query])[0])
        cmc[first:] += 1  # empty when first >= max_rank
        hit_ranks = np.flatnonzero(matches) + 1
        aps.append(np.mean(np.arange(1, hit_ranks.size + 1) / hit_ranks))
        inps.append(hit_ranks.size / hit_ranks[-1])
    return {"cmc": cmc / len(aps), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}


# --------------------------------------------------------------------------------------------
# benchmarks
# --------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="sysu-multishot-trial")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", ["torch.sort floor", "rank_metrics", "numpy per-query loop"])
def test_sysu_multishot_trial(benchmark, multishot, implementation, device):
    if implementation == "numpy per-query loop" and device != "cpu":
        pytest.skip("the NumPy loop runs on the CPU only")
    dist = multishot["dist"].to(device)
    labels = [torch.as_tensor(multishot[key], device=device) for key in ("q_ids", "g_ids", "q_cams", "g_cams")]
    expected = rank_metrics(dist, *labels, protocol="sysu")

    if implementation == "torch.sort floor":

        def run():
            torch.sort(dist, dim=1, stable=True)
            synchronise(device)

        benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    elif implementation == "rank_metrics":
        result = benchmark.pedantic(lambda: rank_metrics(dist, *labels, protocol="sysu"), rounds=3, warmup_rounds=1)
        np.testing.assert_array_equal(result["cmc"], expected["cmc"])
    else:
        arrays = [multishot[key] for key in ("q_ids", "g_ids", "q_cams", "g_cams")]
        result = benchmark.pedantic(lambda: numpy_per_query_sysu(dist.numpy(), *arrays), rounds=1)
        np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-12)
        assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
        assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-9)
    benchmark.extra_info.update(
        {"rank1": float(expected["cmc"][0]), "mAP": expected["mAP"], "queries": NUM_QUERIES, "gallery": dist.shape[1]}
    )


@pytest.mark.benchmark(group="gallery-trials")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", ["evaluate_trials", "separate rank_metrics calls"])
def test_gallery_trials(benchmark, trial_union, implementation, device):
    query, gallery = trial_union["query"].to(device), trial_union["gallery"].to(device)
    q_ids, g_ids, q_cams, g_cams = (
        torch.as_tensor(trial_union[key], device=device) for key in ("q_ids", "g_ids", "q_cams", "g_cams")
    )
    masks = torch.as_tensor(trial_union["masks"], device=device)

    def shared_sort():
        return evaluate_trials(query, gallery, q_ids, g_ids, q_cams, g_cams, masks, protocol="sysu")["trials"]

    def separate_calls():
        return [
            rank_metrics(
                pairwise_distance(query, gallery[mask]), q_ids, g_ids[mask], q_cams, g_cams[mask], protocol="sysu"
            )
            for mask in masks
        ]

    run = shared_sort if implementation == "evaluate_trials" else separate_calls
    trials = benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    first = masks[0]
    reference = rank_metrics(
        pairwise_distance(query, gallery[first]), q_ids, g_ids[first], q_cams, g_cams[first], protocol="sysu"
    )
    assert trials[0]["mAP"] == pytest.approx(reference["mAP"], abs=1e-4)  # float32 rounding may swap near-ties
    benchmark.extra_info.update({"trials": NUM_TRIALS, "union_gallery": gallery.shape[0], "mAP": trials[0]["mAP"]})
