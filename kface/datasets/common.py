"""What every dataset adapter shares: the index it builds, the problems report, and small parsers."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from ..util import progress
from .records import Box, Landmarks, Record

#: File name endings read as images (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

#: How many offending names a problems report keeps per kind of problem.
EXAMPLES_KEPT = 5

_GENDER_WORDS = {
    "male": "male", "m": "male", "man": "male", "남": "male", "남자": "male", "남성": "male",
    "female": "female", "f": "female", "woman": "female", "여": "female", "여자": "female", "여성": "female",
}


def is_image_name(name: str) -> bool:
    """True when a file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name[name.rfind("."):].lower() in IMAGE_EXTENSIONS if "." in name else False


def normalize_gender(value: object) -> Optional[str]:
    """``"male"``/``"female"`` from the spellings labels use (M/F, male/female, 남/여); None otherwise."""
    if value is None:
        return None
    return _GENDER_WORDS.get(str(value).strip().lower())


def age_group(age: Optional[int], width: int = 10) -> Optional[int]:
    """The age band an age falls in (0 for 0-9, 1 for 10-19, ...), or None without an age."""
    return None if age is None else int(age) // width


def sorted_entries(folder: str) -> list[os.DirEntry]:
    """The entries of one folder sorted by name, so that indexes never depend on file-system order."""
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def walk_files(folder: str, relative: str = "") -> Iterator[tuple[os.DirEntry, str]]:
    """Every non-hidden file below ``folder``, with its path relative to the root as POSIX text.

    ``relative`` is ``folder``'s own relative path ("" for the root). Folders are listed in name order.
    """
    stack = [(folder, relative)]
    while stack:
        current, prefix = stack.pop()
        subfolders = []
        for entry in sorted_entries(current):
            if entry.name.startswith("."):
                continue
            path = f"{prefix}/{entry.name}" if prefix else entry.name
            if entry.is_dir():
                subfolders.append((entry.path, path))
            else:
                yield entry, path
        stack.extend(reversed(subfolders))


@dataclass
class ProblemReport:
    """Problems met while indexing: counted per kind, with the first few offending names kept.

    Kinds are short phrases such as ``"unreadable label file"``; nothing is dropped silently, the
    report says how many and which (the first :data:`EXAMPLES_KEPT`).
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, item: str) -> None:
        """Count one problem of ``kind`` about ``item`` (a path relative to the root, or a row)."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(item)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def lines(self) -> list[str]:
        """One readable line per kind: ``3 x unreadable label file (e.g. a.json, b.json, c.json)``."""
        lines = []
        for kind in sorted(self.counts):
            count = self.counts[kind]
            shown = ", ".join(self.examples[kind])
            more = ", ..." if count > len(self.examples[kind]) else ""
            lines.append(f"{count} x {kind} (e.g. {shown}{more})")
        return lines

    def to_dict(self) -> dict:
        """JSON-ready form: ``{kind: {"count": n, "examples": [...]}}``."""
        return {kind: {"count": self.counts[kind], "examples": list(self.examples[kind])}
                for kind in sorted(self.counts)}


#: The column naming, for a photo made from another (an age editor's edit), the photo it was made from.
EDITED_COLUMN = "edited_from"


