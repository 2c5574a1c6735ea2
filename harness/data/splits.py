"""The plain data every dataset loader returns, and the seeded gallery draws shared by them.

A loader turns an on-disk layout into a :class:`DatasetBundle`: one relabelled training split and
one :class:`EvalProtocol` per test setting. A protocol stores the union of the gallery images of
all its trials once, plus a boolean mask per trial, so query features are extracted once and each
gallery image once however many trials draw it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from harness.errors import InputError, check_int

MODALITY_VISIBLE = 0
MODALITY_INFRARED = 1

METRIC_PROTOCOLS = ("sysu", "regdb", "llcm")


@dataclass(frozen=True)
class Sensor:
    """One camera recording one modality, as a dataset description states it.

    `number` is the on-disk camera number (SYSU camN, LLCM camK, RegDB 1 = Visible, 2 = Thermal);
    cameras that share a `scene` share background and viewpoint in the synthetic generator.
    """

    number: int
    infrared: bool
    scene: int

    @property
    def modality(self) -> int:
        return MODALITY_INFRARED if self.infrared else MODALITY_VISIBLE




def _as_int64_vector(values: object, field: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"ImageSplit.{field}: expected a 1-D array, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"ImageSplit.{field}: expected integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


@dataclass(frozen=True)
class ImageSplit:
    """A list of images with labels, as parallel arrays (one entry per image)."""

    paths: tuple[str, ...]
    pids: np.ndarray
    cams: np.ndarray
    modalities: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        for field in ("pids", "cams", "modalities"):
            object.__setattr__(self, field, _as_int64_vector(getattr(self, field), field))
        lengths = {len(self.paths), len(self.pids), len(self.cams), len(self.modalities)}
        if len(lengths) != 1:
            raise InputError(
                "ImageSplit: paths, pids, cams and modalities must have the same length, got "
                f"{len(self.paths)}, {len(self.pids)}, {len(self.cams)}, {len(self.modalities)}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def empty(cls) -> ImageSplit:
        return cls((), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def from_records(cls, records: Sequence[tuple[str, int, int, int]]) -> ImageSplit:
        """Build from (path, pid, cam, modality) tuples, keeping their order."""
        if not records:
            return cls.empty()
        paths, pids, cams, modalities = zip(*records)
        return cls(tuple(paths), np.array(pids), np.array(cams), np.array(modalities))

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSplit:
        """The images at `indices` (integer positions or a boolean mask), in that order."""
        index = np.asarray(indices)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise InputError(
                    f"ImageSplit.subset: boolean mask of shape {index.shape} for {len(self)} images"
                )
            index = np.flatnonzero(index)
        index = index.astype(np.int64, copy=False).reshape(-1)
        return ImageSplit(
            tuple(self.paths[i] for i in index.tolist()),
            self.pids[index],
            self.cams[index],
            self.modalities[index],
        )

    @property
    def num_identities(self) -> int:
        return int(np.unique(self.pids).size)


@dataclass(frozen=True)
class EvalProtocol:
    """One test setting: T trials, each a query subset and a gallery subset of two unions.

    ``trial_masks[t]`` selects trial t's gallery from ``gallery``. ``query_masks[t]`` selects its
    queries from ``query``; None means every query in every trial (the usual case: a fixed query
    set against sampled galleries). Protocols whose sampled side is the query side (LLCM
    VIS->IR as the official code computes it) set ``query_masks``.
    """

    name: str
    metric_protocol: str
    query: ImageSplit
    gallery: ImageSplit
    trial_masks: np.ndarray
    query_masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.metric_protocol not in METRIC_PROTOCOLS:
            raise InputError(
                f"EvalProtocol {self.name!r}: metric_protocol {self.metric_protocol!r} is not one "
                f"of {', '.join(METRIC_PROTOCOLS)}"
            )
        masks = np.asarray(self.trial_masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != len(self.gallery) or masks.shape[0] < 1:
            raise InputError(
                f"EvalProtocol {self.name!r}: trial_masks must have shape (T>=1, {len(self.gallery)}),"
                f" got {masks.shape}"
            )
        object.__setattr__(self, "trial_masks", masks)
        if self.query_masks is not None:
            queries = np.asarray(self.query_masks, dtype=bool)
            if queries.shape != (masks.shape[0], len(self.query)):
                raise InputError(
                    f"EvalProtocol {self.name!r}: query_masks must have shape "
                    f"({masks.shape[0]}, {len(self.query)}), got {queries.shape}"
                )
            empty = np.flatnonzero(~queries.any(axis=1)).tolist()
            if empty:
                raise InputError(f"EvalProtocol {self.name!r}: query_masks selects no query in trial(s) {empty}")
            object.__setattr__(self, "query_masks", queries)

    @property
    def num_trials(self) -> int:
        return int(self.trial_masks.shape[0])

    def _check_trial(self, trial: int) -> None:
        if not 0 <= trial < self.num_trials:
            raise InputError(
                f"protocol {self.name!r}: trial {trial} is out of range 0..{self.num_trials - 1}"
            )

    def trial_gallery(self, trial: int) -> ImageSplit:
        """The gallery of one trial, in the order it was drawn (union order)."""
        self._check_trial(trial)
        return self.gallery.subset(self.trial_masks[trial])

    def trial_query(self, trial: int) -> ImageSplit:
        """The queries of one trial (union order): all of ``query`` unless ``query_masks`` is set."""
        self._check_trial(trial)
        return self.query if self.query_masks is None else self.query.subset(self.query_masks[trial])


@dataclass(frozen=True)
class DatasetBundle:
    name: str
    train: ImageSplit
    num_classes: int
    num_cameras: int
    protocols: dict[str, EvalProtocol]
    validation: EvalProtocol | None


@dataclass(frozen=True)
class DataProblem:
    """Something wrong with a dataset tree, located by the file or folder it concerns."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def report_problem(problems: list[DataProblem] | None, path: object, message: str) -> None:
    """Raise at once when loading (`problems` is None); record and go on when checking a tree."""
    if problems is None:
        raise InputError(f"{path}: {message}")
    problems.append(DataProblem(str(path), message))


