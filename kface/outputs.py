"""Writing files atomically: a temp file in the target's folder, then a rename.

An interrupted or failed command never leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError


@contextlib.contextmanager
def atomic_path(target: os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it is renamed to ``target``, on failure removed."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{target.parent}: cannot create the output folder ({exc.strerror or exc})") from None
    if target.is_dir():
        raise InputError(f"{target}: is a directory; give a file name")
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent)
    os.close(handle)
    try:
        yield Path(temp)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes owner-only files; outputs get the usual mode
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


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
    import numpy as np

    with atomic_path(target, suffix=".npz") as temp:
        np.savez(temp, **arrays)
