"""The editor's training data: small aligned chips of a dataset's faces with their age class and group."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..attributes.labels import AgeBins
from ..embeddings.embedder import Embedder
from ..errors import InputError
from ..util.outputs import write_npz
from . import AGE_EDGES

log = logging.getLogger("kface")

#: The detection settings of the shipped Korean models (tight album crops: MTCNN after HOG, then the crop).
DETECTOR = "auto"
FALLBACK = "whole-image"


@dataclass
class ChipSet:
    """Aligned chips of one dataset: pixels, age class, group name and path per face."""

    chips: np.ndarray  # (N, S, S, 3) uint8 RGB
    ages: np.ndarray  # (N,) int64 age class 0..7
    groups: np.ndarray  # (N,) str: the group (family) each face belongs to
    paths: np.ndarray  # (N,) str: image path relative to the dataset root

    def __len__(self) -> int:
        return len(self.ages)

    def subset(self, rows: np.ndarray) -> ChipSet:
        return ChipSet(self.chips[rows], self.ages[rows], self.groups[rows], self.paths[rows])

    def save(self, path: os.PathLike) -> None:
        write_npz(path, chips=self.chips, ages=self.ages, groups=self.groups.astype(str),
                  paths=self.paths.astype(str))

    @classmethod
    def load(cls, path: os.PathLike) -> ChipSet:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["chips"], data["ages"], data["groups"], data["paths"])


def shrink(chips: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S, 3) uint8 chips resized to ``size`` px (area-averaging; the identity when S == size)."""
    from PIL import Image

    if chips.shape[1] == size:
        return chips
    return np.stack([np.asarray(Image.fromarray(chip).resize((size, size), Image.BOX if size < chip.shape[0]
                                                                else Image.BICUBIC)) for chip in chips])


def age_classes(ages: list) -> np.ndarray:
    """The Korean age class (0..7) of each age in years; -1 where the age is missing."""
    return AgeBins(AGE_EDGES).groups(ages)


def chip_set(index, size: int, group_by: str | None = "family", progress: bool = False,
             device: str = "auto") -> ChipSet:
    """The faces of ``index`` (a :class:`~kface.datasets.DatasetIndex` with an ``age`` column) as ``size``-px
    aligned chips (dlib's 150 px alignment, shrunk), skipping images without an age or without a readable face
    (logged). Faces are found once and kept in kface's face cache."""
    if "age" not in index.attributes:
        raise InputError(f"the {index.kind} dataset has no age column; age editing needs each face's age")
    if group_by is not None and group_by not in index.attributes:
        raise InputError(f"the {index.kind} dataset has no {group_by!r} column for --group-by")
    ages = age_classes(index.attributes["age"])
    rows = np.flatnonzero(ages >= 0)
    paths = [str(Path(index.root) / index.paths[i]) for i in rows]
    embedder = Embedder(detector=DETECTOR, fallback=FALLBACK, device=device, progress=progress, workers=0)
    try:
        entries, errors = embedder.faces(paths, on_error="skip")
    finally:
        embedder.close()
    for message in list(errors.values())[:5]:
        log.warning("skipped: %s", message)
    kept = [i for i, entry in enumerate(entries) if entry is not None]
    if not kept:
        raise InputError(f"{index.root}: no face could be read from the {len(paths)} images with an age")
    chips = shrink(np.stack([entries[i].chip for i in kept]), size)
    groups = (np.array([index.attributes[group_by][rows[i]] for i in kept]) if group_by is not None
              else np.array([index.identity_names[index.identity_codes[rows[i]]] for i in kept]))
    return ChipSet(chips, ages[rows[kept]].astype(np.int64), groups.astype(str),
                   np.array([index.paths[rows[i]] for i in kept]))
