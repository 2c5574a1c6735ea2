"""Generic helpers for on-disk dataset layouts: id files, labelled index files, camera trees.

Every dataset module builds on these, and the same code serves loading (problems=None: the
first problem raises InputError) and `vireid data check` (a list collects every problem and
scanning goes on), so the check and the loaders accept exactly the same trees.

Image files are the regular files of an identity folder whose suffix is an image suffix
(``IMAGE_SUFFIXES``) and whose name does not start with a dot. An identity folder without
images and a symbolic-link loop are problems, named by their path.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.data.splits import DataProblem, ImageSplit, report_problem

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
EXPECTED_INDEX_LINE = "expected '<relative image path> <non-negative integer label>'"

_CAMERA_FOLDER = re.compile(r"cam(\d+)")


def _entry_is(entry: os.DirEntry[str], kind: str, problems: list[DataProblem] | None) -> bool:
    """entry.is_dir() / is_file() following links; a link loop or an unreadable entry is a problem."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            report_problem(problems, entry.path, "symbolic link loop (the link resolves to itself)")
        else:
            report_problem(problems, entry.path, f"cannot read: {exc.strerror or exc}")
        return False


def loop_note(path: str | os.PathLike[str]) -> str:
    """" (a symbolic link loop)" when `path` is one, else "": appended to "is missing" messages."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return " (a symbolic link loop)"
    return ""


def _list_folder(path: str | Path, problems: list[DataProblem] | None) -> list[os.DirEntry[str]] | None:
    try:
        return sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            report_problem(problems, path, "symbolic link loop (the link resolves to itself)")
        else:
            report_problem(problems, path, f"cannot list folder: {exc.strerror or exc}")
        return None


def absolute_root(root: str | os.PathLike[str]) -> Path:
    """The dataset root as an absolute path (not resolving symlinks, so user paths stay readable)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(root))))


def is_image_file(entry: os.DirEntry[str], problems: list[DataProblem] | None = None) -> bool:
    return (
        not entry.name.startswith(".")
        and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
        and _entry_is(entry, "file", problems)
    )


def read_id_list(path: Path, problems: list[DataProblem] | None = None) -> list[int]:
    """Identity ids of a comma-separated id file (one line; blank lines and a trailing comma are fine)."""
    if not path.is_file():
        report_problem(problems, path, f"id file is missing{loop_note(path)} (expected comma-separated integer ids)")
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report_problem(problems, path, f"cannot read id file: {exc}")
        return []
    ids: list[int] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        for token in line.split(","):
            token = token.strip()
            if not token:
                continue
            try:
                ids.append(int(token))
            except ValueError:
                report_problem(
                    problems,
                    f"{path}:{line_number}",
                    f"malformed token {token!r}: expected comma-separated integer ids",
                )
    if not ids:
        report_problem(problems, path, "id file lists no ids (expected comma-separated integer ids)")
    return sorted(set(ids))


@dataclass
class IdentityFolder:
    path: str
    files: list[str]  # file names, sorted

    def file_paths(self) -> list[str]:
        return [os.path.join(self.path, name) for name in self.files]


@dataclass
class CameraTree:
    """``camN/<identity>/`` folders under one base folder: tree[cam][pid] -> IdentityFolder."""

    base: Path
    folders: dict[int, dict[int, IdentityFolder]] = field(default_factory=dict)

    def get(self, cam: int, pid: int) -> IdentityFolder | None:
        return self.folders.get(cam, {}).get(pid)

    def identities(self) -> set[int]:
        return {pid for by_pid in self.folders.values() for pid, f in by_pid.items() if f.files}