def draw_per_identity_camera(
    candidates: Mapping[tuple[int, int], Sequence[int]],
    ids: Sequence[int],
    cams: Sequence[int],
    rng: random.Random,
    shots: int,
) -> list[int]:
    """One gallery draw: walk `ids` in the order given and, within each, `cams` in the order given.

    `candidates[(pid, cam)]` lists the images of one (identity, camera) folder sorted by file
    name. A pair with no candidates consumes no random draw, exactly as a missing folder in the
    published single-shot draw. shots == 1 takes `rng.choice(files)`; more takes
    `rng.sample(files, min(shots, len(files)))`.
    """
    chosen: list[int] = []
    for pid in ids:
        for cam in cams:
            files = candidates.get((pid, cam))
            if not files:
                continue
            if shots == 1:
                chosen.append(rng.choice(files))
            else:
                chosen.extend(rng.sample(list(files), min(shots, len(files))))
    return chosen


def sampled_gallery_protocol(
    *,
    name: str,
    metric_protocol: str,
    query: ImageSplit,
    pool: ImageSplit,
    candidates: Mapping[tuple[int, int], Sequence[int]],
    ids: Sequence[int],
    cams: Sequence[int],
    trials: int,
    shots: int,
    rng_for_trial: Callable[[int], random.Random],
) -> EvalProtocol:
    """A protocol whose gallery of trial t is a seeded draw from `pool` (see draw_per_identity_camera).

    The union keeps the order of `pool`; pools are built in walk order (identity, camera, file
    name), so a single-shot trial's masked gallery lists its images in the order they were drawn.
    """
    for role, split in (("query", query), ("gallery", pool)):
        if not len(split):
            raise InputError(f"protocol {name!r}: the test identities have no {role} images")
    drawn = _draw_masks(name, len(pool), candidates, ids, cams, trials, shots, rng_for_trial)
    used = drawn.any(axis=0)
    return EvalProtocol(
        name=name,
        metric_protocol=metric_protocol,
        query=query,
        gallery=pool.subset(used),
        trial_masks=drawn[:, used],
    )


def sampled_query_protocol(
    *,
    name: str,
    metric_protocol: str,
    gallery: ImageSplit,
    pool: ImageSplit,
    candidates: Mapping[tuple[int, int], Sequence[int]],
    ids: Sequence[int],
    cams: Sequence[int],
    trials: int,
    shots: int,
    rng_for_trial: Callable[[int], random.Random],
) -> EvalProtocol:
    """The roles swapped: trial t ranks a seeded draw from `pool` (its queries) against all of
    `gallery`. The draw is the one sampled_gallery_protocol makes; the query union keeps the
    order of `pool` and ``query_masks[t]`` selects trial t's draw."""
    for role, split in (("query", pool), ("gallery", gallery)):
        if not len(split):
            raise InputError(f"protocol {name!r}: the test identities have no {role} images")
    drawn = _draw_masks(name, len(pool), candidates, ids, cams, trials, shots, rng_for_trial)
    used = drawn.any(axis=0)
    return EvalProtocol(
        name=name,
        metric_protocol=metric_protocol,
        query=pool.subset(used),
        gallery=gallery,
        trial_masks=np.ones((trials, len(gallery)), dtype=bool),
        query_masks=drawn[:, used],
    )


