"""Subgroups of an overlap report: image attributes, each pair's group, and the per-group table."""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..datasets import load_dataset
from ..datasets.kface_layout import CODES
from ..distances import Distance
from ..errors import InputError
from ..metrics import overlap_area

#: Record attributes that make subgroups, in table order, with the name the table shows.
SUBGROUP_ATTRIBUTES: dict[str, str] = {
    "gender": "gender",
    "age_group": "age group",
    "lighting": "lighting",
    "accessory": "accessory",
    "expression": "expression",
    "camera": "pose (camera)",
}
#: A pair whose two images differ in an attribute falls in this group.
MIXED = "mixed"
AGE_BAND_YEARS = 10


def _group_value(key: str, value: Any) -> Optional[str]:
    """An attribute value as the group label the table shows (K-Face codes keep their letter)."""
    if value is None:
        return None
    if key == "age_group":
        low = int(value) // AGE_BAND_YEARS * AGE_BAND_YEARS
        return f"{low}-{low + AGE_BAND_YEARS - 1}"
    letters = {code.attribute: code.letter for code in CODES.values()}
    return f"{letters[key]}{value}" if key in letters else str(value)


def load_image_attributes(kind: str, root: Union[str, os.PathLike], options: Optional[dict] = None,
                          progress: bool = False) -> dict[str, dict[str, str]]:
    """``{absolute image path: {attribute: group label}}`` for every image of a dataset that labels any.

    Attributes are those of :data:`SUBGROUP_ATTRIBUTES` (``age`` becomes its ten-year ``age_group``).
    """
    index = load_dataset(kind, root, progress=progress, **(options or {}))
    columns = dict(index.attributes)
    if "age" in columns:
        columns["age_group"] = columns.pop("age")
    columns = {key: columns[key] for key in SUBGROUP_ATTRIBUTES if key in columns}
    labelled: dict[str, dict[str, str]] = {}
    for row, path in enumerate(index.paths):
        values = {key: _group_value(key, column[row]) for key, column in columns.items() if column[row] is not None}
        if values:
            labelled[os.path.normpath(os.path.join(index.root, path))] = values
    return labelled


def attributes_for_pairs(pairs, attributes_dataset: Optional[str], attributes_root: Optional[str],
                          progress: bool) -> tuple[Optional[dict], str]:
    """The image attributes to group pairs by, and where they came from (or why there are none)."""
    if attributes_dataset is not None:
        if attributes_root is None:
            raise InputError("--attributes-dataset needs --attributes-root (the folder that dataset indexes)")
        return load_image_attributes(attributes_dataset, attributes_root, progress=progress), \
            f"the {attributes_dataset} dataset at {attributes_root}"
    dataset = pairs.manifest.get("dataset") if isinstance(pairs.manifest.get("dataset"), dict) else {}
    kind, root = dataset.get("kind"), dataset.get("root")
    if not kind or not root:
        return None, "the pair file has no manifest naming its dataset; pass --attributes-dataset and --attributes-root"
    filters = pairs.manifest.get("filters") or {}
    if not os.path.isdir(root):
        return None, f"the pair manifest's dataset root {root} is not here; pass --attributes-root"
    try:
        return load_image_attributes(kind, root, filters, progress), f"the pair manifest's {kind} dataset at {root}"
    except InputError as error:
        return None, f"could not index the pair manifest's {kind} dataset ({error})"


def pair_groups(paths_a: Sequence[str], paths_b: Sequence[str],
                attributes: dict[str, dict[str, str]]) -> dict[str, np.ndarray]:
    """Each pair's group per attribute: the shared value, ``"mixed"``, or None where an image lacks it.

    Only attributes that at least one pair has are returned (object arrays, one entry per pair).
    """
    a = [attributes.get(os.path.normpath(path), {}) for path in paths_a]
    b = [attributes.get(os.path.normpath(path), {}) for path in paths_b]
    groups = {}
    for key in SUBGROUP_ATTRIBUTES:
        column = np.empty(len(a), dtype=object)
        for i, (left, right) in enumerate(zip(a, b)):
            if key in left and key in right:
                column[i] = left[key] if left[key] == right[key] else MIXED
        if any(value is not None for value in column):
            groups[key] = column
    return groups


def _group_order(value: str) -> tuple:
    """Natural order (S2 before S10, 20-29 before 30-39), ``mixed`` last."""
    digits = "".join(ch if ch.isdigit() else " " for ch in value).split()
    return (value == MIXED, [int(d) for d in digits[:1]], value)


def subgroup_table(distances: np.ndarray, same: np.ndarray, threshold: float,
                   groups: dict[str, np.ndarray]) -> list[dict]:
    """Accuracy, FAR, FRR and overlap per subgroup at ``threshold`` (one row per attribute value).

    ``far``/``frr``/``overlap`` are None where the group lacks the pairs they need (``overlap``:
    two distinct distances of each class).
    """
    rows = []
    for key, column in groups.items():
        values = sorted({value for value in column if value is not None}, key=_group_order)
        for value in values:
            member = column == value
            d, s = distances[member], same[member]
            accepted = Distance.is_same(d, threshold)
            try:
                overlap: Optional[float] = overlap_area(d[s], d[~s], "kde")
            except InputError:
                overlap = None
            rows.append({
                "attribute": key,
                "group": value,
                "n_same": int(s.sum()),
                "n_diff": int((~s).sum()),
                "accuracy": float(np.mean(accepted == s)),
                "false_accept_rate": float(np.mean(accepted[~s])) if (~s).any() else None,
                "false_reject_rate": float(np.mean(~accepted[s])) if s.any() else None,
                "overlap": overlap,
            })
    return rows
