"""Identity folders (LFW's layout): ``<root>/<identity>/<any name>.<jpg|png|...>``.

Every image below an identity folder, at any depth, belongs to that identity. The layout carries no
attributes. Files directly in the root and files that are not images are reported, not indexed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..errors import InputError
from .common import ProblemReport, is_image_name, progress_bar, sorted_entries
from .records import Record


def iter_records(root: Path, problems: ProblemReport, *, progress: bool = False) -> Iterator[Record]:
    """Yield one record per image file, its identity the name of its top-level folder."""
    identities = [entry for entry in sorted_entries(str(root)) if not entry.name.startswith(".")]
    yielded = 0
    for identity in progress_bar(identities, progress, "indexing identity folders"):
        if not identity.is_dir():
            problems.add("file outside an identity folder", identity.name)
            continue
        folders = [(identity.path, identity.name)]
        while folders:
            folder, relative = folders.pop()
            for entry in sorted_entries(folder):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    folders.append((entry.path, f"{relative}/{entry.name}"))
                elif is_image_name(entry.name):
                    yielded += 1
                    yield Record(path=f"{relative}/{entry.name}", identity=identity.name)
                else:
                    problems.add("file that is not an image", f"{relative}/{entry.name}")
    if not yielded:
        raise InputError(f"no images under {root} (expected {root}/<identity>/<image>.jpg)")
