"""Synthetic VI-ReID generator: layouts, determinism, the modality gap and the atomic cache."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import synthetic
from harness.data.registry import get_dataset
from harness.data.synthetic import (
    SynthSpec,
    ensure_synthetic,
    present_cameras,
    render_person,
)
from harness.errors import HarnessError

SYSU, REGDB, LLCM = (get_dataset(name) for name in ("sysu", "regdb", "llcm"))
SYSU_CAMERAS, LLCM_CAMERAS = SYSU.sensors, LLCM.sensors
write_sysu, write_regdb, write_llcm = SYSU.write_synthetic, REGDB.write_synthetic, LLCM.write_synthetic

LAYOUT_SPEC = SynthSpec(num_identities=10, images_per_camera=2, height=64, width=32, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _id_line(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    assert len(lines) == 1, f"{path} must hold exactly one line"
    assert re.fullmatch(r"\d+(,\d+)*", lines[0]), lines[0]
    return [int(x) for x in lines[0].split(",")]


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sysu(tmp_path_factory.mktemp("sysu") / "SYSU-MM01", LAYOUT_SPEC)


@pytest.fixture(scope="module")
def llcm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llcm(tmp_path_factory.mktemp("llcm") / "LLCM", LAYOUT_SPEC)


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_regdb(tmp_path_factory.mktemp("regdb") / "RegDB", LAYOUT_SPEC)


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


def test_sysu_layout(sysu_root: Path) -> None:
    spec = LAYOUT_SPEC
    assert sorted(p.name for p in sysu_root.iterdir()) == ["cam1", "cam2", "cam3", "cam4", "cam5", "cam6", "exp"]
    train, val, test = (_id_line(sysu_root / "exp" / f"{n}_id.txt") for n in ("train", "val", "test"))
    assert sorted(train + val + test) == list(range(1, spec.num_identities + 1))
    assert len(test) == 4 and len(val) >= 1 and len(train) >= 2  # round(10 * 0.4) = 4
    assert train == sorted(train) and test == sorted(test)

    folders: dict[int, set[int]] = {pid: set() for pid in range(1, spec.num_identities + 1)}
    for cam in range(1, 7):
        for folder in (sysu_root / f"cam{cam}").iterdir():
            assert re.fullmatch(r"\d{4}", folder.name)
            names = sorted(p.name for p in folder.iterdir())
            assert names == ["0001.jpg", "0002.jpg"]
            folders[int(folder.name)].add(cam)
            for name in names:
                with Image.open(folder / name) as image:
                    assert image.format == "JPEG" and image.size == (spec.width, spec.height)
                    assert image.mode == ("L" if cam in (3, 6) else "RGB")
    for pid, cams in folders.items():
        assert cams & {1, 2, 4, 5}, f"identity {pid} lost every visible camera"
        assert cams & {3, 6}, f"identity {pid} lost every infrared camera"
    missing = sum(6 - len(c) for c in folders.values())
    assert missing == round(0.1 * spec.num_identities * 6) > 0


def test_regdb_layout(regdb_root: Path) -> None:
    spec = LAYOUT_SPEC
    ids = [str(p) for p in range(1, spec.num_identities + 1)]
    assert sorted(p.name for p in (regdb_root / "Visible").iterdir()) == sorted(ids)
    assert sorted(p.name for p in (regdb_root / "Thermal").iterdir()) == sorted(ids)
    for modality, mode in (("Visible", "RGB"), ("Thermal", "L")):
        for folder in (regdb_root / modality).iterdir():
            files = sorted(folder.iterdir())
            assert len(files) == spec.images_per_camera and all(f.suffix == ".bmp" for f in files)
            with Image.open(files[0]) as image:
                assert image.format == "BMP" and image.mode == mode and image.size == (spec.width, spec.height)

    expected = {f"{part}_{m}_{t}.txt"
                for part in ("train", "test") for m in ("visible", "thermal") for t in range(1, 11)}
    assert {p.name for p in (regdb_root / "idx").iterdir()} == expected
    splits = []
    for trial in range(1, 11):
        per_file: dict[str, dict[int, int]] = {}
        for part in ("train", "test"):
            for modality, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                label_of: dict[int, int] = {}
                lines = (regdb_root / "idx" / f"{part}_{modality}_{trial}.txt").read_text().splitlines()
                for line in lines:
                    match = re.fullmatch(rf"({folder}/(\d+)/[^ ]+\.bmp) (\d+)", line)
                    assert match, line
                    assert (regdb_root / match.group(1)).is_file()
                    pid, label = int(match.group(2)), int(match.group(3))
                    assert label_of.setdefault(pid, label) == label
                assert len(lines) == len(label_of) * spec.images_per_camera
                assert sorted(label_of.values()) == list(range(len(label_of)))
                per_file[f"{part}_{modality}"] = label_of
        assert per_file["train_visible"] == per_file["train_thermal"]
        assert per_file["test_visible"] == per_file["test_thermal"]
        train, test = set(per_file["train_visible"]), set(per_file["test_visible"])
        assert not train & test and len(train) == 5 and len(test) == 5
        assert train | test == set(range(1, spec.num_identities + 1))
        splits.append(frozenset(train))
    assert len(set(splits)) > 1, "every trial drew the same identity split"


def test_llcm_layout(llcm_root: Path) -> None:
    name_pattern = r"(\d{4})_c(\d{2})_s\d{6}_f\d{4}_(vis|nir)\.jpg"
    test_ids = _id_line(llcm_root / "idx" / "test_id.txt")
    assert len(test_ids) == 4
    assert {p.name for p in (llcm_root / "test_vis").iterdir()} <= {f"cam{c}" for c in range(1, 10)}
    assert {p.name for p in (llcm_root / "test_nir").iterdir()} <= {f"cam{c}" for c in (1, 2, 4, 5, 6, 7, 8, 9)}

    test_modalities: dict[int, set[str]] = {pid: set() for pid in test_ids}
    for modality in ("vis", "nir"):
        for path in (llcm_root / f"test_{modality}").rglob("*.jpg"):
            cam_dir, pid_dir = path.parent.parent.name, path.parent.name
            match = re.fullmatch(name_pattern, path.name)
            assert match and match.group(1) == pid_dir and f"cam{int(match.group(2))}" == cam_dir
            assert match.group(3) == modality and int(pid_dir) in test_modalities
            test_modalities[int(pid_dir)].add(modality)
            with Image.open(path) as image:
                assert image.mode == ("L" if modality == "nir" else "RGB")
    assert all(m == {"vis", "nir"} for m in test_modalities.values()), test_modalities

    train_ids: dict[str, dict[int, int]] = {}
    for modality in ("vis", "nir"):
        label_of: dict[int, int] = {}
        for line in (llcm_root / "idx" / f"train_{modality}.txt").read_text().splitlines():
            path, label = line.split(" ")
            match = re.fullmatch(rf"{modality}/(\d{{4}})/{name_pattern}", path)
            assert match and match.group(1) == match.group(2) and match.group(4) == modality, line
            assert (llcm_root / path).is_file()
            assert label_of.setdefault(int(match.group(1)), int(label)) == int(label)
            if modality == "nir":
                assert int(match.group(3)) != 3, "LLCM camera 3 has no near-infrared images"
        train_ids[modality] = label_of
    assert train_ids["vis"] == train_ids["nir"]
    assert sorted(train_ids["vis"]) == sorted(set(range(1, 11)) - set(test_ids))
    assert sorted(train_ids["vis"].values()) == list(range(6))
    assert sorted(train_ids["vis"], key=train_ids["vis"].get) == sorted(train_ids["vis"])


def test_missing_cameras_keep_both_modalities() -> None:
    spec = SynthSpec(num_identities=12, missing_camera_rate=0.8, seed=5)
    for layout, cameras in (("sysu", SYSU_CAMERAS), ("llcm", LLCM_CAMERAS)):
        present = present_cameras(spec, get_dataset(layout))
        for pid, cams in present.items():
            assert any(not c.infrared for c in cams) and any(c.infrared for c in cams), (layout, pid)
        dropped = sum(len(cameras) - len(c) for c in present.values())
        # the rate asks for more drops than possible: every identity ends at one camera per modality
        assert dropped == min(round(0.8 * 12 * len(cameras)), 12 * (len(cameras) - 2))
    assert present_cameras(SynthSpec(num_identities=12, missing_camera_rate=0.0), SYSU)[1] == SYSU_CAMERAS


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_generation_is_byte_identical(sysu_root: Path, tmp_path: Path) -> None:
    again = write_sysu(tmp_path / "again", LAYOUT_SPEC)
    first, second = _files(sysu_root), _files(again)
    assert first.keys() == second.keys() and first == second


def test_image_does_not_depend_on_generation_order(sysu_root: Path) -> None:
    # Render one image alone, after unrelated ones, then in the writer's order: same JPEG bytes.
    render_person(LAYOUT_SPEC, LLCM, 2, LLCM_CAMERAS[4], 1)
    camera = SYSU_CAMERAS[5]
    folder = sysu_root / "cam6"
    pid = int(sorted(p.name for p in folder.iterdir())[-1])
    alone = render_person(LAYOUT_SPEC, SYSU, pid, camera, 1)
    buffer = io.BytesIO()
    Image.fromarray(alone, mode="L").save(buffer, format="JPEG", quality=synthetic.JPEG_QUALITY)
    assert buffer.getvalue() == (folder / f"{pid:04d}" / "0002.jpg").read_bytes()


def test_different_seeds_differ(sysu_root: Path, tmp_path: Path) -> None:
    spec = SynthSpec(num_identities=10, images_per_camera=2, height=64, width=32, seed=4)
    other = _files(write_sysu(tmp_path / "other", spec))
    first = _files(sysu_root)
    shared = [k for k in first if k in other and k.endswith(".jpg")]
    assert shared and sum(first[k] != other[k] for k in shared) == len(shared)


# ---------------------------------------------------------------------------------------------
# The modality gap
# ---------------------------------------------------------------------------------------------

GAP_SPEC = SynthSpec(num_identities=20, images_per_camera=3, seed=11)


def _gap_images() -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray]:
    visible, visible_ids, infrared, infrared_ids = [], [], [], []
    for pid in range(1, GAP_SPEC.num_identities + 1):
        for camera in SYSU_CAMERAS:
            for k in range(GAP_SPEC.images_per_camera):
                image = render_person(GAP_SPEC, SYSU, pid, camera, k).astype(np.float64) / 255.0
                (infrared if camera.infrared else visible).append(image)
                (infrared_ids if camera.infrared else visible_ids).append(pid)
    return visible, np.array(visible_ids), infrared, np.array(infrared_ids)


@pytest.fixture(scope="module")
def gap_images() -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray]:
    return _gap_images()


def _orientation_descriptor(image: np.ndarray, cells: tuple[int, int] = (16, 4), bins: int = 6) -> np.ndarray:
    """Polarity-free gradient orientation histograms per cell (strongest channel per pixel)."""
    channels = image[..., None] if image.ndim == 2 else image
    gy = np.zeros_like(channels)
    gx = np.zeros_like(channels)
    gy[1:-1] = (channels[2:] - channels[:-2]) / 2
    gx[:, 1:-1] = (channels[:, 2:] - channels[:, :-2]) / 2
    strongest = np.hypot(gx, gy).argmax(axis=2)[..., None]
    gx = np.take_along_axis(gx, strongest, 2)[..., 0]
    gy = np.take_along_axis(gy, strongest, 2)[..., 0]
    magnitude = np.hypot(gx, gy)
    orientation = np.mod(np.arctan2(gy, gx), np.pi)
    bin_index = np.minimum((orientation / np.pi * bins).astype(int), bins - 1)
    h, w = magnitude.shape
    cell = (np.arange(h)[:, None] * cells[0] // h) * cells[1] + (np.arange(w)[None, :] * cells[1] // w)
    hist = np.zeros((cells[0] * cells[1], bins))
    np.add.at(hist, (cell.ravel(), bin_index.ravel()), magnitude.ravel())
    hist /= np.linalg.norm(hist, axis=1, keepdims=True) + 1e-6
    flat = hist.ravel()
    return flat / np.linalg.norm(flat)


def _garment_crop(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return image[int(0.3 * h) : int(0.55 * h), int(0.3 * w) : int(0.7 * w)]


def _colour_histogram(image: np.ndarray, bins: int = 4) -> np.ndarray:
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    q = np.minimum((rgb * bins).astype(int), bins - 1)
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.bincount(index.ravel(), minlength=bins**3).astype(np.float64)
    return hist / hist.sum()


def _rank1_by_loop(query: np.ndarray, gallery: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray,
                   distance) -> float:
    hits = 0
    for q, qid in zip(query, query_ids):
        best = min(range(len(gallery)), key=lambda j: distance(q, gallery[j]))
        hits += int(gallery_ids[best] == qid)
    return hits / len(query)


def test_visible_colour_varies_and_infrared_is_single_channel(gap_images, sysu_root: Path) -> None:
    visible, visible_ids, infrared, _infrared_ids = gap_images
    h, w = GAP_SPEC.height, GAP_SPEC.width
    torso = (slice(int(0.3 * h), int(0.5 * h)), slice(int(0.4 * w), int(0.6 * w)))
    per_identity = np.array([np.mean([img[torso].mean(axis=(0, 1)) for img, p in zip(visible, visible_ids) if p == pid],
                                     axis=0) for pid in range(1, 21)])
    assert per_identity.shape == (20, 3)
    chroma = per_identity - per_identity.mean(axis=1, keepdims=True)
    assert per_identity.std(axis=0).min() > 0.08, "garment colour hardly varies across identities"
    assert np.abs(chroma).max(axis=1).mean() > 0.05, "visible garments are nearly grey"
    assert all(img.ndim == 3 and img.shape[2] == 3 for img in visible)
    assert all(img.ndim == 2 for img in infrared)
    for path in list((sysu_root / "cam3").rglob("*.jpg"))[:5]:
        with Image.open(path) as image:
            assert image.mode == "L" and len(image.getbands()) == 1


def test_identity_survives_in_infrared_but_colour_does_not(gap_images) -> None:
    visible, visible_ids, infrared, infrared_ids = gap_images
    chance = 1.0 / GAP_SPEC.num_identities
    shape_q = np.stack([_orientation_descriptor(x) for x in infrared])
    shape_g = np.stack([_orientation_descriptor(x) for x in visible])
    shape_rank1 = _rank1_by_loop(shape_q, shape_g, infrared_ids, visible_ids, lambda a, b: -float(a @ b))
    assert shape_rank1 >= 3 * chance, (shape_rank1, chance)
    for crop in (lambda x: x, _garment_crop):
        colour_q = np.stack([_colour_histogram(crop(x)) for x in infrared])
        colour_g = np.stack([_colour_histogram(crop(x)) for x in visible])
        colour_rank1 = _rank1_by_loop(colour_q, colour_g, infrared_ids, visible_ids,
                                      lambda a, b: float(np.abs(a - b).sum()))
        assert colour_rank1 <= 2 * chance, (colour_rank1, chance)
        assert shape_rank1 >= colour_rank1 + 0.1


def test_colour_identifies_within_visible(gap_images) -> None:
    # Garment colour carries identity between visible cameras; only the infrared cameras lose it.
    visible, visible_ids, _, _ = gap_images
    hist = np.stack([_colour_histogram(_garment_crop(x)) for x in visible])
    one_identity = [c.number for c in SYSU_CAMERAS if not c.infrared for _ in range(GAP_SPEC.images_per_camera)]
    cameras = np.array(one_identity * GAP_SPEC.num_identities)
    query, gallery = cameras == 1, cameras != 1
    rank1 = _rank1_by_loop(hist[query], hist[gallery], visible_ids[query], visible_ids[gallery],
                           lambda a, b: float(np.abs(a - b).sum()))
    assert rank1 >= 0.5, rank1


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_identities", 3),
        ("num_identities", 2.5),
        ("images_per_camera", 0),
        ("height", 8),
        ("width", 0),
        ("seed", -1),
        ("seed", True),
        ("test_fraction", 0.0),
        ("test_fraction", 1.0),
        ("missing_camera_rate", 1.0),
        ("missing_camera_rate", -0.1),
    ],
)
def test_bad_spec_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(HarnessError, match=field):
        SynthSpec(**{field: value})


def test_equal_specs_share_a_cache_key() -> None:
    assert synthetic.cache_key(SYSU, SynthSpec(seed=np.int64(2), missing_camera_rate=0)) == synthetic.cache_key(
        SYSU, SynthSpec(seed=2, missing_camera_rate=0.0)
    )
    keys = {synthetic.cache_key(get_dataset(layout), SynthSpec()) for layout in ("sysu", "regdb", "llcm")}
    keys.add(synthetic.cache_key(SYSU, SynthSpec(images_per_camera=5)))
    assert len(keys) == 4


def test_too_few_identities_for_a_split(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="test"):
        write_sysu(tmp_path / "a", SynthSpec(num_identities=5, test_fraction=0.2))
    with pytest.raises(HarnessError, match="train"):
        write_sysu(tmp_path / "b", SynthSpec(num_identities=5, test_fraction=0.8))
    with pytest.raises(HarnessError, match="train"):
        write_llcm(tmp_path / "c", SynthSpec(num_identities=4, test_fraction=0.8))
    assert not (tmp_path / "a").exists()


def test_unknown_layout_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(HarnessError) as error:
        get_dataset("market")
    assert all(name in str(error.value) for name in ("sysu", "regdb", "llcm"))


def test_smallest_images_render() -> None:
    spec = SynthSpec(num_identities=4, height=32, width=16)
    for camera in SYSU_CAMERAS:
        image = render_person(spec, SYSU, 1, camera, 0)
        assert image.shape == ((32, 16) if camera.infrared else (32, 16, 3)) and image.dtype == np.uint8


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------

CACHE_SPEC = SynthSpec(num_identities=5, images_per_camera=1, height=32, width=16, seed=1)


def test_ensure_synthetic_reuses_a_complete_tree(tmp_path: Path) -> None:
    first = ensure_synthetic(REGDB, CACHE_SPEC, tmp_path)
    marker = first / synthetic.MARKER_NAME
    image = next((first / "Thermal").rglob("*.bmp"))
    stamps = (marker.stat().st_mtime_ns, image.stat().st_mtime_ns)
    second = ensure_synthetic(REGDB, CACHE_SPEC, tmp_path)
    assert second == first and (marker.stat().st_mtime_ns, image.stat().st_mtime_ns) == stamps
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "temporary folders were left behind"
    other = ensure_synthetic(REGDB, SynthSpec(num_identities=5, images_per_camera=1, height=32, width=16, seed=2),
                             tmp_path)
    assert other != first and other.parent == first.parent


def test_partial_tree_without_marker_is_regenerated(tmp_path: Path) -> None:
    final = tmp_path / synthetic.cache_key(SYSU, CACHE_SPEC)
    (final / "cam1" / "0001").mkdir(parents=True)
    (final / "cam1" / "0001" / "stale.jpg").write_bytes(b"half written")
    root = ensure_synthetic(SYSU, CACHE_SPEC, tmp_path)
    assert root == final and (root / synthetic.MARKER_NAME).is_file()
    assert not (root / "cam1" / "0001" / "stale.jpg").exists()
    assert (root / "exp" / "test_id.txt").is_file()


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def write_half_then_fail(self, out: Path, spec: SynthSpec) -> Path:
        (out / "cam1").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(type(LLCM), "write_synthetic", write_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(LLCM, CACHE_SPEC, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIREID_CACHE", str(tmp_path))
    assert synthetic.default_cache_dir() == tmp_path / "synthetic"
    monkeypatch.delenv("VIREID_CACHE")
    assert synthetic.default_cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "vireid" / "synthetic"


def test_one_cache_root_for_images_and_synthetic_trees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.config import TrialConfig
    from harness.data.cache_root import cache_root

    monkeypatch.setenv("VIREID_CACHE", str(tmp_path / "env"))
    data = TrialConfig().data
    assert cache_root(data) == cache_root() == tmp_path / "env" and synthetic.default_cache_dir().parent == cache_root()
    own = TrialConfig().with_overrides({"data.cache_dir": str(tmp_path / "mine")}).data
    assert cache_root(own) == tmp_path / "mine"
