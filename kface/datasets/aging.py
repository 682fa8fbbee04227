"""AIHub face aging ("안면 인식 에이징(aging) 이미지 데이터"): images with one JSON label each.

Images and labels are matched by file stem anywhere under the root (the release keeps them in separate
folders). A stem reads ``<contributor>_<birth year>_<age at photo>_<running number>_<letter>``; the
contributor id is the identity (the same person at many ages). The JSON label gives ``age_past`` (the
age at photo), ``gender``, and under ``annotation`` a face ``box`` ``{x, y, w, h}`` and five
``landmark`` points, which later stages use instead of detection.

Known dirt is reported, not hidden: images without a label (identity and age then come from the stem),
labels without an image, unreadable labels, ages at photo later than the age at collection (the age is
then left out), and unknown gender values.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator, Optional

from ..errors import InputError
from .common import ProblemReport, is_image_name, normalize_gender, progress_bar, walk_files
from .records import Box, Landmarks, Record

#: The age band of the aging set spreads the images chosen per identity over ages.
CONDITIONS = ("age",)

_STEM = re.compile(r"(\d+)_(\d{4})_(\d+)_")


def iter_records(root: Path, problems: ProblemReport, *, progress: bool = False) -> Iterator[Record]:
    """Yield one record per image, with identity, age, gender, box and landmarks where known."""
    images: dict[str, str] = {}
    labels: dict[str, str] = {}
    for entry, relative in walk_files(str(root)):
        stem, _, extension = entry.name.rpartition(".")
        if extension.lower() == "json" and stem:
            found = labels
        elif is_image_name(entry.name):
            found = images
        else:
            continue
        if stem in found:
            problems.add("duplicate file name (later copy ignored)", relative)
            continue
        found[stem] = relative
    for stem in sorted(labels.keys() - images.keys()):
        problems.add("label file whose image is missing", labels[stem])
    yielded = 0
    for stem in progress_bar(sorted(images), progress, "reading aging labels"):
        record = _record(root, stem, images[stem], labels.get(stem), problems)
        if record is not None:
            yielded += 1
            yield record
    if not yielded:
        raise InputError(f"no labelled aging images under {root} (expected images such as "
                         f"0001_1992_06_00000020_F.png with a JSON label of the same name)")


def _record(root: Path, stem: str, image: str, label: Optional[str], problems: ProblemReport) -> Optional[Record]:
    from_stem = _STEM.match(stem)
    data: dict = {}
    if label is None:
        problems.add("image without a label file", image)
    else:
        try:
            with open(root / label, encoding="utf-8-sig") as handle:
                data = json.load(handle)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError):
            problems.add("unreadable label file", label)
            data = {}
    identity = from_stem.group(1) if from_stem else str(data.get("id", "")).strip()
    if not identity:
        problems.add("image with no contributor id (neither in its name nor its label)", image)
        return None
    attributes: dict = {}
    age = _age(data, from_stem, image, problems)
    if age is not None:
        attributes["age"] = age
    if "gender" in data:
        gender = normalize_gender(data["gender"])
        if gender is None:
            problems.add("unknown gender value", f"{label}: {data['gender']!r}")
        else:
            attributes["gender"] = gender
    box, landmarks = _face(data.get("annotation"), label, problems)
    return Record(path=image, identity=identity, attributes=attributes, box=box, landmarks=landmarks)


def _age(data: dict, from_stem: Optional[re.Match], image: str, problems: ProblemReport) -> Optional[int]:
    try:
        if "age_past" in data:
            age = int(data["age_past"])
        elif from_stem:
            age = int(from_stem.group(3))
        else:
            return None
        age_now = int(data["age_now"]) if "age_now" in data else None
    except (TypeError, ValueError):
        problems.add("age that is not a number", image)
        return None
    if age < 0 or (age_now is not None and age > age_now):
        # A photo dated after the collection: the age label is wrong, the identity still holds.
        problems.add("age at photo after the collection (age left out)", image)
        return None
    return age


def _face(annotation: object, label: Optional[str], problems: ProblemReport) -> tuple[Optional[Box],
                                                                                      Optional[Landmarks]]:
    if isinstance(annotation, list):
        annotation = annotation[0] if annotation else None
    if not isinstance(annotation, dict):
        return None, None
    try:
        raw_box = annotation.get("box")
        box = None
        if raw_box is not None:
            box = tuple(float(raw_box[key]) for key in ("x", "y", "w", "h"))
            if box[2] <= 0 or box[3] <= 0:
                raise ValueError("box with no area")
        raw_points = annotation.get("landmark")
        landmarks = None
        if raw_points is not None:
            landmarks = tuple((float(x), float(y)) for x, y in raw_points)
            if len(landmarks) != 5:
                raise ValueError("not five landmarks")
        return box, landmarks
    except (TypeError, ValueError, KeyError):
        problems.add("malformed box or landmarks (detection used instead)", str(label))
        return None, None
