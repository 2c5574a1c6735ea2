"""One atomic-write helper for every file the harness writes into a results or cache folder.

A file appears whole or not at all: content goes to a hidden temporary file in the same folder,
is flushed and fsynced, then renamed over the target. The temporary file is removed on every exit
path (exception, KeyboardInterrupt, SystemExit); temporary files left by a process that was
killed (SIGKILL) carry a recognisable name (target, machine, process id) and are removed by
`remove_stale_temporaries` once their writer is gone: the first write of a process into a folder
does it for that folder, so every folder the harness writes to is cleaned on the next run.
`atomic_directory` does the same for a tree.

A new file gets the mode `open()` would give it (0666 less the umask; a folder 0777 less the
umask), and a replaced file keeps its mode, so results are as readable as any file the user writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from harness.errors import EnvironmentFault

TEMP_MARKER = ".vireid-tmp"
STALE_AFTER_SECONDS = 24 * 3600
"""A temporary whose writer cannot be checked (another machine) is stale after this long."""

_HOST = socket.gethostname().replace(".", "-") or "host"
_OWNER = re.compile(r"\.([^./]+)\.(\d+)" + re.escape(TEMP_MARKER))


_NAME_ATTEMPTS = 100
_swept_folders: set[tuple[int, str]] = set()
_swept_lock = threading.Lock()


def _temporary_name(target: Path) -> str:
    return f".{target.name}.{_HOST}.{os.getpid()}{TEMP_MARKER}"


def _create_temporary(target: Path, *, folder: bool = False) -> Path:
    """A new, uniquely named temporary beside `target`, created as `open()` / `mkdir()` would create it.

    tempfile.mkstemp / mkdtemp create 0600 / 0700 whatever the umask; here the mode comes from the
    umask (the kernel applies it to 0666 / 0777), and a file replacing an existing one takes its mode.
    """
    prefix = _temporary_name(target) + "."
    for _ in range(_NAME_ATTEMPTS):
        path = target.parent / f"{prefix}{secrets.token_hex(4)}{'' if folder else target.suffix}"
        try:
            if folder:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
        except FileExistsError:
            continue
        if not folder:
            with contextlib.suppress(OSError):
                existing = os.stat(target)
                if stat.S_ISREG(existing.st_mode):
                    os.chmod(path, stat.S_IMODE(existing.st_mode))
        return path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target.parent))


def _sweep_folder_once(folder: Path) -> None:
    """Remove the temporaries killed writers left in `folder`, once per process and folder."""
    key = (os.getpid(), os.path.abspath(folder))
    with _swept_lock:
        if key in _swept_folders:
            return
        _swept_folders.add(key)
    remove_stale_temporaries(folder, recursive=False)


def _is_stale(path: Path, now: float) -> bool:
    """Left by a dead process of this machine, or older than STALE_AFTER_SECONDS."""
    owner = _OWNER.search(path.name)
    if owner and owner.group(1) == _HOST:
        pid = int(owner.group(2))
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            pass  # alive, owned by another user
    try:
        return now - path.lstat().st_mtime > STALE_AFTER_SECONDS
    except OSError:
        return False


_REFUSALS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _raise_if_refused(exc: OSError, target: Path) -> None:
    """A full disk or a refused write is the environment's fault: exit 2 with a message, not a traceback."""
    if exc.errno in _REFUSALS:
        raise EnvironmentFault(f"{target}: cannot write ({exc.strerror}); nothing was left behind") from None


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`.

    Use it for writers that want a file name (torch.save, savefig, safetensors, numpy).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_folder_once(target.parent)
        temporary = _create_temporary(target)
    except OSError as exc:
        raise EnvironmentFault(f"{target}: cannot write here ({exc.strerror or exc})") from None
    try:
        yield temporary
        with open(temporary, "rb") as done:
            os.fsync(done.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        _raise_if_refused(exc, target)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


@contextlib.contextmanager
def atomic_open(target: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces `target` only if the block succeeds."""
    if "b" in mode:
        encoding = None
    with atomic_path(target) as temporary, open(temporary, mode, encoding=encoding) as handle:
        yield handle


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_open(target, "w") as handle:
        handle.write(text)


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_open(target, "wb") as handle:
        handle.write(data)


def remove_stale_temporaries(folder: str | Path, *, recursive: bool = True) -> int:
    """Remove temporary files and folders that killed processes left in `folder`.

    A temporary of a live writer (another worker of the same sweep) is kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed, now = 0, time.time()
    pattern = f"*{TEMP_MARKER}*"
    for path in sorted(folder.rglob(pattern) if recursive else folder.glob(pattern)):
        if not _is_stale(path, now):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it is renamed onto `target`.

    For trees that must appear complete or not at all (a generated dataset). The rename fails
    with OSError when `target` exists and is not empty; the temporary folder is removed on every
    exit path.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_folder_once(target.parent)
        temporary = _create_temporary(target, folder=True)
    except OSError as exc:
        raise EnvironmentFault(f"{target}: cannot write here ({exc.strerror or exc})") from None
    try:
        yield temporary
        os.replace(temporary, target)
    except OSError as exc:
        _raise_if_refused(exc, target)
        raise
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def prepare_output_folder(folder: str | Path) -> Path:
    """Create `folder`, prove that files can be created in it and remove stale temporaries.

    Called before anything trains, so an unwritable results folder ends the command with a
    message instead of losing a finished trial's records.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=_temporary_name(Path("write-probe")))
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise EnvironmentFault(f"{folder}: cannot write results here ({exc.strerror or exc}); choose another "
                               "--results-dir or free space") from None
    remove_stale_temporaries(folder)
    return folder
