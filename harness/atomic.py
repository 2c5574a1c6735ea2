"""One atomic-write helper for every file the harness writes into a results or cache folder.

A file appears whole or not at all: content goes to a hidden temporary file in the same folder,
is flushed and fsynced, then renamed over the target. The temporary file is removed on every exit
path (exception, KeyboardInterrupt, SystemExit); temporary files left by a process that was
killed (SIGKILL) carry a recognisable name and are removed by `remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from harness.errors import EnvironmentFault

TEMP_MARKER = ".vireid-tmp"


def _temporary_name(target: Path) -> str:
    return f".{target.name}.{os.getpid()}{TEMP_MARKER}"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`.

    Use it for writers that want a file name (torch.save, savefig, safetensors, numpy).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=_temporary_name(target) + ".",
                                        suffix=target.suffix)
        os.close(handle)
    except OSError as exc:
        raise EnvironmentFault(f"{target}: cannot write here ({exc.strerror or exc})") from None
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as done:
            os.fsync(done.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise EnvironmentFault(f"{target}: cannot write ({exc.strerror}); nothing was left behind") from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


@contextlib.contextmanager
def atomic_open(target: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces `target` only if the block succeeds."""
    if "b" in mode:
        encoding = None
    with atomic_path(target) as temporary:
        with open(temporary, mode, encoding=encoding) as handle:
            yield handle


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_open(target, "w") as handle:
        handle.write(text)


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_open(target, "wb") as handle:
        handle.write(data)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Remove temporary files that killed processes left under `folder` (recursively)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.rglob(f"*{TEMP_MARKER}*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def prepare_output_folder(folder: str | Path) -> Path:
    """Create `folder`, prove that files can be created in it and remove stale temporaries.

    Called before anything trains, so an unwritable results folder ends the command with a
    message instead of losing a finished trial's records.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".write-probe.{os.getpid()}{TEMP_MARKER}")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise EnvironmentFault(f"{folder}: cannot write results here ({exc.strerror or exc}); choose another "
                               "--results-dir or free space") from None
    remove_stale_temporaries(folder)
    return folder
