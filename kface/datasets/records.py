"""The one record type every dataset adapter yields: one image, its identity and what the layout knows."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

Box = tuple[float, float, float, float]  # x, y, width, height in pixels of the original image
Landmarks = tuple[tuple[float, float], ...]  # five (x, y) points: eyes, nose, mouth corners


@dataclass(frozen=True)
class Record:
    """One image of a dataset.

    ``path`` is relative to the dataset root (POSIX separators), ``identity`` a string id (empty when
    the layout has no identities, e.g. All-Age-Faces). ``attributes`` holds what the layout carries:
    ``age`` (int, years at photo), ``gender`` ("male"/"female"), and layout codes such as
    ``accessory``, ``lighting``, ``expression``, ``camera``. ``box`` and ``landmarks``, where a label
    file gives them, are used instead of detection.
    """

    path: str
    identity: str
    attributes: dict = field(default_factory=dict, compare=False, hash=False)
    box: Optional[Box] = None
    landmarks: Optional[Landmarks] = None

    @property
    def age(self) -> Optional[int]:
        return self.attributes.get("age")

    @property
    def gender(self) -> Optional[str]:
        return self.attributes.get("gender")
