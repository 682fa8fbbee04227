"""Choosing a dataset's groups (lists of families, added groups) and merging identities that share photos."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..datasets import DatasetIndex, load_dataset
from ..errors import InputError
from ..util.hashing import file_sha256


def load_index(kind: str, root: os.PathLike, layout_options: dict, progress: bool = False) -> DatasetIndex:
    """The ``kind`` dataset under ``root`` with the layout options that were given (None: not given)."""
    return load_dataset(kind, root, progress=progress, **{k: v for k, v in layout_options.items() if v is not None})


def distinct_images(index, rows: np.ndarray, group_by: str) -> tuple:
    """An index of ``rows`` of ``index`` in which every image is one person's, once.

    Album sets file one scan under several identities: a grandmother shared by two families appears
    under both family numbers, with the same photos. Such identities are one person here (merged, and
    their groups merged with them, so no split or fold holds the same face twice); repeated copies are
    kept once; images whose bytes are also outside ``rows`` (e.g. in a model's training families) are
    left out. Returns the new index and what was done, counted.
    """
    digests = [file_sha256(index.absolute_path(row)) for row in range(len(index))]
    chosen = set(rows.tolist())
    outside = {digests[row] for row in range(len(index)) if row not in chosen}
    kept = [int(row) for row in rows if digests[row] not in outside]
    identity = _merged(kept, digests, index.identity_codes)
    groups = index.attributes.get(group_by)
    names = {code: index.identity_names[code] for code in set(identity.values())}
    if groups is not None:
        group_of_identity = _merged_groups(kept, identity, groups)
    seen: set = set()
    records, repeated = [], 0
    for row in kept:
        key = (identity[row], digests[row])
        if key in seen:
            repeated += 1
            continue
        seen.add(key)
        record = index.record(row)
        attributes = dict(record.attributes)
        if groups is not None:
            attributes[group_by] = group_of_identity[identity[row]]
        records.append(replace(record, identity=names[identity[row]], attributes=attributes))
    merged_identities = len({int(index.identity_codes[row]) for row in kept}) - len(set(identity.values()))
    counts = {"also_outside": len(rows) - len(kept), "repeated": repeated, "identities_merged": merged_identities}
    return DatasetIndex.from_records(index.kind, index.root, records, index.problems, index.options,
                                     index.conditions), counts


def _merged(rows: list[int], digests: list[str], codes: np.ndarray) -> dict[int, int]:
    """Row -> identity code, identities that share any image joined (union-find, smallest code wins)."""
    parent: dict[int, int] = {}

    def find(code: int) -> int:
        while parent.setdefault(code, code) != code:
            parent[code] = parent[parent[code]]
            code = parent[code]
        return code

    first_owner: dict[str, int] = {}
    for row in rows:
        code = int(codes[row])
        other = first_owner.setdefault(digests[row], code)
        a, b = find(code), find(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {row: find(int(codes[row])) for row in rows}


def _merged_groups(rows: list[int], identity: dict[int, int], groups: list) -> dict[int, str]:
    """Merged identity -> its group name: groups joined by a shared person become one ("F1+F2")."""
    members: dict[int, set] = {}
    for row in rows:
        members.setdefault(identity[row], set()).add(groups[row])
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for names in members.values():
        first, *rest = sorted(names)
        find(first)
        for name in rest:
            a, b = find(first), find(name)
            if a != b:
                parent[max(a, b)] = min(a, b)
    joined: dict[str, set] = {}
    for name in list(parent):
        joined.setdefault(find(name), set()).add(name)
    label = {root: "+".join(sorted(names)) for root, names in joined.items()}
    return {code: label[find(next(iter(names)))] for code, names in members.items()}


def subset_index(index, rows: np.ndarray, keep_order: bool = False):
    """A new index of ``rows`` of ``index``, sorted by path (``keep_order``: in the order of ``rows``)."""
    return DatasetIndex.from_records(index.kind, index.root, (index.record(int(i)) for i in rows),
                                     index.problems, index.options, index.conditions, keep_order)


def group_rows(index, column: str, keep: Optional[set[str]] = None, drop: Optional[set[str]] = None) -> np.ndarray:
    """The rows of ``index`` whose ``column`` is in ``keep`` (when given) and not in ``drop``."""
    values = index.attributes.get(column)
    if values is None:
        raise InputError(f"the {index.kind} dataset has no {column!r} column")
    rows = [i for i, value in enumerate(values) if (keep is None or value in keep) and not (drop and value in drop)]
    if not rows:
        raise InputError(f"no image is left after choosing {column} groups")
    return np.array(rows, dtype=np.int64)


def restrict_groups(index, column: str, keep: Optional[set[str]] = None, drop: Optional[set[str]] = None):
    """``index`` limited to images whose ``column`` is in ``keep`` (when given) and not in ``drop``."""
    return subset_index(index, group_rows(index, column, keep, drop))


def read_group_list(path: os.PathLike) -> set[str]:
    """Group names, one per line (``#`` starts a comment). A line ``F1+F2`` (groups joined by a shared
    person, as :func:`distinct_images` names them) stands for each of its parts."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the group list ({exc.strerror})") from None
    names = {part.strip() for line in lines for part in line.split("#", 1)[0].split("+")} - {""}
    if not names:
        raise InputError(f"{path}: the group list names no group")
    return names


def split_edited(index) -> tuple[np.ndarray, np.ndarray]:
    """(the rows of real photos, the rows of edited ones): a dataset may hold photos made from others (an age
    editor's faces), named by their source in ``edited_from``; they may train a model, never score one."""
    edited = index.edited_mask()
    return np.flatnonzero(~edited), np.flatnonzero(edited)


def split_added(index, group_by: str, listed: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """(the rows of ``index`` outside the ``listed`` groups, the rows in them): the groups a protocol run adds
    to every fold's training only. A merged group (``F1+F2``) is added when all its parts are listed; one
    listed only in part would put a person on both sides, an input error."""
    groups = index.attributes.get(group_by)
    if groups is None:
        raise InputError(f"the {index.kind} dataset has no {group_by!r} column")
    straddling = sorted({group for group in groups if "+" in group
                         and 0 < sum(part in listed for part in group.split("+")) < len(group.split("+"))})
    if straddling:
        raise InputError(f"--add-groups: {', '.join(straddling)} share a person with groups not listed; "
                         f"list every part or none")
    is_added = np.array([group.split("+")[0] in listed for group in groups], dtype=bool)
    if not is_added.any():
        raise InputError("--add-groups: none of the listed groups is in the data")
    if is_added.all():
        raise InputError("--add-groups: every group is listed; nothing is left to score")
    return np.flatnonzero(~is_added), np.flatnonzero(is_added)


