"""AIHub K-Face ("한국인 안면 이미지"): ``<root>/<ID>/<Sxxx>/<Ly>/<Ezz>/<Cn>.jpg``.

Each image is one combination of four condition codes: accessory ``S``, lighting ``L``, expression
``E`` and camera (head pose) ``C``. :data:`CODES` is the one table that says what each letter means;
what the individual values mean is only partly published, so filters work on the codes themselves,
written in the compact range syntax public K-Face code uses (``S1~3,5``, ``L1~7,10~15``).

The walk streams with ``os.scandir`` and prunes folders whose code a filter excludes, so a filtered run
never lists the rest of the tree. A text file beside an image with the same stem (``C7.txt``) is read
for a face box (and five landmarks when present); its format is unconfirmed, so it is parsed
defensively and an unparsable file is reported and left to detection.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from ..errors import InputError
from .common import ProblemReport, is_image_name, progress_bar, sorted_entries
from .records import Box, Landmarks, Record


@dataclass(frozen=True)
class ConditionCode:
    """One letter of the K-Face path: the attribute it sets and the filter option that selects it."""

    letter: str
    attribute: str  # key in Record.attributes
    option: str  # filter keyword (and CLI flag --<option>)
    width: int  # zero padding in folder/file names (S001, L1, E01, C7)
    known: range  # values the published description lists
    meaning: str


#: The single mapping table for K-Face codes. Meanings marked unconfirmed are not relied on anywhere.
CODES: dict[str, ConditionCode] = {
    code.letter: code
    for code in [
        ConditionCode("S", "accessory", "accessories", 3, range(1, 7),
                      "accessory: S001 none; S002-S006 glasses / sunglasses / hat combinations "
                      "(which is which unconfirmed)"),
        ConditionCode("L", "lighting", "lights", 1, range(1, 31),
                      "lighting: lux level and direction; low numbers are the bright studio settings "
                      "(unconfirmed beyond that)"),
        ConditionCode("E", "expression", "expressions", 2, range(1, 4),
                      "expression: neutral, smile and a third (order unconfirmed)"),
        ConditionCode("C", "camera", "cameras", 1, range(1, 21),
                      "camera, i.e. head pose; the frontal one is C7 by default (option frontal_camera)"),
    ]
}
#: Folder levels below the subject folder, outermost first; the camera code is in the file name.
FOLDER_LETTERS = ("S", "L", "E")
DEFAULT_FRONTAL_CAMERA = 7
BOX_FORMATS = ("xywh", "xyxy", "none")
CONDITIONS = tuple(CODES[letter].attribute for letter in "SLEC")

_CODE_NAME = re.compile(r"([SLECslec])0*(\d+)")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_RANGE_PART = re.compile(r"([A-Za-z]?)0*(\d+)(?:\s*[~\-]\s*([A-Za-z]?)0*(\d+))?")

CodeFilter = Union[None, str, int, Iterable[int]]


def parse_code_set(text: str, letter: str) -> frozenset[int]:
    """Parse range syntax such as ``S1~3,5`` or ``1-7,10~15`` into the set of code numbers.

    The letter prefix is optional but, when written, must be ``letter``; ``~`` and ``-`` both mark a
    range. Raises :class:`InputError` naming the option on anything else.
    """
    code = CODES[letter]
    values: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        match = _RANGE_PART.fullmatch(part)
        prefixes = (match.group(1), match.group(3) or "") if match else ()
        if not match or any(prefix and prefix.upper() != letter for prefix in prefixes):
            raise InputError(f"--{code.option}: cannot read {part!r} in {text!r}; write {letter} codes "
                             f"like {letter}1~3,5")
        low = int(match.group(2))
        high = int(match.group(4)) if match.group(4) else low
        if low < 1 or high < low:
            raise InputError(f"--{code.option}: {part!r} is not a range of codes from {letter}1 up")
        values.update(range(low, high + 1))
    return frozenset(values)


def format_code_set(values: Iterable[int], letter: str) -> str:
    """The compact form of a set of codes: ``{1, 2, 3, 5}`` -> ``S1~3,5``."""
    ordered = sorted(set(values))
    runs: list[str] = []
    start = previous = None
    for value in ordered + [None]:
        if previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            runs.append(str(start) if start == previous else f"{start}~{previous}")
        start = previous = value
    return letter + ",".join(runs)


def code_filter(value: CodeFilter, letter: str, frontal_camera: int) -> Optional[frozenset[int]]:
    """Normalise one filter (range text, a number, numbers, ``"frontal"`` for cameras, None = all)."""
    if value is None:
        return None
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("", "all", "*"):
            return None
        if letter == "C" and word == "frontal":
            return frozenset({frontal_camera})
        return parse_code_set(value, letter)
    if isinstance(value, int):
        value = [value]
    values = frozenset(int(v) for v in value)
    if not values or min(values) < 1:
        raise InputError(f"--{CODES[letter].option}: codes are numbers from 1 up, got {sorted(values)}")
    return values


def parse_frontal_camera(value: Union[str, int, None]) -> int:
    """The frontal camera code as a number, from ``7``, ``"7"`` or ``"C7"``."""
    if value is None:
        return DEFAULT_FRONTAL_CAMERA
    match = _CODE_NAME.fullmatch(str(value).strip()) or re.fullmatch(r"0*(\d+)", str(value).strip())
    if not match or (match.lastindex == 2 and match.group(1).upper() != "C"):
        raise InputError(f"--frontal-camera: expected a camera code like C7, got {value!r}")
    return int(match.group(match.lastindex))


def _parse_code(name: str, letter: str) -> Optional[int]:
    match = _CODE_NAME.fullmatch(name)
    if match is None or match.group(1).upper() != letter:
        return None
    return int(match.group(2))


def read_face_label(path: str, box_format: str) -> tuple[Optional[Box], Optional[Landmarks]]:
    """Box and five landmarks from a K-Face per-image text file (format unconfirmed, read defensively).

    The first line holding at least four numbers gives the box (``xywh``: x, y, width, height;
    ``xyxy``: corners); when exactly ten more numbers follow, they are five (x, y) landmarks. Raises
    ``ValueError`` when no usable box is found and ``OSError`` when the file cannot be read.
    """
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    numbers_per_line = [[float(n) for n in _NUMBER.findall(line)] for line in lines]
    for row, numbers in enumerate(numbers_per_line):
        if len(numbers) < 4:
            continue
        x, y, third, fourth = numbers[:4]
        width, height = (third - x, fourth - y) if box_format == "xyxy" else (third, fourth)
        if width <= 0 or height <= 0:
            raise ValueError("box with no area")
        rest = numbers[4:] + [n for later in numbers_per_line[row + 1:] for n in later]
        landmarks = tuple((rest[i], rest[i + 1]) for i in range(0, 10, 2)) if len(rest) == 10 else None
        return (x, y, width, height), landmarks
    raise ValueError("no line with four numbers")


def iter_records(root: Path, problems: ProblemReport, *, accessories: CodeFilter = None,
                 lights: CodeFilter = None, expressions: CodeFilter = None, cameras: CodeFilter = None,
                 frontal_camera: Union[str, int, None] = None, box_format: str = "xywh",
                 progress: bool = False) -> Iterator[Record]:
    """Yield one record per K-Face image under ``root`` that passes the filters.

    Filters take range text (``"S1~3,5"``), numbers, or ``None`` for all; ``cameras="frontal"`` means
    the ``frontal_camera`` code (default C7). ``box_format`` says how to read per-image label files
    (``"none"`` skips them). Entries that fit no level of the layout are reported in ``problems``.
    """
    if box_format not in BOX_FORMATS:
        raise InputError(f"--box-format: expected one of {', '.join(BOX_FORMATS)}, got {box_format!r}")
    frontal = parse_frontal_camera(frontal_camera)
    wanted = {letter: code_filter(value, letter, frontal)
              for letter, value in zip("SLEC", (accessories, lights, expressions, cameras))}
    seen: dict[str, set[int]] = {letter: set() for letter in "SLEC"}
    subjects = [entry for entry in sorted_entries(str(root)) if not entry.name.startswith(".")]
    yielded = 0
    for subject in progress_bar(subjects, progress, "indexing K-Face subjects"):
        if not subject.is_dir():
            problems.add("file outside a subject folder", subject.name)
            continue
        for record in _walk_subject(subject, problems, wanted, seen, box_format):
            yielded += 1
            yield record
    if not yielded:
        raise InputError(_nothing_found(root, wanted, seen, subjects))


def _walk_subject(subject: os.DirEntry, problems: ProblemReport, wanted: dict[str, Optional[frozenset[int]]],
                  seen: dict[str, set[int]], box_format: str) -> Iterator[Record]:
    # Depth-first over S, L, E folders; a folder whose code is filtered out is never listed. Relative
    # paths are built as text along the way (os.path.relpath per file would dominate the walk).
    stack: list[tuple[str, str, tuple[int, ...]]] = [(subject.path, subject.name, ())]
    while stack:
        folder, relative, codes = stack.pop()
        level = len(codes)
        entries = [entry for entry in sorted_entries(folder) if not entry.name.startswith(".")]
        if level < len(FOLDER_LETTERS):
            letter = FOLDER_LETTERS[level]
            children = []
            for entry in entries:
                value = _parse_code(entry.name, letter) if entry.is_dir() else None
                if value is None:
                    problems.add(f"entry that is not a {letter} folder", f"{relative}/{entry.name}")
                    continue
                seen[letter].add(value)
                if wanted[letter] is None or value in wanted[letter]:
                    children.append((entry.path, f"{relative}/{entry.name}", codes + (value,)))
            stack.extend(reversed(children))
            continue
        stems = [entry.name.rpartition(".") for entry in entries]
        labels = {stem: entry.path for entry, (stem, _, extension) in zip(entries, stems)
                  if extension.lower() == "txt"}
        accessory, lighting, expression = codes
        for entry, (stem, _, extension) in zip(entries, stems):
            if extension.lower() == "txt":
                continue
            camera = _parse_code(stem, "C") if is_image_name(entry.name) else None
            if camera is None:
                problems.add("file that is not a C<n> image", f"{relative}/{entry.name}")
                continue
            seen["C"].add(camera)
            if wanted["C"] is not None and camera not in wanted["C"]:
                continue
            box = landmarks = None
            label = labels.get(stem)
            if label is not None and box_format != "none":
                try:
                    box, landmarks = read_face_label(label, box_format)
                except OSError:
                    problems.add("unreadable label file", f"{relative}/{stem}.txt")
                except ValueError:
                    problems.add("label file without a usable box", f"{relative}/{stem}.txt")
            yield Record(path=f"{relative}/{entry.name}", identity=subject.name,
                         attributes={"accessory": accessory, "lighting": lighting,
                                     "expression": expression, "camera": camera},
                         box=box, landmarks=landmarks)


def _nothing_found(root: Path, wanted: dict[str, Optional[frozenset[int]]], seen: dict[str, set[int]],
                   subjects: list[os.DirEntry]) -> str:
    filters = [f"{CODES[letter].option} {format_code_set(values, letter)}"
               for letter, values in wanted.items() if values is not None]
    if filters and any(seen.values()):
        present = "; ".join(f"{CODES[letter].option} {format_code_set(values, letter)}"
                            for letter, values in seen.items() if values)
        return f"no K-Face image under {root} matches {', '.join(filters)} (the tree holds {present})"
    nested = [entry.name for entry in subjects if entry.is_dir() and _holds_subjects(entry.path)]
    if nested:
        return (f"{root} holds no subject folders but looks like it holds resolution variants "
                f"({', '.join(nested[:3])}): point --root at one of them")
    return f"no K-Face images under {root} (expected {root}/<ID>/S001/L1/E01/C7.jpg)"


def _holds_subjects(folder: str) -> bool:
    # A resolution folder holds subject folders, which hold S-code folders.
    for entry in sorted_entries(folder)[:5]:
        if entry.is_dir() and any(_parse_code(child.name, "S") is not None and child.is_dir()
                                  for child in sorted_entries(entry.path)):
            return True
    return False


def normalize_options(options: dict) -> dict:
    """Options with every filter parsed to a set of codes and the frontal camera to a number.

    Parsing here, before the walk, makes a misspelt filter fail at once.
    """
    normalized = dict(options)
    frontal = parse_frontal_camera(options.get("frontal_camera"))
    if "frontal_camera" in options:
        normalized["frontal_camera"] = frontal
    for letter, code in CODES.items():
        if code.option in options:
            normalized[code.option] = code_filter(options[code.option], letter, frontal)
    if normalized.get("box_format", "xywh") not in BOX_FORMATS:
        raise InputError(f"--box-format: expected one of {', '.join(BOX_FORMATS)}, "
                         f"got {normalized['box_format']!r}")
    return normalized


def describe_options(options: dict) -> dict:
    """JSON-ready, canonical form of the options (``{"lights": "L1~7,10~15", ...}``) for manifests."""
    described: dict = {}
    for letter, code in CODES.items():
        values = code_filter(options.get(code.option), letter, parse_frontal_camera(options.get("frontal_camera")))
        described[code.option] = "all" if values is None else format_code_set(values, letter)
    described["frontal_camera"] = f"C{parse_frontal_camera(options.get('frontal_camera'))}"
    described["box_format"] = options.get("box_format", "xywh")
    return described
