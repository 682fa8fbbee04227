"""A CSV manifest for any other layout: columns ``path,identity[,age][,gender]``, one row per image.

Any further column (``family``, ``role``, ``age_class``, ...) is kept as a text attribute of the same
name, so ``--group-by family`` can keep related people in one split.

Paths are relative to the dataset root (absolute paths inside the root are accepted). Rows whose image
is missing from disk, repeated rows, and unreadable ages or genders are reported; the row is dropped
when its image is unusable, and only the bad value is dropped otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Union

from ..errors import InputError
from ..util.tables import read_csv_rows
from .common import ProblemReport, normalize_gender, progress_bar
from .records import Record

REQUIRED_COLUMNS = ("path", "identity")


def iter_records(root: Path, problems: ProblemReport, *, manifest: Union[str, os.PathLike, None] = None,
                 progress: bool = False) -> Iterator[Record]:
    """Yield one record per manifest row whose image exists under ``root``."""
    if manifest is None:
        raise InputError("--dataset csv needs --manifest FILE (columns path,identity[,age][,gender])")
    manifest_path = Path(manifest)
    if not manifest_path.is_file():
        raise InputError(f"{manifest_path}: no such manifest file")
    rows = read_csv_rows(manifest_path, "manifest")
    if not rows:
        raise InputError(f"{manifest_path}: empty manifest (expected a header path,identity[,age][,gender])")
    header = [name.strip().lower() for name in rows[0]]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise InputError(f"{manifest_path}: header lacks {', '.join(missing)} (expected columns "
                         f"path,identity[,age][,gender], got {','.join(header)})")
    column = {name: header.index(name) for name in ("path", "identity", "age", "gender") if name in header}
    extra = {name: position for position, name in enumerate(header) if name and name not in column}
    root_text = os.path.abspath(root)
    seen: set[str] = set()
    yielded = 0
    for line, row in enumerate(progress_bar(rows[1:], progress, "reading manifest"), start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{manifest_path.name}:{line}"
        cells = {name: row[index].strip() if index < len(row) else "" for name, index in column.items()}
        attributes: dict = {name: row[index].strip() for name, index in extra.items()
                            if index < len(row) and row[index].strip()}
        path = _relative_path(cells["path"], root_text)
        if path is None:
            problems.add("row whose path is empty or outside the root", where)
            continue
        if path in seen:
            problems.add("repeated row (later copy ignored)", where)
            continue
        seen.add(path)
        if not os.path.isfile(os.path.join(root_text, path)):
            problems.add("image missing from disk", path)
            continue
        age = _age(cells.get("age", ""), where, problems)
        if age is not None:
            attributes["age"] = age
        if cells.get("gender"):
            gender = normalize_gender(cells["gender"])
            if gender is None:
                problems.add("unknown gender value", f"{where}: {cells['gender']!r}")
            else:
                attributes["gender"] = gender
        yielded += 1
        yield Record(path=path, identity=cells["identity"], attributes=attributes)
    if not yielded:
        raise InputError(f"{manifest_path}: no row names an image that exists under {root}")


def _relative_path(text: str, root: str) -> Optional[str]:
    if not text:
        return None
    path = text.replace("\\", "/")
    if os.path.isabs(path):
        path = os.path.relpath(path, root)
    path = os.path.normpath(path).replace(os.sep, "/")
    if path == "." or path.startswith("../") or path == "..":
        return None
    return path


def _age(text: str, where: str, problems: ProblemReport) -> Optional[int]:
    if not text:
        return None
    try:
        age = float(text)
    except ValueError:
        age = float("nan")
    if not age.is_integer() or not 0 <= age <= 150:
        problems.add("age that is not a whole number of years", f"{where}: {text!r}")
        return None
    return int(age)
