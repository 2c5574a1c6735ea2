"""Batched ranking internals: input checks, label views, query groups, ranked blocks, per-trial aggregation.

The public entry points and the protocol rules are documented in `harness.evaluation`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.registry import get_dataset
from harness.errors import InputError, TrialFailure, check_int

PROTOCOLS = ("sysu", "regdb", "llcm")


@functools.cache
def _sysu_cameras() -> tuple[tuple[int, ...], dict[int, tuple[int, ...]]]:
    """SYSU-MM01's camera numbers and its same-scene exclusions, as its dataset description states them."""
    sysu = get_dataset("sysu")
    return sysu.cameras, sysu.shared_scene_cameras()


# Elements of the (queries x gallery) block ranked at once: big enough that per-operation
# overhead vanishes, small enough to bound memory (about 28 bytes per element are live).
_CPU_BLOCK_ELEMENTS = 1 << 22
_GPU_BLOCK_ELEMENTS = 1 << 26

# De-duplicated CMC first looks at this many leading ranks (at least 4 * max_rank): nearly every
# query either matches within it or already sees max_rank other identities there.
_DEDUP_FIRST_WINDOW = 64

ArrayLike = Any  # np.ndarray | torch.Tensor | Sequence[int]



def _check_protocol(protocol: str, max_rank: int, where: str) -> None:
    if protocol not in PROTOCOLS:
        raise InputError(f"{where}: unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    check_int(max_rank, f"{where}: max_rank", minimum=1)


def _as_tensor(value: ArrayLike, name: str, device: torch.device | None, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        array = np.asarray(value)
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise InputError(f"{where}: {name} must be a numeric array, got dtype {array.dtype}")
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.ascontiguousarray(array).copy()
        tensor = torch.from_numpy(array)
    return tensor if device is None else tensor.to(device)


def _integer_vector(
    value: ArrayLike, name: str, length: int, length_of: str, device: torch.device, where: str
) -> torch.Tensor:
    tensor = _as_tensor(value, name, device, where)
    if tensor.ndim != 1:
        raise InputError(f"{where}: {name} must be 1-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise InputError(f"{where}: {name} must hold integers, got dtype {tensor.dtype}")
    if tensor.shape[0] != length:
        raise InputError(f"{where}: {name} has {tensor.shape[0]} entries but {length_of} has {length}")
    return tensor.to(torch.int64)


SIMILARITIES = ("cosine", "dot")
"""How two features are compared: cosine (each L2-normalised first) or their plain dot product
(a method's feature made of parts it normalised itself: methods.base.ReIDMethod.test_similarity)."""


def _features_pair(
    query_features: ArrayLike, gallery_features: ArrayLike, where: str, similarity: str = "cosine"
) -> tuple[torch.Tensor, torch.Tensor]:
    if similarity not in SIMILARITIES:
        raise InputError(f"{where}: similarity must be one of {', '.join(SIMILARITIES)}; got {similarity!r}")
    query = _as_tensor(query_features, "query_features", None, where)
    gallery = _as_tensor(gallery_features, "gallery_features", query.device, where)
    for name, features in (("query_features", query), ("gallery_features", gallery)):
        if features.ndim != 2:
            raise InputError(f"{where}: {name} must be 2-D (samples x dim), got shape {tuple(features.shape)}")
        if features.shape[0] == 0:
            raise InputError(f"{where}: {name} is empty")
        if not torch.isfinite(features).all():
            raise TrialFailure(f"{where}: {name} contains NaN or inf")
    if query.shape[1] != gallery.shape[1]:
        raise InputError(
            f"{where}: query_features have dim {query.shape[1]} but gallery_features have dim {gallery.shape[1]}"
        )
    dtype = torch.float64 if torch.float64 in (query.dtype, gallery.dtype) else torch.float32
    if similarity == "dot":
        return query.to(dtype), gallery.to(dtype)
    return F.normalize(query.to(dtype), dim=1), F.normalize(gallery.to(dtype), dim=1)


def _trial_masks(trial_masks: ArrayLike, num_gallery: int, device: torch.device, where: str) -> torch.Tensor:
    masks = _as_tensor(trial_masks, "trial_masks", device, where)
    if masks.dtype != torch.bool:
        raise InputError(f"{where}: trial_masks must be a bool array, got dtype {masks.dtype}")
    if masks.ndim != 2 or masks.shape[0] == 0 or masks.shape[1] != num_gallery:
        raise InputError(
            f"{where}: trial_masks must have shape (trials >= 1, {num_gallery} gallery entries), "
            f"got {tuple(masks.shape)}"
        )
    empty = (~masks.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise InputError(f"{where}: trial_masks selects no gallery entry for trial(s) {empty}")
    return masks


@dataclass(frozen=True)
class _Labels:
    """Identities as compact int32 codes 0..num_ids-1 (shared by queries and gallery), cameras."""

    q_code: torch.Tensor
    g_code: torch.Tensor
    q_cam: torch.Tensor
    g_cam: torch.Tensor
    num_ids: int

    @staticmethod
    def build(
        q_ids: ArrayLike,
        g_ids: ArrayLike,
        q_cams: ArrayLike,
        g_cams: ArrayLike,
        num_queries: int,
        num_gallery: int,
        protocol: str,
        device: torch.device,
        where: str,
    ) -> _Labels:
        if num_queries == 0 or num_gallery == 0:
            raise InputError(
                f"{where}: needs at least one query and one gallery entry, got {num_queries} x {num_gallery}"
            )
        q_id = _integer_vector(q_ids, "q_ids", num_queries, "the query set", device, where)
        g_id = _integer_vector(g_ids, "g_ids", num_gallery, "the gallery", device, where)
        q_cam = _integer_vector(q_cams, "q_cams", num_queries, "the query set", device, where)
        g_cam = _integer_vector(g_cams, "g_cams", num_gallery, "the gallery", device, where)
        if protocol == "sysu":
            cameras = _sysu_cameras()[0]
            allowed = torch.tensor(cameras, device=device)
            for name, cams in (("q_cams", q_cam), ("g_cams", g_cam)):
                bad = cams[~torch.isin(cams, allowed)]
                if bad.numel():
                    raise InputError(
                        f"{where}: {name} must be SYSU camera numbers {cameras[0]}..{cameras[-1]} for protocol 'sysu' "
                        f"(0-based cameras + 1), found {sorted(set(bad.unique().tolist()))[:5]}"
                    )
        unique_ids, codes = torch.unique(torch.cat([q_id, g_id]), return_inverse=True)
        codes = codes.to(torch.int32)
        return _Labels(codes[:num_queries], codes[num_queries:], q_cam, g_cam, int(unique_ids.numel()))


@dataclass(frozen=True)
class _GalleryView:
    """The gallery columns one group of queries is ranked against (all, or SYSU minus cam2).

    ``members[c]`` lists the view columns of identity code c, padded with ``size`` (a spare
    column), so a query's true matches are found without scanning its ranked list. Queries are
    ranked ``rows_per_block`` at a time.
    """

    columns: torch.Tensor | None  # indices into the full gallery; None = the whole gallery
    code: torch.Tensor  # int32 (size,)
    cam: torch.Tensor  # int64 (size + 1,): the spare column's camera is -1
    members: torch.Tensor  # int64 (num_ids, max identity count)
    size: int
    rows_per_block: int

    @staticmethod
    def build(labels: _Labels, columns: torch.Tensor | None, num_rows: int) -> _GalleryView:
        code = labels.g_code if columns is None else labels.g_code[columns]
        cam = labels.g_cam if columns is None else labels.g_cam[columns]
        size = int(code.numel())
        device = code.device
        code64 = code.to(torch.int64)
        per_identity = torch.bincount(code64, minlength=labels.num_ids)
        by_identity = torch.argsort(code64, stable=True)
        sorted_code = code64[by_identity]
        first_of_identity = torch.cumsum(per_identity, 0) - per_identity
        slot = torch.arange(size, device=device) - first_of_identity[sorted_code]
        width = max(1, int(per_identity.max())) if size else 1
        members = torch.full((labels.num_ids, width), size, dtype=torch.int64, device=device)
        members[sorted_code, slot] = by_identity
        spare_cam = torch.full((1,), -1, dtype=cam.dtype, device=device)
        budget = _GPU_BLOCK_ELEMENTS if device.type == "cuda" else _CPU_BLOCK_ELEMENTS
        rows_per_block = max(1, min(num_rows, budget // max(1, size)))
        return _GalleryView(columns, code, torch.cat([cam, spare_cam]), members, size, rows_per_block)


# --------------------------------------------------------------------------------------------
# Blocking
# --------------------------------------------------------------------------------------------


def _query_groups(labels: _Labels, protocol: str) -> list[tuple[torch.Tensor, _GalleryView]]:
    """(query rows, the gallery view they are ranked against) pairs.

    The SYSU exclusion (cam3 queries never see cam2, the visible camera of their room) does not
    depend on identity, so it is applied by ranking those queries against the gallery without the
    excluded columns; the other queries are ranked against the whole gallery.
    """
    device = labels.q_cam.device
    all_rows = torch.arange(labels.q_cam.shape[0], device=device)
    groups: list[tuple[torch.Tensor, _GalleryView]] = []
    rest = torch.ones_like(all_rows, dtype=torch.bool)
    if protocol == "sysu":
        for query_cam, excluded in _sysu_cameras()[1].items():  # one entry per shared scene, not per query
            from_cam = labels.q_cam == query_cam
            keep = ~torch.isin(labels.g_cam, torch.tensor(excluded, device=device))
            if bool(from_cam.any()) and not bool(keep.all()):
                rows = all_rows[from_cam]
                groups.append((rows, _GalleryView.build(labels, keep.nonzero().flatten(), rows.numel())))
                rest &= ~from_cam
    if bool(rest.any()) or not groups:
        rows = all_rows[rest]
        groups.append((rows, _GalleryView.build(labels, None, rows.numel())))
    return groups


def _take_block(dist: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
    if columns is not None:
        return dist.index_select(0, rows).index_select(1, columns)
    first = int(rows[0])
    if int(rows[-1]) - first + 1 == rows.numel():
        return dist[first : first + rows.numel()]  # contiguous rows: a view, no copy
    return dist.index_select(0, rows)


# --------------------------------------------------------------------------------------------
# Core: metrics of a ranked index matrix
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RankedMetrics:
    ap: torch.Tensor  # float64 (B,)
    inp: torch.Tensor  # float64 (B,)
    cmc_rank: torch.Tensor  # int64 (B,), 1-based; beyond the list length when invalid
    valid: torch.Tensor  # bool (B,)


class _RankedBlock:
    """A block of queries ranked against a gallery view: ``order`` (B, L) holds view columns
    sorted by ascending distance.

    Only the true matches of each query are visited: their positions in the ranking come from
    the inverse permutation of ``order``. Everything here is shared by all the gallery subsets
    (trials) evaluated on this ranking; ``metrics(keep)`` applies one subset.
    """

    def __init__(self, order: torch.Tensor, rows: torch.Tensor, labels: _Labels, view: _GalleryView) -> None:
        self.order, self.labels, self.view = order, labels, view
        num_rows, length = order.shape
        self.q_code = labels.q_code.index_select(0, rows)
        self.q_cam = labels.q_cam.index_select(0, rows)
        # positions[b, c] = where view column c sits in row b's ranking; the spare column
        # `length` (padding of the member table) sits past every real position.
        positions = torch.empty(num_rows, length + 1, dtype=torch.int32, device=order.device)
        ramp = torch.arange(length, dtype=torch.int32, device=order.device).expand(num_rows, length)
        positions[:, :length].scatter_(1, order, ramp)
        positions[:, length] = length
        candidates = view.members.index_select(0, self.q_code.to(torch.int64))  # (B, M)
        candidate_pos, by_position = positions.gather(1, candidates).sort(dim=1)
        self.candidates = candidates.gather(1, by_position)  # the query's identity, in rank order
        self.candidate_pos = candidate_pos.to(torch.int64)  # 0-based positions; `length` = none

    def metrics(self, keep: torch.Tensor | None, protocol: str, max_rank: int) -> _RankedMetrics:
        """Per-query metrics of the ranking restricted to the view columns where ``keep`` is
        True (None = all): the restricted ranking keeps the relative order, so a kept entry's
        rank is the number of kept entries up to its position."""
        order, view, candidates, candidate_pos = self.order, self.view, self.candidates, self.candidate_pos
        num_rows, length = order.shape
        device = order.device
        if length == 0 or (keep is not None and not bool(keep.any())):
            none = torch.zeros(num_rows, dtype=torch.float64, device=device)
            return _RankedMetrics(none, none, torch.ones(num_rows, dtype=torch.int64, device=device), none.bool())

        is_hit = candidate_pos < length
        if keep is None:
            hit_rank = candidate_pos + 1
        else:
            is_hit &= torch.cat([keep, keep.new_zeros(1)])[candidates]
            kept_flags = keep.to(torch.int32).expand(num_rows, length)
            kept_up_to = torch.gather(kept_flags, 1, order).cumsum_(dim=1)
            hit_rank = kept_up_to.gather(1, candidate_pos.clamp(max=length - 1)).to(torch.int64)

        if protocol == "llcm":
            # Excluded entries (same identity and camera) are all true matches: drop them and
            # lower the rank of every later hit by the number dropped before it.
            excluded = is_hit & (view.cam[candidates] == self.q_cam[:, None])
            hit_rank = hit_rank - excluded.cumsum(dim=1)
            is_hit &= ~excluded

        hit_number = is_hit.cumsum(dim=1)
        num_hits = hit_number[:, -1]
        valid = num_hits > 0
        hits = num_hits.clamp(min=1).to(torch.float64)
        precision = hit_number.to(torch.float64) / hit_rank.clamp(min=1).to(torch.float64)
        ap = torch.where(is_hit, precision, torch.zeros_like(precision)).sum(dim=1) / hits
        last_rank = torch.where(is_hit, hit_rank, torch.zeros_like(hit_rank)).amax(dim=1).clamp(min=1)
        inp = torch.where(valid, hits / last_rank.to(torch.float64), torch.zeros_like(hits))
        first_rank = torch.where(is_hit, hit_rank, torch.full_like(hit_rank, length + 1)).amin(dim=1)
        if protocol == "regdb":
            return _RankedMetrics(ap, inp, first_rank, valid)

        cmc_rank = torch.full((num_rows,), length + 1, dtype=torch.int64, device=device)
        valid_rows = valid.nonzero().flatten()
        if valid_rows.numel():
            first_pos = torch.where(is_hit, candidate_pos, torch.full_like(candidate_pos, length)).amin(dim=1)
            cmc_rank[valid_rows] = 1 + _other_identities_before(
                order, valid_rows, first_pos[valid_rows], self.q_code[valid_rows], keep, view, max_rank
            )
        return _RankedMetrics(ap, inp, cmc_rank, valid)


def _other_identities_before(
    order: torch.Tensor,
    rows: torch.Tensor,
    first_pos: torch.Tensor,
    q_code: torch.Tensor,
    keep: torch.Tensor | None,
    view: _GalleryView,
    max_rank: int,
) -> torch.Tensor:
    """Distinct identities other than the query's among the kept entries ranked before
    ``first_pos`` (the first true match), for ``order[rows]``.

    Exact below ``max_rank``; any count >= max_rank already puts the de-duplicated rank past
    the CMC curve. A leading window of the ranking decides almost every row (its first match
    lies inside, or max_rank other identities precede the window's end); the other rows are
    counted again up to their first match.
    """
    length = order.shape[1]
    window = max(_DEDUP_FIRST_WINDOW, 4 * max_rank)
    if keep is not None:  # the window is counted in ranks of the restricted gallery
        window = window * length // max(1, int(keep.sum()))
    window = min(length, window)
    counts = _distinct_in_prefix(order[rows, :window], first_pos, q_code, keep, view)
    undecided = ((first_pos > window) & (counts < max_rank)).nonzero().flatten()
    if undecided.numel():
        width = int(first_pos[undecided].max())
        counts[undecided] = _distinct_in_prefix(
            order[rows[undecided], :width], first_pos[undecided], q_code[undecided], keep, view
        )
    return counts


def _distinct_in_prefix(
    prefix: torch.Tensor,
    limit_pos: torch.Tensor,
    q_code: torch.Tensor,
    keep: torch.Tensor | None,
    view: _GalleryView,
) -> torch.Tensor:
    """Per row, distinct identity codes other than q_code among kept columns < limit_pos."""
    codes = view.code[prefix]
    positions = torch.arange(prefix.shape[1], device=prefix.device)
    ignored = (positions[None, :] >= limit_pos[:, None]) | (codes == q_code[:, None])
    if keep is not None:
        ignored |= ~keep[prefix]
    num_ids = view.members.shape[0]
    codes = codes.to(torch.int64).masked_fill_(ignored, num_ids)  # num_ids: a spare slot
    seen = torch.zeros(prefix.shape[0], num_ids + 1, dtype=torch.bool, device=prefix.device)
    seen.scatter_(1, codes, True)
    return seen[:, :num_ids].sum(dim=1)


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


class _QueryResults:
    """Per-query metrics of one ranking, filled block by block, then averaged."""

    def __init__(self, num_queries: int, device: torch.device) -> None:
        self.ap = torch.zeros(num_queries, dtype=torch.float64, device=device)
        self.inp = torch.zeros(num_queries, dtype=torch.float64, device=device)
        self.cmc_rank = torch.zeros(num_queries, dtype=torch.int64, device=device)
        self.valid = torch.zeros(num_queries, dtype=torch.bool, device=device)

    def store(self, rows: torch.Tensor, metrics: _RankedMetrics) -> None:
        self.ap[rows] = metrics.ap
        self.inp[rows] = metrics.inp
        self.cmc_rank[rows] = metrics.cmc_rank
        self.valid[rows] = metrics.valid

    def summary(self, max_rank: int, where: str) -> dict[str, Any]:
        num_valid = int(self.valid.sum())
        if num_valid == 0:
            raise TrialFailure(
                f"{where}: no query has a true match in the gallery (after the camera exclusion "
                f"of its protocol); check that query and gallery identities overlap"
            )
        ranks = self.cmc_rank[self.valid].clamp(max=max_rank + 1) - 1
        curve = torch.bincount(ranks, minlength=max_rank + 1)[:max_rank].cumsum(0)
        return {
            "cmc": curve.cpu().numpy().astype(np.float64) / num_valid,
            "mAP": float(self.ap[self.valid].mean()),
            "mINP": float(self.inp[self.valid].mean()),
            "num_valid_queries": num_valid,
        }


def _aggregate_trials(trials: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ddof = 1 if len(trials) > 1 else 0
    cmc = np.stack([trial["cmc"] for trial in trials])
    summary: dict[str, Any] = {
        "trials": list(trials),
        "cmc_mean": cmc.mean(axis=0),
        "cmc_std": cmc.std(axis=0, ddof=ddof) if ddof else np.zeros_like(cmc[0]),
    }
    for key in ("mAP", "mINP"):
        values = np.array([trial[key] for trial in trials], dtype=np.float64)
        summary[f"{key}_mean"] = float(values.mean())
        summary[f"{key}_std"] = float(values.std(ddof=ddof)) if ddof else 0.0
    return summary