def _draw_masks(
    name: str,
    size: int,
    candidates: Mapping[tuple[int, int], Sequence[int]],
    ids: Sequence[int],
    cams: Sequence[int],
    trials: int,
    shots: int,
    rng_for_trial: Callable[[int], random.Random],
) -> np.ndarray:
    """(trials, size) bool: the images of a pool that each seeded draw picks."""
    if trials < 1:
        raise InputError(f"protocol {name!r}: trials must be >= 1, got {trials}")
    drawn = np.zeros((trials, size), dtype=bool)
    for trial in range(trials):
        picks = draw_per_identity_camera(candidates, ids, cams, rng_for_trial(trial), shots)
        drawn[trial, picks] = True
    return drawn


def _candidates_by_identity_camera(split: ImageSplit, pids: Sequence[int]) -> tuple[ImageSplit, dict]:
    """Pool of `split` images of `pids`, ordered (pid, cam, path), and its (pid, cam) -> indices."""
    positions = np.flatnonzero(np.isin(split.pids, np.asarray(pids, dtype=np.int64))).tolist()
    positions.sort(key=lambda i: (int(split.pids[i]), int(split.cams[i]), split.paths[i]))
    pool = split.subset(np.asarray(positions, dtype=np.int64))
    candidates: dict[tuple[int, int], list[int]] = {}
    for index, (pid, cam) in enumerate(zip(pool.pids.tolist(), pool.cams.tolist())):
        candidates.setdefault((pid, cam), []).append(index)
    return pool, candidates


def validation_protocol(
    train: ImageSplit,
    num_ids: int,
    seed: int,
    *,
    metric_protocol: str,
    trials: int = 1,
) -> tuple[ImageSplit, EvalProtocol]:
    """Hold out `num_ids` training identities for model selection without touching test ids.

    Held-out ids are drawn (numpy, seeded) among the training ids that have both visible and
    infrared images. Returns the remaining training split relabelled 0..K'-1 (ascending old
    label) and a single-shot protocol named "val" on the held-out ids: query = all their
    infrared images; gallery of trial t = one image per (id, visible camera), drawn with
    `random.Random(f"validation:{seed}:{t}")` walking ids and cameras in ascending order.
    Protocol pids are the incoming training labels.

    metric_protocol is the dataset's rule (its description's `validation_metric`): "sysu" only
    for SYSU-MM01's camera placement (cam3 queries exclude the cam2 gallery), else "regdb".
    """
    check_int(num_ids, "validation num_ids")
    check_int(seed, "validation seed", minimum=0)
    check_int(trials, "validation trials", minimum=1)
    all_ids = np.unique(train.pids)
    has_visible = np.isin(all_ids, train.pids[train.modalities == MODALITY_VISIBLE])
    has_infrared = np.isin(all_ids, train.pids[train.modalities == MODALITY_INFRARED])
    eligible = all_ids[has_visible & has_infrared]
    if not 1 <= num_ids < all_ids.size:
        raise InputError(
            f"validation num_ids: expected 1..{all_ids.size - 1} (the training split has "
            f"{all_ids.size} identities), got {num_ids}"
        )
    if num_ids > eligible.size:
        raise InputError(
            f"validation num_ids: {num_ids} requested but only {eligible.size} training identities "
            "have both visible and infrared images"
        )
    held_out = np.sort(np.random.default_rng(seed).choice(eligible, size=int(num_ids), replace=False))

    in_validation = np.isin(train.pids, held_out)
    remaining = train.subset(~in_validation)
    _, relabelled = np.unique(remaining.pids, return_inverse=True)
    remaining = ImageSplit(remaining.paths, relabelled.reshape(-1), remaining.cams, remaining.modalities)

    held = train.subset(in_validation)
    query_pool, _ = _candidates_by_identity_camera(
        held.subset(held.modalities == MODALITY_INFRARED), held_out
    )
    gallery_pool, candidates = _candidates_by_identity_camera(
        held.subset(held.modalities == MODALITY_VISIBLE), held_out
    )
    protocol = sampled_gallery_protocol(
        name="val",
        metric_protocol=metric_protocol,
        query=query_pool,
        pool=gallery_pool,
        candidates=candidates,
        ids=held_out.tolist(),
        cams=sorted(set(gallery_pool.cams.tolist())),
        trials=int(trials),
        shots=1,
        rng_for_trial=lambda t: random.Random(f"validation:{seed}:{t}"),
    )
    return remaining, protocol
