"""Locks between processes on one machine: one writer at a time for a run folder, a store, a shared output.

A lock is ``fcntl.flock`` on a small file, which the kernel releases when its holder exits however it
ends (``kill -9`` included), so a crashed writer never leaves a folder locked. The file holds the holder's
pid and command, for the message the next process shows. Where POSIX locks do not exist (Windows), one
writer at a time is left to the user.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ..errors import InputError


class LockHeld(InputError):
    """Another process holds the lock (raised when not waiting for it)."""


@contextlib.contextmanager
def file_lock(path: os.PathLike, *, wait: bool = True, what: str = "", holder: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created when missing) for the ``with`` block.

    ``wait``: block until the holder is done; otherwise raise :class:`LockHeld` naming what is locked
    (``what``, e.g. ``"runs/x"``) and the process holding it (its pid and ``holder``, e.g. ``"kface train"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LockHeld(f"{what or path}: in use by {holder}; wait for it to finish, or stop it") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{holder or 'a process'} (pid {os.getpid()})\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
