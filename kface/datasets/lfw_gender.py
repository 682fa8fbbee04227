"""LFW with per-image gender labels: identity folders plus ``male_names.txt`` / ``female_names.txt``.

The root is either the LFW folder holding ``images/`` and ``labels/`` (as ../shared/data/lfw), or the
identity-folder tree itself with the two lists in ``labels/`` beside or inside it. Each list names one
image file per line (``Aaron_Eckhart_0001.jpg``). Identities are the folder names, so splits can keep
every person on one side.

Reported, not hidden: names found in both lists (the image is left unlabelled), images named in no list,
and listed names with no image on disk. Unlabelled images are still indexed; commands that need a gender
leave them out and say how many.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from ..errors import InputError
from .common import ProblemReport, is_image_name, progress_bar, sorted_entries
from .records import Record

LABEL_FILES = {"male": "male_names.txt", "female": "female_names.txt"}


def iter_records(root: Path, problems: ProblemReport, *, progress: bool = False) -> Iterator[Record]:
    """Yield one record per image under its identity folder, with ``gender`` where the lists give one."""
    images = root / "images" if (root / "images").is_dir() else root
    genders = _read_gender_lists(_label_folder(root, images), problems)
    prefix = "images/" if images != root else ""
    seen: set[str] = set()
    people = [entry for entry in sorted_entries(str(images)) if entry.is_dir() and not entry.name.startswith(".")]
    yielded = 0
    for person in progress_bar(people, progress, "indexing LFW identity folders"):
        for entry in sorted_entries(person.path):
            if not entry.is_file() or not is_image_name(entry.name):
                continue
            path = f"{prefix}{person.name}/{entry.name}"
            seen.add(entry.name)
            attributes = {}
            gender = genders.get(entry.name)
            if gender is not None:
                attributes["gender"] = gender
            elif entry.name not in genders:
                problems.add("image in neither gender list", path)
            yielded += 1
            yield Record(path=path, identity=person.name, attributes=attributes)
    for name in sorted(genders.keys() - seen):
        problems.add("listed image missing from disk", name)
    if not yielded:
        raise InputError(f"no images under {images} (expected {images}/<identity>/<image>.jpg)")


def _label_folder(root: Path, images: Path) -> Path:
    for folder in (root / "labels", root, images.parent / "labels"):
        if all((folder / name).is_file() for name in LABEL_FILES.values()):
            return folder
    raise InputError(f"no LFW gender lists ({' and '.join(LABEL_FILES.values())}) in {root / 'labels'}, "
                     f"{root} or {images.parent / 'labels'}")


def _read_gender_lists(folder: Path, problems: ProblemReport) -> dict[str, Optional[str]]:
    """Gender per image file name; None for a name that both lists claim."""
    genders: dict[str, Optional[str]] = {}
    for gender, file_name in LABEL_FILES.items():
        try:
            lines = (folder / file_name).read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{folder / file_name}: cannot read the gender list ({exc})") from None
        for line in lines:
            name = line.strip()
            if not name:
                continue
            if name not in genders:
                genders[name] = gender
            elif genders[name] not in (gender, None):
                problems.add("image in both gender lists (left unlabelled)", name)
                genders[name] = None
    return genders