class DatasetIndex:
    """The images of one dataset, held as columns (paths, identity codes, attribute columns).

    Only what the sampler and the attribute heads need is kept per image, so that a large tree fits in
    memory: a relative path, an identity code, one small value per attribute, and a box and landmarks
    only where a label file gave them. Iterating yields :class:`~kface.datasets.records.Record` objects.

    ``conditions`` names the attributes that vary by design within one identity (K-Face's accessory,
    lighting, expression and camera codes; the aging set's age band): choosing *K* images per identity
    spreads over them. ``problems`` is the :class:`ProblemReport` of the indexing run.
    """

    def __init__(self, kind: str, root: Path, paths: list[str], identity_codes: np.ndarray,
                 identity_names: list[str], attributes: dict[str, list], boxes: dict[int, Box],
                 landmarks: dict[int, Landmarks], problems: ProblemReport, options: dict,
                 conditions: tuple[str, ...] = ()):
        self.kind = kind
        self.root = root
        self.paths = paths
        self.identity_codes = identity_codes
        self.identity_names = identity_names
        self.attributes = attributes
        self.boxes = boxes
        self.landmarks = landmarks
        self.problems = problems
        self.options = options
        self.conditions = conditions

    @classmethod
    def from_records(cls, kind: str, root: Path, records: Iterable[Record],
                     problems: Optional[ProblemReport] = None, options: Optional[dict] = None,
                     conditions: tuple[str, ...] = (), keep_order: bool = False) -> "DatasetIndex":
        """Build an index from a stream of records (see :class:`IndexBuilder`; ``keep_order``: rows in the
        stream's order rather than sorted by path)."""
        builder = IndexBuilder()
        for record in records:
            builder.add(record)
        return builder.build(kind, root, problems or ProblemReport(), options or {}, conditions, keep_order)

    def __len__(self) -> int:
        return len(self.paths)

    def edited_mask(self) -> np.ndarray:
        """Which rows are photos made from others (an age editor's edits, named by their source in
        :data:`EDITED_COLUMN`): they may train a model's identities, never make a pair or score one."""
        sources = self.attributes.get(EDITED_COLUMN) or [None] * len(self)
        return np.array([bool(source) for source in sources], dtype=bool)

    def record(self, i: int) -> Record:
        """The :class:`Record` of image ``i``."""
        attributes = {key: column[i] for key, column in self.attributes.items() if column[i] is not None}
        return Record(path=self.paths[i], identity=self.identity_names[self.identity_codes[i]],
                      attributes=attributes, box=self.boxes.get(i), landmarks=self.landmarks.get(i))

    def __iter__(self) -> Iterator[Record]:
        return (self.record(i) for i in range(len(self.paths)))

    @property
    def records(self) -> list[Record]:
        """All records as a list (materialised on each call; iterate the index to stream instead)."""
        return list(self)

    @property
    def identity_count(self) -> int:
        """How many distinct identities (an empty identity, as in All-Age-Faces, counts as one)."""
        return len(self.identity_names)

    def absolute_path(self, i: int) -> Path:
        """The file of image ``i`` on disk."""
        return self.root / self.paths[i]


class IndexBuilder:
    """Collects records one by one into columns, then sorts them by path into a :class:`DatasetIndex`.

    Sorting makes the index, and so every sample drawn from it, independent of the order in which the
    file system listed the files.
    """

    def __init__(self) -> None:
        self._paths: list[str] = []
        self._identities: list[str] = []
        self._attributes: dict[str, list] = {}
        self._boxes: dict[int, Box] = {}
        self._landmarks: dict[int, Landmarks] = {}

    def add(self, record: Record) -> None:
        """Append one record."""
        row = len(self._paths)
        self._paths.append(record.path)
        self._identities.append(record.identity)
        for key in record.attributes.keys() - self._attributes.keys():
            self._attributes[key] = [None] * row
        for key, column in self._attributes.items():
            column.append(record.attributes.get(key))
        if record.box is not None:
            self._boxes[row] = record.box
        if record.landmarks is not None:
            self._landmarks[row] = record.landmarks

    def build(self, kind: str, root: Path, problems: ProblemReport, options: dict,
              conditions: tuple[str, ...] = (), keep_order: bool = False) -> DatasetIndex:
        """The finished index, rows sorted by path (``keep_order``: in the order added), identity codes in
        sorted name order."""
        order = list(range(len(self._paths))) if keep_order else sorted(range(len(self._paths)),
                                                                          key=self._paths.__getitem__)
        new_row = {old: new for new, old in enumerate(order)}
        names = sorted(set(self._identities))
        code_of = {name: code for code, name in enumerate(names)}
        identities = self._identities
        return DatasetIndex(
            kind=kind, root=root, paths=[self._paths[i] for i in order],
            identity_codes=np.fromiter((code_of[identities[i]] for i in order), dtype=np.int64,
                                       count=len(order)),
            identity_names=names,
            attributes={key: [column[i] for i in order] for key, column in sorted(self._attributes.items())},
            boxes={new_row[i]: box for i, box in self._boxes.items()},
            landmarks={new_row[i]: points for i, points in self._landmarks.items()},
            problems=problems, options=dict(options), conditions=conditions)


def progress_bar(items: Sequence, enabled: bool, description: str) -> Iterator:
    """Iterate ``items`` with a progress bar on stderr (shown only at a terminal and when ``enabled``)."""
    bar = progress.progress_bar(len(items), description, enabled)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()
