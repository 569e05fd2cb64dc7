"""Atomic file and folder writes: the one home for them.

Every output a stage writes goes through here, so a kill or a full disk never
leaves a half-written file where a later stage (or DVC) would trust it. One
permission policy: files and folders get the modes a plain ``open`` and
``mkdir`` would give under the user's umask (``mkstemp`` and ``mkdtemp`` make
them private, which is no use for shared outputs).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from reglab.core.errors import ReglabError

# Failures to write an output that a user fixes outside the project. Outputs are
# written to a temporary name and renamed, so none is left half-written.
WRITE_ERRORS = {
    errno.ENOSPC: "free some disk space, then run the stage again",
    errno.EDQUOT: "free some of your disk quota, then run the stage again",
    errno.EACCES: "make the folder writable for this user, then run the stage again",
    errno.EPERM: "make the folder writable for this user, then run the stage again",
    errno.EROFS: "the file system is read-only; point paths.* in conf/ somewhere writable",
    errno.ENOTDIR: "a file stands where a folder is expected; move it or change paths.* in conf/",
    errno.EEXIST: "a file stands where a folder is expected; move it or change paths.* in conf/",
}


class WriteError(ReglabError):
    """An output could not be written; the message names the path and what to do."""

    @classmethod
    def of(cls, error: OSError, path: str | Path | None = None) -> WriteError:
        where = error.filename or path
        where = f" {where}" if where else ""
        advice = WRITE_ERRORS.get(error.errno, "check the path and run the stage again")
        return cls(f"cannot write{where}: {error.strerror or error}; {advice}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write ``content`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if isinstance(content, str):
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
                stream.write(content)
        else:
            with os.fdopen(handle, "wb") as stream:
                stream.write(content)
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise WriteError.of(error, path) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name
    (``figure.savefig``, ``np.save``); renamed onto ``path`` when the block ends
    without an error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def staging_dir(target: str | Path) -> Path:
    """An empty folder beside ``target`` to fill before :func:`replace_dir` swaps it in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    staging.chmod(dir_mode())
    return staging


def replace_dir(staging: str | Path, target: str | Path) -> None:
    """Move a fully written folder onto ``target``; the old one is removed only after.

    Two renames, not one: POSIX cannot rename a folder over a non-empty one.
    A kill between them leaves the old folder under a dot-name beside the target,
    never a mix of old and new files.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    try:
        os.replace(target, retired / target.name)
        os.replace(staging, target)
    finally:
        shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def writing_dir(target: str | Path) -> Iterator[Path]:
    """Fill a staging folder in the block; it replaces ``target`` only if the block succeeds."""
    staging = staging_dir(target)
    try:
        yield staging
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove what a killed writer of ``path`` left beside it: staging folders,
    retired folders and temporary files (the names the functions above give)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    patterns = (f".{path.name}.tmp-*", f".{path.name}.old-*", f".{path.name}.*.tmp")
    removed = [stale for pattern in patterns for stale in path.parent.glob(pattern)]
    for stale in removed:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return removed


def read_json_object(
    path: str | Path, needed: Sequence[str], error: type[Exception], writer: str
) -> dict[str, Any]:
    """A JSON file another step wrote, with the ``needed`` keys.

    A missing file, invalid JSON or a missing key raises ``error`` with one line
    that names ``writer``, the step to (re-)run, e.g. "its evaluate stage".
    """
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: not found; run {writer} first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as problem:
        raise error(f"{path}: not valid JSON ({problem.msg}); re-run {writer}") from None
    missing = [key for key in needed if key not in data]
    if missing:
        raise error(f"{path}: missing {missing}; re-run {writer}")
    return data
