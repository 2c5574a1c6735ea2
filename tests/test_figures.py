"""Qualitative figures: panel counts, frame colours from ground truth, histogram counts, files."""

import re

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from harness.errors import HarnessError
from harness.figures.qualitative import (
    MATCH_COLOUR,
    MISMATCH_COLOUR,
    distance_histogram_figure,
    embedding_figure,
    excluded_pairs,
    pair_distances,
    ranked_list_figure,
    sample_identities,
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
        assert ax.get_ylabel() in ("density", "")
        bars = ax.patches
        half = len(bars) // 2  # inter-identity bars first, then intra-identity ones
        for part, values in ((bars[:half], inter), (bars[half:], intra)):
            if len(values):  # a density: bar areas sum to 1 whatever the pair count
                assert sum(b.get_height() * b.get_width() for b in part) == pytest.approx(1.0)
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == [f"inter-identity ({len(inter)} pairs)", f"intra-identity ({len(intra)} pairs)"]


def test_distance_densities_make_a_few_intra_pairs_as_tall_as_many_inter_pairs():
    """309 intra- vs 26,026 inter-identity pairs (the issue's numbers): both histograms reach
    comparable heights, which counts would not."""
    rng = np.random.default_rng(0)
    distances = {(0, 1): (rng.normal(0.6, 0.1, 309).clip(0, 2), rng.normal(1.2, 0.1, 26_026).clip(0, 2))}
    ax = distance_histogram_figure(distances).axes[0]
    half = len(ax.patches) // 2
    inter_peak = max(b.get_height() for b in ax.patches[:half])
    intra_peak = max(b.get_height() for b in ax.patches[half:])
    assert 0.5 < intra_peak / inter_peak < 2


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
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["id 4", "id 9", "visible", "infrared"]


def test_tsne_shows_a_seeded_sample_of_identities_each_in_its_own_colour():
    ids = np.repeat(np.arange(64), 5)  # 64 identities, 5 images each
    chosen = sample_identities(ids, 10, seed=3)
    assert len(np.unique(ids[chosen])) == 10 and len(chosen) == 50  # every image of each chosen identity
    np.testing.assert_array_equal(chosen, sample_identities(ids, 10, seed=3))  # seeded
    assert not np.array_equal(chosen, sample_identities(ids, 10, seed=4))
    assert len(sample_identities(np.arange(4), 10, seed=0)) == 4  # fewer identities: all of them
    points = np.random.default_rng(0).normal(size=(len(chosen), 2))
    fig = embedding_figure(points, ids[chosen], np.arange(len(chosen)) % 2)
    colours = np.concatenate([c.get_facecolors() for c in fig.axes[0].collections])
    by_id = {}
    order = np.concatenate([np.flatnonzero(np.arange(len(chosen)) % 2 == m) for m in (0, 1)])
    for pid, colour in zip(ids[chosen][order], colours):
        by_id.setdefault(pid, set()).add(tuple(np.round(colour, 6)))
    assert all(len(c) == 1 for c in by_id.values())  # one colour per identity
    assert len({next(iter(c)) for c in by_id.values()}) == 10  # and no two identities share one
    with pytest.raises(ValueError, match="at most 20"):
        embedding_figure(np.zeros((64, 2)), np.arange(64), np.zeros(64, int))
    with pytest.raises(HarnessError, match="--tsne-identities 30"):
        sample_identities(ids, 30, seed=0)


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
    for name in names:
        if name.endswith(".pdf"):
            assert_truetype_fonts(out / name)
    assert main(["show", str(weights), "--out", str(out), "--protocol", "nope", "--quiet"]) == 2


def pdf_font_subtypes(path) -> set[str]:
    """The /Subtype of every font dictionary of a PDF (matplotlib writes them uncompressed)."""
    data = path.read_bytes()
    fonts = re.findall(rb"/Type\s*/Font\b(.*?)>>", data, flags=re.S)
    return {m.decode() for f in fonts for m in re.findall(rb"/Subtype\s*/(\w+)", f)}


def assert_truetype_fonts(path) -> None:
    subtypes = pdf_font_subtypes(path)
    assert subtypes and "Type3" not in subtypes, (path.name, subtypes)
    assert subtypes & {"TrueType", "Type0", "CIDFontType2"}, (path.name, subtypes)


def test_every_figure_embeds_truetype_fonts_in_its_pdf(tmp_path):
    """Conference checkers refuse Type 3 fonts: a figure saved by the harness embeds Type 42 (TrueType),
    even when matplotlib's default (Type 3) was in force before."""
    import matplotlib

    from harness.results.plots import save_figure

    matplotlib.rcParams["pdf.fonttype"] = 3
    fig = distance_histogram_figure({(0, 1): (np.array([0.5, 0.6]), np.array([1.0, 1.2, 1.4]))})
    [_, pdf] = save_figure(fig, tmp_path / "d.png")
    assert_truetype_fonts(pdf)
