"""Content hashes: the one sha256 of a file that checkpoints, weights, caches and shipped models use."""
from __future__ import annotations

import hashlib
import os


def file_sha256(path: os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
