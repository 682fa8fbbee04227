"""All-Age-Faces (AAF): ``00000A02.jpg`` = running number 00000, age 02; each image a different person.

The release keeps aligned crops and original photos in separate folders (``aligned faces``,
``original images``) and label lists in ``image sets`` (lines ``<name> <gender>``, 0 female, 1 male;
the list's file stem, e.g. ``train``, becomes the record's ``subset``). ``aaf_images`` picks the
folder; a root that holds AAF-named images directly is read as it is.

There are no identity groups: records carry an empty identity. The set serves age and gender heads,
never verification pairs.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Optional

from ..errors import InputError
from .common import ProblemReport, is_image_name, progress_bar, sorted_entries, walk_files
from .records import Record

IMAGE_FOLDERS = {"aligned": ("aligned", "aglined"), "original": ("original",)}
_NAME = re.compile(r"(\d{5})A(\d{2})")


def iter_records(root: Path, problems: ProblemReport, *, aaf_images: str = "aligned",
                 progress: bool = False) -> Iterator[Record]:
    """Yield one record per AAF image, with ``age`` from its name and ``gender`` from the label lists.

    ``aaf_images`` picks the ``aligned`` crops or the ``original`` photos.
    """
    if aaf_images not in IMAGE_FOLDERS:
        raise InputError(f"--aaf-images: expected one of {', '.join(IMAGE_FOLDERS)}, got {aaf_images!r}")
    root_text = str(root)
    image_folder = _image_folder(root_text, aaf_images)
    genders, subsets = _read_label_lists(root_text, problems)
    found: dict[str, str] = {}
    image_prefix = "" if image_folder == root_text else os.path.relpath(image_folder, root_text).replace(os.sep, "/")
    for entry, relative in walk_files(image_folder, image_prefix):
        if not is_image_name(entry.name):
            continue
        stem = entry.name.rpartition(".")[0]
        if not _NAME.fullmatch(stem):
            problems.add("image name not in the AAF form 00000A02.jpg", relative)
        elif stem in found:
            problems.add("duplicate image name (later copy ignored)", relative)
        else:
            found[stem] = relative
    for stem in sorted(genders.keys() - found.keys()):
        problems.add("labelled image missing from disk", stem)
    if not found:
        raise InputError(f"no All-Age-Faces images (names like 00000A02.jpg) under {image_folder}")
    for stem in progress_bar(sorted(found), progress, "indexing All-Age-Faces images"):
        attributes: dict = {"age": int(_NAME.fullmatch(stem).group(2))}
        if stem in genders:
            attributes["gender"] = genders[stem]
        else:
            problems.add("image without a gender label", found[stem])
        if stem in subsets:
            attributes["subset"] = subsets[stem]
        yield Record(path=found[stem], identity="", attributes=attributes)


def _image_folder(root: str, images: str) -> str:
    for entry in sorted_entries(root):
        if entry.is_dir() and any(word in entry.name.lower() for word in IMAGE_FOLDERS[images]):
            return entry.path
    return root


def _read_label_lists(root: str, problems: ProblemReport) -> tuple[dict[str, str], dict[str, str]]:
    """Gender and subset per image stem, from every ``.txt`` list in the root or its ``*sets*`` folder."""
    folders = [root] + [entry.path for entry in sorted_entries(root)
                        if entry.is_dir() and "set" in entry.name.lower()]
    genders: dict[str, str] = {}
    subsets: dict[str, str] = {}
    for folder in folders:
        for entry in sorted_entries(folder):
            if not entry.is_file() or not entry.name.lower().endswith(".txt"):
                continue
            relative = os.path.relpath(entry.path, root).replace(os.sep, "/")
            try:
                with open(entry.path, encoding="utf-8-sig") as handle:
                    lines = handle.read().splitlines()
            except (OSError, UnicodeDecodeError):
                problems.add("unreadable label file", relative)
                continue
            parsed_lines = [(number, line, _label_line(line)) for number, line in enumerate(lines, start=1)]
            if not any(parsed for _, _, parsed in parsed_lines):
                continue  # not a label list (a readme, a landmark file)
            subset = os.path.splitext(entry.name)[0]
            for number, line, parsed in parsed_lines:
                if parsed is None:
                    if line.strip():
                        problems.add("unreadable label line", f"{relative}:{number}")
                    continue
                stem, gender = parsed
                if genders.get(stem, gender) != gender:
                    problems.add("image with conflicting gender labels", stem)
                genders[stem] = gender
                subsets[stem] = subset
    return genders, subsets


def _label_line(line: str) -> Optional[tuple[str, str]]:
    fields = line.split()
    if len(fields) != 2 or fields[1] not in ("0", "1"):
        return None
    stem = os.path.splitext(os.path.basename(fields[0]))[0]
    if not _NAME.fullmatch(stem):
        return None
    return stem, "female" if fields[1] == "0" else "male"
