"""Writing files atomically: a temp file in the target's folder, then a rename.

An interrupted or failed command never leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError, KfaceError


@contextlib.contextmanager
def atomic_path(target: os.PathLike, suffix: str = "", durable: bool = False,
                exclusive: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it is renamed to ``target``, on failure removed.

    ``durable``: the file's data and then the folder entry are fsynced, so after a power loss the target
    is the old file or the new one, never an empty one (a commit point; costs a few milliseconds).
    ``exclusive``: never replace an existing ``target``: the whole temp file is hard-linked as ``target``,
    and :class:`FileExistsError` is raised when ``target`` exists by then (of two processes creating one
    file, one wins and the other finds the winner's whole file).
    Failing to write (a full disk, a read-only folder) is a :class:`KfaceError` naming ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{target.parent}: cannot create the output folder ({exc.strerror or exc})") from None
    if target.is_dir():
        raise InputError(f"{target}: is a directory; give a file name")
    try:
        handle, temp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=suffix or target.suffix, dir=target.parent)
    except OSError as exc:
        raise KfaceError(f"{target}: cannot write the output ({_why(exc)})") from None
    os.close(handle)
    try:
        yield Path(temp)
        try:
            os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes owner-only files; outputs get the usual mode
            if durable:
                fsync_file(temp)
            if exclusive:
                os.link(temp, target)
            else:
                os.replace(temp, target)
            if durable:
                fsync_folder(target.parent)
        except FileExistsError:  # exclusive: another process made target first
            raise
        except OSError as exc:
            raise KfaceError(f"{target}: cannot write the output ({_why(exc)})") from None
    except OSError as exc:  # raised while the caller wrote the temp file
        if exc.errno in _DISK_ERRNOS:
            raise KfaceError(f"{target}: cannot write the output ({_why(exc)})") from None
        raise
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def temp_prefix(target: os.PathLike) -> str:
    """The name prefix of :func:`atomic_path`'s temp files for ``target`` (to find ones a kill left)."""
    return f".{Path(target).name}."


def remove_stale_temps(target: os.PathLike) -> list[Path]:
    """Delete temp files of ``target`` that an interrupted :func:`atomic_path` left; return them.

    Only for outputs no other process is writing at the same time (a run's own folder)."""
    target = Path(target)
    removed = []
    for stale in target.parent.glob(f"{temp_prefix(target)}*"):
        try:
            stale.unlink()
            removed.append(stale)
        except FileNotFoundError:
            pass
    return removed


def fsync_file(path: os.PathLike) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_folder(folder: os.PathLike) -> None:
    """Make a rename in ``folder`` durable (POSIX: fsync the directory itself)."""
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # platforms that cannot open a folder (Windows) make renames durable themselves
    try:
        os.fsync(handle)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # file systems without directory fsync
            raise
    finally:
        os.close(handle)


# Write failures that are the disk's or the folder's, not a bug: reported as the output's error.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _why(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{reason}; free some space or write elsewhere"
    if exc.errno == errno.EFBIG:
        return f"{reason}; the file size limit (ulimit -f) was reached"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}; choose a folder you can write to"
    return reason


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: os.PathLike, text: str) -> None:
    with atomic_path(target) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json(target: os.PathLike, payload: dict) -> None:
    write_text(target, json.dumps(payload, indent=2, default=str) + "\n")


def write_npz(target: os.PathLike, **arrays) -> None:
    with atomic_path(target, suffix=".npz") as temp:
        np.savez(temp, **arrays)
