"""Small dataset trees in the real SYSU-MM01 / RegDB / LLCM layouts, with tiny images.

Every writer returns the facts a test needs as its expectations (which folders and files exist),
so tests compute expected values from what was written, not from the loaders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

IMAGE_SIZE = (6, 12)  # (width, height): tiny, non-square so a transposition would show


def write_image(path: Path, color: int | tuple[int, int, int], *, size: tuple[int, int] = IMAGE_SIZE) -> Path:
    """A solid image; an int colour writes a single-channel ("L") file, like stored IR images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if isinstance(color, int) else "RGB"
    Image.new(mode, size, color).save(path)
    return path


def _colour(index: int) -> tuple[int, int, int]:
    return ((37 * index) % 256, (91 * index + 13) % 256, (53 * index + 101) % 256)


# SYSU-MM01 -----------------------------------------------------------------------------------

# (pid, cam) -> number of images. Missing pairs are missing folders. Chosen so that missing
# folders sit before multi-file folders in the gallery walk (they change the draws if they
# wrongly consumed a random number).
SYSU_FOLDERS: dict[tuple[int, int], int] = {
    # training ids 1, 2, 3 (train_id.txt) and 4 (val_id.txt)
    (1, 1): 2, (1, 2): 1, (1, 3): 2, (1, 6): 1,
    (2, 4): 3, (2, 6): 2,
    (3, 1): 1, (3, 3): 1, (3, 5): 2,
    (4, 2): 2, (4, 3): 1,
    # test ids 5, 7, 9, 12
    (5, 2): 4, (5, 4): 3, (5, 3): 2, (5, 6): 1,
    (7, 1): 5, (7, 2): 3, (7, 5): 4, (7, 3): 3,
    (9, 4): 6, (9, 5): 2, (9, 6): 2,
    (12, 1): 3, (12, 2): 7, (12, 4): 1, (12, 5): 5, (12, 3): 1, (12, 6): 2,
}
SYSU_IDS = {"train": [3, 1, 2], "val": [4], "test": [12, 5, 9, 7]}
SYSU_INFRARED = (3, 6)
SYSU_UNLISTED_ID = 999


@dataclass
class SysuTree:
    root: Path
    folders: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # -> sorted file names


def make_sysu_tree(
    root: Path,
    folders: dict[tuple[int, int], int] | None = None,
    ids: dict[str, list[int]] | None = None,
) -> SysuTree:
    """cam1..cam6/%04d/%04d.jpg (IR cameras single-channel .bmp) and exp/*_id.txt.

    Every camera folder holds an identity, as in the real dataset: a camera `folders` leaves
    empty gets one image of identity SYSU_UNLISTED_ID, which no id file lists (so no split uses it).
    """
    folders = SYSU_FOLDERS if folders is None else folders
    ids = SYSU_IDS if ids is None else ids
    tree = SysuTree(root)
    used = {cam for _, cam in folders}
    for cam in range(1, 7):
        if cam not in used:
            infrared = cam in SYSU_INFRARED
            write_image(root / f"cam{cam}" / f"{SYSU_UNLISTED_ID:04d}" / f"0001.{'bmp' if infrared else 'jpg'}",
                        250 if infrared else (250, 250, 250))
    counter = 0
    for (pid, cam), count in sorted(folders.items()):
        names = []
        for k in range(count):
            counter += 1
            infrared = cam in SYSU_INFRARED
            # zero-padded names in reverse so directory order differs from sorted order
            name = f"{count - k:04d}.{'bmp' if infrared else 'jpg'}"
            color = (counter * 29) % 256 if infrared else _colour(counter)
            write_image(root / f"cam{cam}" / f"{pid:04d}" / name, color)
            names.append(name)
        tree.folders[(pid, cam)] = sorted(names)
    (root / "exp").mkdir(parents=True, exist_ok=True)
    for split, listed in ids.items():
        (root / "exp" / f"{split}_id.txt").write_text(",".join(str(i) for i in listed) + "\n")
    return tree


# RegDB ---------------------------------------------------------------------------------------

REGDB_IDS = list(range(6))


@dataclass
class RegdbTree:
    root: Path
    # trial -> {"train_visible": [(relative path, label)], ...}
    lists: dict[int, dict[str, list[tuple[str, int]]]] = field(default_factory=dict)


def regdb_index_name(part: str, modality: str, trial: int) -> str:
    return f"{part}_{modality}_{trial}.txt"


