"""Qualitative figures of a saved model on one test protocol (`vireid show`).

- ranked lists: each query with its top-k gallery images, true matches framed green, false red,
  the query's identity, camera and modality labelled;
- a 2-D t-SNE embedding (scikit-learn) of the test features of a seeded sample of at most
  `TSNE_IDENTITIES` identities (every image of each), one colour per identity, the modality as marker;
- histograms of intra- and inter-identity distances per modality pair (visible-visible,
  infrared-infrared, visible-infrared), as densities: intra-identity pairs are a few hundredths
  of all pairs, and counts would hide them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.data.registry import get_dataset
from harness.data.splits import MODALITY_INFRARED, MODALITY_VISIBLE, ImageSplit
from harness.errors import InputError
from harness.figures import pyplot
from harness.results.plots import save_figure

MATCH_COLOUR = "#2ca02c"
MISMATCH_COLOUR = "#d62728"
MODALITY_NAMES = {MODALITY_VISIBLE: "visible", MODALITY_INFRARED: "infrared"}
MODALITY_MARKERS = {MODALITY_VISIBLE: "o", MODALITY_INFRARED: "^"}
MODALITY_PAIRS = ((MODALITY_VISIBLE, MODALITY_VISIBLE), (MODALITY_INFRARED, MODALITY_INFRARED),
                  (MODALITY_VISIBLE, MODALITY_INFRARED))
TSNE_IDENTITIES = 10
"""Identities the t-SNE shows by default: as many as a qualitative palette tells apart (tab10)."""
MAX_TSNE_IDENTITIES = 20
"""Most identities one figure can show with distinct colours (tab20)."""


def excluded_pairs(metric_protocol: str, q_ids: np.ndarray, g_ids: np.ndarray, q_cams: np.ndarray,
                   g_cams: np.ndarray) -> np.ndarray:
    """(Q, G) gallery entries a protocol removes from a query's ranking (cameras 0-based).

    SYSU-MM01: a query from cam3 never sees cam2 (one room, as SYSU's sensors state it); LLCM: the
    query's own identity in the query's own camera; RegDB: nothing.
    """
    if metric_protocol == "sysu":
        excluded = np.zeros((len(q_ids), len(g_ids)), dtype=bool)
        for query_cam, gallery_cams in get_dataset("sysu").shared_scene_cameras().items():  # one per shared scene
            excluded |= (q_cams[:, None] == query_cam - 1) & np.isin(g_cams, np.array(gallery_cams) - 1)[None, :]
        return excluded
    if metric_protocol == "llcm":
        return (q_ids[:, None] == g_ids[None, :]) & (q_cams[:, None] == g_cams[None, :])
    return np.zeros((len(q_ids), len(g_ids)), dtype=bool)


def top_k_gallery(dist: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) gallery indices ranked first (stable on ties), excluded entries skipped."""
    ranked = np.argsort(np.where(excluded, np.inf, dist), axis=1, kind="stable")
    return ranked[:, :k]


def ranked_list_figure(query_images: np.ndarray, query_labels: Sequence[str], gallery_images: np.ndarray,
                       matches: np.ndarray, gallery_labels: Sequence[Sequence[str]] | None = None) -> Any:
    """One row per query: the query (framed black) then its top-k gallery images (green/red).

    query_images (Q, H, W, 3) uint8, gallery_images (Q, k, H, W, 3), matches (Q, k) bool.
    """
    plt = pyplot()
    num_queries, k = matches.shape
    fig, axes = plt.subplots(num_queries, k + 1, figsize=(1.1 * (k + 1), 2.3 * num_queries), squeeze=False)
    for row in range(num_queries):
        panels = [(query_images[row], "black", query_labels[row])]
        panels += [(gallery_images[row, j], MATCH_COLOUR if matches[row, j] else MISMATCH_COLOUR,
                    gallery_labels[row][j] if gallery_labels else f"{j + 1}") for j in range(k)]
        for ax, (image, colour, label) in zip(axes[row], panels):
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            ax.set_title(label, fontsize=6)
    fig.tight_layout()
    return fig


def tsne_embedding(features: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of L2-normalised features; perplexity capped for small sets."""
    from sklearn.manifold import TSNE

    feats = features / np.linalg.norm(features, axis=1, keepdims=True).clip(min=1e-12)
    perplexity = float(min(30.0, max(2.0, (len(feats) - 1) / 3)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(feats)


def sample_identities(ids: np.ndarray, count: int, *, seed: int) -> np.ndarray:
    """Indices of every image of `count` identities drawn without replacement (seeded; all of them when
    there are fewer), in their original order."""
    if not 1 <= count <= MAX_TSNE_IDENTITIES:
        raise InputError(f"--tsne-identities {count}: expected 1 to {MAX_TSNE_IDENTITIES} (one colour each)")
    unique = np.unique(ids)
    chosen = np.random.default_rng(seed).choice(unique, size=min(count, len(unique)), replace=False)
    return np.flatnonzero(np.isin(ids, chosen))


def embedding_figure(points: np.ndarray, ids: np.ndarray, modalities: np.ndarray, *, title: str = "") -> Any:
    """Scatter of 2-D points: one distinct colour per identity (at most MAX_TSNE_IDENTITIES, named in
    the legend), marker = modality."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    unique, codes = np.unique(ids, return_inverse=True)
    if len(unique) > MAX_TSNE_IDENTITIES:
        raise ValueError(f"{len(unique)} identities: at most {MAX_TSNE_IDENTITIES} have distinct colours; "
                         "draw a sample (sample_identities)")
    palette = plt.get_cmap("tab10" if len(unique) <= 10 else "tab20")
    colours = palette(codes)
    fig, ax = plt.subplots(figsize=(6.8, 6), layout="constrained")
    for modality, name in MODALITY_NAMES.items():
        sel = modalities == modality
        if sel.any():
            ax.scatter(points[sel, 0], points[sel, 1], c=colours[sel], marker=MODALITY_MARKERS[modality], s=22,
                       edgecolors="none", label=name)
    handles = [Line2D([], [], linestyle="", marker="s", color=palette(i), label=f"id {pid}")
               for i, pid in enumerate(unique)]
    handles += [Line2D([], [], linestyle="", marker=MODALITY_MARKERS[m], color="black", label=name)
                for m, name in MODALITY_NAMES.items() if (modalities == m).any()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of test features (colour: identity)")
    return fig


def pair_distances(features: np.ndarray, ids: np.ndarray, modalities: np.ndarray
                   ) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Per modality pair: (intra-identity, inter-identity) Euclidean distances of L2-normalised
    features, each unordered pair once (no image with itself)."""
    feats = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float64), dim=1)
    dist = torch.cdist(feats, feats).numpy()
    same_id = ids[:, None] == ids[None, :]
    out = {}
    for a, b in MODALITY_PAIRS:
        pair = (modalities[:, None] == a) & (modalities[None, :] == b)
        if a == b:
            pair &= np.triu(np.ones_like(pair), k=1)
        out[(a, b)] = (dist[pair & same_id], dist[pair & ~same_id])
    return out


def distance_histogram_figure(distances: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
                              bins: int = 40) -> Any:
    """One panel per modality pair: intra- vs inter-identity distance histograms as densities (each
    integrates to 1; the pair counts are in the legend)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(distances), figsize=(4 * len(distances), 3.2), squeeze=False)
    edges = np.linspace(0.0, 2.0, bins + 1)  # unit vectors are at most 2 apart
    for ax, ((a, b), (intra, inter)) in zip(axes[0], distances.items()):
        ax.hist(inter, bins=edges, density=len(inter) > 0, alpha=0.6, color="#7f7f7f",
                label=f"inter-identity ({len(inter):,} pairs)")
        ax.hist(intra, bins=edges, density=len(intra) > 0, alpha=0.6, color="#1f77b4",
                label=f"intra-identity ({len(intra):,} pairs)")
        ax.set_title(f"{MODALITY_NAMES[a]} - {MODALITY_NAMES[b]}", fontsize=9)
        ax.set_xlabel("distance (L2-normalised features)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("density")
    fig.tight_layout()
    return fig


def _label(split: ImageSplit, index: int, prefix: str = "") -> str:
    modality = MODALITY_NAMES[int(split.modalities[index])]
    return f"{prefix}id {split.pids[index]}\ncam {split.cams[index] + 1} {modality}"


def show_saved_model(model: str | Path, *, overrides: dict[str, Any] | None = None, out: str | Path,
                     protocol: str | None = None, queries: int = 6, top_k: int = 10, trial: int = 0,
                     max_points: int = 2000, tsne_identities: int = TSNE_IDENTITIES,
                     quiet: bool = False) -> list[Path]:
    """Ranked lists, t-SNE (of `tsne_identities` identities, seeded by the model's seed) and distance
    histograms (of at most `max_points` images) of a saved model on one protocol's trial."""
    from harness.data.cache_root import cache_root
    from harness.data.images import load_images
    from harness.evaluation import pairwise_distance
    from harness.model_tools import prepare_saved_model
    from harness.reranking import original_distance, rerank_distance
    from harness.trial import extract_features

    saved, cfg, method, device, bundle = prepare_saved_model(model, overrides)
    name = protocol or next(iter(bundle.protocols))
    if name not in bundle.protocols:
        raise InputError(f"--protocol {name!r}: not a protocol of {bundle.name}; "
                         f"accepted: {', '.join(bundle.protocols)}")
    p = bundle.protocols[name]
    if not 0 <= trial < p.trial_masks.shape[0]:
        raise InputError(f"--trial {trial}: {name} has gallery trials 0..{p.trial_masks.shape[0] - 1}")
    if queries < 1 or top_k < 1:
        raise InputError(f"--queries and --top-k must be >= 1, got {queries} and {top_k}")
    sample_identities(np.zeros(1), tsne_identities, seed=0)  # refuses a bad count before any work
    query_rows = np.flatnonzero(p.query_masks[trial]) if p.query_masks is not None else np.arange(len(p.query))
    gallery_rows = np.flatnonzero(p.trial_masks[trial])
    q_paths = [p.query.paths[i] for i in query_rows]
    g_paths = [p.gallery.paths[i] for i in gallery_rows]
    images = load_images(q_paths + g_paths, cfg.data.height, cfg.data.width, cache_dir=cache_root(cfg.data) / "images",
                         resample=cfg.data.test_resize)
    modalities = np.concatenate([p.query.modalities[query_rows], p.gallery.modalities[gallery_rows]])
    feats, _ = extract_features(method, images, modalities, device=device, batch_size=cfg.train.eval_batch_size,
                                amp=cfg.train.amp, channels_last=cfg.train.channels_last,
                                flip=cfg.evaluation.flip, similarity=method.test_similarity)
    feats = feats.cpu().double()
    q_feats, g_feats = feats[:len(q_paths)], feats[len(q_paths):]
    rerank = cfg.evaluation.rerank
    if rerank.enabled:
        dist = rerank_distance(original_distance(q_feats, g_feats, similarity=method.test_similarity), len(q_paths),
                               k1=rerank.k1, k2=rerank.k2, lambda_value=rerank.lambda_value).numpy()
    else:
        dist = pairwise_distance(q_feats, g_feats, similarity=method.test_similarity).numpy()
    q_ids, g_ids = p.query.pids[query_rows], p.gallery.pids[gallery_rows]
    q_cams, g_cams = p.query.cams[query_rows], p.gallery.cams[gallery_rows]
    shown = np.unique(np.linspace(0, len(q_paths) - 1, min(queries, len(q_paths))).round().astype(int))
    k = min(top_k, len(g_paths))
    top = top_k_gallery(dist[shown], excluded_pairs(p.metric_protocol, q_ids[shown], g_ids, q_cams[shown], g_cams), k)
    hwc = images.permute(0, 2, 3, 1).numpy()
    q_images, g_images = hwc[:len(q_paths)], hwc[len(q_paths):]
    out = Path(out)
    stem = f"{saved.key}-{bundle.name}-{name}" + ("-rerank" if rerank.enabled else "")
    written = save_figure(ranked_list_figure(
        q_images[shown], [_label(p.query, query_rows[i], "query ") for i in shown], g_images[top],
        g_ids[top] == q_ids[shown][:, None],
        [[_label(p.gallery, gallery_rows[j]) for j in row] for row in top]), out / f"{stem}-ranked.png")

    all_ids = np.concatenate([q_ids, g_ids])
    shown_ids = sample_identities(all_ids, tsne_identities, seed=cfg.seed)
    points = tsne_embedding(feats[shown_ids].numpy(), seed=cfg.seed)
    count = len(np.unique(all_ids[shown_ids]))
    written += save_figure(embedding_figure(points, all_ids[shown_ids], modalities[shown_ids],
                                            title=f"t-SNE: {bundle.name} {name}, {count} of "
                                                  f"{len(np.unique(all_ids))} identities (seeded sample)"),
                           out / f"{stem}-tsne.png")
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(len(feats), size=min(max_points, len(feats)), replace=False))
    written += save_figure(distance_histogram_figure(pair_distances(feats[sample].numpy(), all_ids[sample],
                                                                    modalities[sample])),
                           out / f"{stem}-distances.png")
    return written