def scan_camera_tree(
    base: Path,
    allowed_cams: Iterable[int],
    problems: list[DataProblem] | None = None,
) -> CameraTree:
    """Index ``base/camN/<integer id>/<images>``; other entries of `base` are ignored.

    An identity folder without images is a problem (the loaders would silently treat it as a
    missing folder); so are a symbolic-link loop and an unreadable folder.
    """
    allowed = set(allowed_cams)
    tree = CameraTree(base)
    entries = _list_folder(base, problems)
    if entries is None:
        return tree
    for cam_entry in entries:
        match = _CAMERA_FOLDER.fullmatch(cam_entry.name)
        if not match or not _entry_is(cam_entry, "dir", problems):
            continue
        cam = int(match.group(1))
        if cam not in allowed:
            report_problem(
                problems,
                cam_entry.path,
                f"unexpected camera folder (expected one of "
                f"{', '.join(f'cam{c}' for c in sorted(allowed))})",
            )
            continue
        by_pid: dict[int, IdentityFolder] = {}
        id_entries = _list_folder(cam_entry.path, problems)
        if id_entries is None:
            continue
        for id_entry in id_entries:
            if id_entry.name.startswith(".") or not _entry_is(id_entry, "dir", problems):
                continue
            try:
                pid = int(id_entry.name)
            except ValueError:
                report_problem(problems, id_entry.path, "identity folder name is not an integer id")
                continue
            if pid in by_pid:
                report_problem(
                    problems,
                    id_entry.path,
                    f"identity {pid} has two folders in {cam_entry.name} (also {by_pid[pid].path})",
                )
                continue
            files = _list_folder(id_entry.path, problems)
            if files is None:
                continue
            names = sorted(e.name for e in files if is_image_file(e, problems))
            if not names:
                report_problem(problems, id_entry.path, "identity folder holds no images")
            by_pid[pid] = IdentityFolder(id_entry.path, names)
        tree.folders[cam] = by_pid
    return tree


def require_cameras(
    tree: CameraTree,
    cameras: Iterable[int],
    describe: Callable[[int], str],
    problems: list[DataProblem] | None = None,
) -> None:
    """Each of `cameras` must be a folder of `tree` holding at least one identity folder.

    A camera folder without identities is as unusable as a missing one (its images are gone);
    `describe(cam)` says what the camera is, for the message.
    """
    for cam in cameras:
        path = tree.base / f"cam{cam}"
        if cam not in tree.folders:
            report_problem(problems, path, f"camera folder is missing{loop_note(path)} ({describe(cam)})")
        elif not tree.folders[cam]:
            report_problem(problems, path, f"camera folder holds no identity folder ({describe(cam)})")


def camera_pool(
    tree: CameraTree,
    ids: Sequence[int],
    cams: Sequence[int],
    modality_of_cam: dict[int, int],
    pid_labels: dict[int, int] | None = None,
) -> tuple[ImageSplit, dict[tuple[int, int], list[int]]]:
    """Images of `ids` x `cams` in walk order (id, camera as listed, file name).

    Returns the split (cams 0-based, pids relabelled through `pid_labels` when given) and
    (original pid, on-disk cam) -> the positions of that folder's images, sorted by file name.
    """
    records: list[tuple[str, int, int, int]] = []
    candidates: dict[tuple[int, int], list[int]] = {}
    for pid in ids:
        label = pid if pid_labels is None else pid_labels[pid]
        for cam in cams:
            folder = tree.get(cam, pid)
            if folder is None or not folder.files:
                continue
            start = len(records)
            records.extend((path, label, cam - 1, modality_of_cam[cam]) for path in folder.file_paths())
            candidates[(pid, cam)] = list(range(start, len(records)))
    return ImageSplit.from_records(records), candidates


def read_labelled_list(
    path: Path, root: Path, problems: list[DataProblem] | None = None
) -> list[tuple[str, int]]:
    """(absolute image path, label) per line of an index file; blank lines are skipped.

    The label is the last whitespace-separated token, so a path may itself contain spaces.
    """
    if not path.is_file():
        report_problem(problems, path, f"index file is missing{loop_note(path)} ({EXPECTED_INDEX_LINE} per line)")
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report_problem(problems, path, f"cannot read index file: {exc}")
        return []
    entries: list[tuple[str, int]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        tokens = line.strip().rsplit(None, 1)
        if len(tokens) != 2:
            report_problem(problems, where, f"malformed line {line.strip()!r}: {EXPECTED_INDEX_LINE}")
            continue
        relative, label_text = tokens
        try:
            label = int(label_text)
        except ValueError:
            report_problem(
                problems, where, f"malformed label {label_text!r} in {line.strip()!r}: {EXPECTED_INDEX_LINE}"
            )
            continue
        if label < 0:
            report_problem(problems, where, f"label {label} is out of range: {EXPECTED_INDEX_LINE}")
            continue
        image = os.path.normpath(os.path.join(root, relative))
        if not os.path.isfile(image):
            report_problem(problems, where, f"image {image} does not exist{loop_note(image)}")
            continue
        entries.append((image, label))
    if not entries:
        report_problem(problems, path, f"index file lists no images ({EXPECTED_INDEX_LINE} per line)")
    return entries
