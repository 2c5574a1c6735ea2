"""Qualitative figures: panel counts, frame colours from ground truth, histogram counts, files."""

import numpy as np
from matplotlib.colors import to_rgba

from harness.figures.qualitative import (
    MATCH_COLOUR,
    MISMATCH_COLOUR,
    distance_histogram_figure,
    embedding_figure,
    excluded_pairs,
    pair_distances,
    ranked_list_figure,
    top_k_gallery,
)


def test_ranked_list_frames_follow_ground_truth():
    rng = np.random.default_rng(0)
    q_ids = np.array([3, 5])
    g_ids = np.array([5, 3, 3, 7, 5, 1])
    dist = rng.random((2, 6))
    top = top_k_gallery(dist, np.zeros((2, 6), bool), 4)
    np.testing.assert_array_equal(top, np.argsort(dist, axis=1)[:, :4])
    matches = g_ids[top] == q_ids[:, None]
    images = rng.integers(0, 255, (2, 8, 4, 3), dtype=np.uint8)
    fig = ranked_list_figure(images, ["query id 3\ncam 3 infrared", "query id 5\ncam 6 infrared"],
                             rng.integers(0, 255, (2, 4, 8, 4, 3), dtype=np.uint8), matches)
    axes = fig.axes
    assert len(axes) == 2 * (1 + 4)
    for row in range(2):
        query_ax = axes[row * 5]
        assert "infrared" in query_ax.get_title() and "cam" in query_ax.get_title()
        for j in range(4):
            expected = MATCH_COLOUR if g_ids[top[row, j]] == q_ids[row] else MISMATCH_COLOUR
            assert axes[row * 5 + 1 + j].spines["top"].get_edgecolor() == to_rgba(expected)


def test_protocol_exclusions_in_ranked_lists():
    q_ids, g_ids = np.array([1, 1]), np.array([1, 1, 2])
    q_cams, g_cams = np.array([2, 5]), np.array([1, 0, 1])  # 0-based: SYSU cam3 and cam6 queries
    sysu = excluded_pairs("sysu", q_ids, g_ids, q_cams, g_cams)
    np.testing.assert_array_equal(sysu, [[True, False, True], [False, False, False]])  # cam3 never sees cam2
    llcm = excluded_pairs("llcm", q_ids, g_ids, np.array([1, 0]), g_cams)
    np.testing.assert_array_equal(llcm, [[True, False, False], [False, True, False]])  # same id and camera
    assert not excluded_pairs("regdb", q_ids, g_ids, q_cams, g_cams).any()
    top = top_k_gallery(np.array([[0.1, 0.2, 0.3]]), np.array([[True, False, False]]), 2)
    np.testing.assert_array_equal(top, [[1, 2]])


def test_distance_histograms_count_every_pair_once():
    rng = np.random.default_rng(1)
    ids = np.array([0, 0, 1, 1, 2, 0, 1, 2, 2])
    mods = np.array([0, 0, 0, 1, 1, 1, 1, 0, 1])
    feats = rng.normal(size=(len(ids), 5))
    distances = pair_distances(feats, ids, mods)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    for (a, b), (intra, inter) in distances.items():
        pairs = [(i, j) for i in range(len(ids)) for j in range(len(ids))
                 if mods[i] == a and mods[j] == b and (a != b or i < j)]
        expected_intra = sorted(np.linalg.norm(unit[i] - unit[j]) for i, j in pairs if ids[i] == ids[j])
        expected_inter = sorted(np.linalg.norm(unit[i] - unit[j]) for i, j in pairs if ids[i] != ids[j])
        np.testing.assert_allclose(sorted(intra), expected_intra, atol=1e-12)
        np.testing.assert_allclose(sorted(inter), expected_inter, atol=1e-12)
    fig = distance_histogram_figure(distances)
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["visible - visible", "infrared - infrared", "visible - infrared"]
    for ax, (intra, inter) in zip(fig.axes, distances.values()):
        heights = [patch.get_height() for patch in ax.patches]
        assert sum(heights) == len(intra) + len(inter)


def test_embedding_marks_modality_and_colours_identity():
    points = np.arange(12, dtype=float).reshape(6, 2)
    ids = np.array([4, 4, 9, 9, 4, 9])
    mods = np.array([0, 1, 0, 1, 0, 1])
    fig = embedding_figure(points, ids, mods)
    collections = fig.axes[0].collections
    assert [c.get_label() for c in collections] == ["visible", "infrared"]
    visible, _infrared = collections
    np.testing.assert_array_equal(visible.get_offsets(), points[mods == 0])
    colours = visible.get_facecolors()
    assert np.allclose(colours[0], colours[2]) and not np.allclose(colours[0], colours[1])  # ids 4, 9, 4


def test_show_writes_every_figure_as_png_and_pdf(tiny_config, tmp_path):
    from harness.cli import main
    from harness.data.registry import load_dataset
    from harness.saved_models import TrainedModel, save_model
    from methods import create_method

    cfg = tiny_config(method="agw")
    bundle = load_dataset(cfg.data, seed=0)
    method = create_method(cfg, bundle.num_classes, bundle.num_cameras)
    weights = save_model(tmp_path / "models", "m1", TrainedModel(method, cfg, bundle.num_classes,
                                                                  bundle.num_cameras, bundle.name))
    out = tmp_path / "figures"
    assert main(["show", str(weights), "--out", str(out), "--queries", "3", "--top-k", "5", "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"m1-synthetic-all-single-{kind}.{ext}" for kind in ("ranked", "tsne", "distances")
                           for ext in ("png", "pdf"))
    assert all((out / n).stat().st_size > 0 for n in names)
    assert main(["show", str(weights), "--out", str(out), "--protocol", "nope", "--quiet"]) == 2