def make_regdb_tree(root: Path, *, trials: tuple[int, ...] = (1, 2), per_modality: int = 2) -> RegdbTree:
    """Visible/<id>/*.bmp (RGB), Thermal/<id>/*.bmp (single-channel); idx lists per trial.

    Trial t trains on labels 10*id + 7 of ids rotated by t (3 ids) and tests on the other 3, so
    the training labels are not 0..K-1 and relabelling is observable.
    """
    tree = RegdbTree(root)
    for pid in REGDB_IDS:
        for k in range(per_modality):
            write_image(root / "Visible" / str(pid) / f"v_{pid}_{k}.bmp", _colour(pid * 10 + k))
            write_image(root / "Thermal" / str(pid) / f"t_{pid}_{k}.bmp", (pid * 10 + k) % 256)
    (root / "idx").mkdir(parents=True, exist_ok=True)
    for trial in trials:
        rotated = REGDB_IDS[trial % 6:] + REGDB_IDS[: trial % 6]
        parts = {"train": rotated[:3], "test": rotated[3:]}
        tree.lists[trial] = {}
        for part, pids in parts.items():
            for modality, folder, prefix in (("visible", "Visible", "v"), ("thermal", "Thermal", "t")):
                entries = [
                    (f"{folder}/{pid}/{prefix}_{pid}_{k}.bmp", 10 * pid + 7)
                    for pid in pids
                    for k in range(per_modality)
                ]
                tree.lists[trial][f"{part}_{modality}"] = entries
                text = "".join(f"{path} {label}\n" for path, label in entries)
                (root / "idx" / regdb_index_name(part, modality, trial)).write_text(text)
    return tree


# LLCM ----------------------------------------------------------------------------------------

# test folders: (modality, cam, pid) -> count; test_nir has no cam3 (as in the real dataset)
LLCM_TEST_FOLDERS: dict[tuple[str, int, int], int] = {
    ("vis", 1, 20): 3, ("vis", 3, 20): 2, ("vis", 9, 20): 4,
    ("vis", 2, 21): 5, ("vis", 3, 21): 3,
    ("vis", 1, 23): 2, ("vis", 5, 23): 6, ("vis", 8, 23): 1,
    ("nir", 1, 20): 2, ("nir", 4, 20): 3,
    ("nir", 2, 21): 4, ("nir", 9, 21): 2,
    ("nir", 5, 23): 3, ("nir", 7, 23): 5,
}
LLCM_TEST_IDS = [23, 20, 21]
# training images: (modality, pid, cam, count)
LLCM_TRAIN = [
    ("vis", 3, 1, 2), ("vis", 3, 4, 1), ("vis", 8, 2, 2),
    ("nir", 3, 6, 2), ("nir", 8, 9, 1), ("nir", 11, 2, 2),
]


@dataclass
class LlcmTree:
    root: Path
    test_folders: dict[tuple[str, int, int], list[str]] = field(default_factory=dict)
    train: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # relpath, label, cam


def make_llcm_tree(root: Path) -> LlcmTree:
    tree = LlcmTree(root, train={"vis": [], "nir": []})
    counter = 0
    for (modality, cam, pid), count in sorted(LLCM_TEST_FOLDERS.items()):
        names = []
        for k in range(count):
            counter += 1
            name = f"{pid:04d}_c{cam:02d}_s{k:03d}_{modality}.jpg"
            color = _colour(counter) if modality == "vis" else (counter * 17) % 256
            write_image(root / f"test_{modality}" / f"cam{cam}" / f"{pid:04d}" / name, color)
            names.append(name)
        tree.test_folders[(modality, cam, pid)] = sorted(names)
    for modality, pid, cam, count in LLCM_TRAIN:
        for k in range(count):
            counter += 1
            relative = f"{modality}/{pid:04d}/{pid:04d}_c{cam:02d}_s{k:06d}_f{k}_{modality}.jpg"
            write_image(root / relative, _colour(counter) if modality == "vis" else counter % 256)
            tree.train[modality].append((relative, pid, cam))
    (root / "idx").mkdir(parents=True, exist_ok=True)
    for modality, entries in tree.train.items():
        (root / "idx" / f"train_{modality}.txt").write_text(
            "".join(f"{path} {label}\n" for path, label, _ in entries)
        )
    (root / "idx" / "test_id.txt").write_text(",".join(str(i) for i in LLCM_TEST_IDS))
    return tree
