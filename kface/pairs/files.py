"""The pair-file format: the request types (ratio, split shares), PairSet, and its CSV + JSON manifest reader and
writer.

A pair file is a CSV with the header ``split,path_a,path_b,label,identity_a,identity_b`` (``label`` 1 =
same person, 0 = different; ``split`` train/val/test; paths relative to the dataset root), with a JSON
manifest ``<name>.json`` beside it. See ``pairs/README.md`` for the format in full.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import InputError
from ..util.outputs import atomic_path
from ..util.tables import read_csv_rows

SPLITS = ("train", "val", "test")
HEADER = ("split", "path_a", "path_b", "label", "identity_a", "identity_b")
FORMAT = "kface-pairs"
FORMAT_VERSION = 1
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
DEFAULT_FOLDER = Path("pairs")
_WRITE_CHUNK = 65536  # CSV rows formatted at a time


# -- requests ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ratio:
    """Negatives to positives, as in the paper: ``4:6`` = 40% different-person, 60% same-person pairs."""

    negatives: int
    positives: int

    def __str__(self) -> str:
        return f"{self.negatives}:{self.positives}"

    @property
    def reduced(self) -> tuple[int, int]:
        """The ratio in lowest terms (``4:6`` -> ``(2, 3)``): pair counts come in multiples of its sum."""
        divisor = math.gcd(self.negatives, self.positives)
        return self.negatives // divisor, self.positives // divisor

    @property
    def negative_fraction(self) -> float:
        return self.negatives / (self.negatives + self.positives)


def parse_ratio(text: Union[str, Ratio]) -> Ratio:
    """``"4:6"`` (negatives:positives) or a fraction of negatives (``"0.4"``, ``"2/5"``) as a :class:`Ratio`."""
    if isinstance(text, Ratio):
        return text
    raw = str(text).strip()
    usage = (f"--ratio: expected negatives:positives such as 4:6, or the fraction of negatives such as "
             f"0.4, got {raw!r}")
    if ":" in raw:
        parts = raw.split(":")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise InputError(usage)
        negatives, positives = (int(part) for part in parts)
    else:
        try:
            fraction = Fraction(raw)
        except (ValueError, ZeroDivisionError):
            raise InputError(usage) from None
        if not 0 <= fraction <= 1:
            raise InputError(f"--ratio: a fraction of negatives must lie between 0 and 1, got {raw!r}")
        negatives, positives = fraction.numerator, fraction.denominator - fraction.numerator
    if negatives + positives == 0:
        raise InputError("--ratio: 0:0 asks for no pairs at all; give e.g. 4:6")
    return Ratio(negatives, positives)


def parse_split(text: Union[str, tuple, list]) -> tuple[float, float, float]:
    """``"0.8:0.1:0.1"`` (or ``"8:1:1"``) as train/val/test fractions summing to 1."""
    if isinstance(text, (tuple, list)):
        parts = [str(part) for part in text]
    else:
        parts = str(text).split(":")
    usage = f"--split: expected train:val:test shares such as 0.8:0.1:0.1, got {':'.join(parts)!r}"
    if len(parts) != 3:
        raise InputError(usage)
    try:
        shares = [float(part) for part in parts]
    except ValueError:
        raise InputError(usage) from None
    if any(not math.isfinite(share) or share < 0 for share in shares) or sum(shares) <= 0:
        raise InputError(usage)
    total = sum(shares)
    return tuple(share / total for share in shares)


@dataclass(frozen=True)
class PairRequest:
    """What to sample: ``pairs`` in total over the splits, at ``ratio`` in every split."""

    ratio: Ratio
    pairs: int
    split: tuple[float, float, float] = DEFAULT_SPLIT
    images_per_identity: Optional[int] = None
    seed: int = 0
    hard_negatives: bool = False
    group_by: Optional[str] = None  # an attribute naming each identity's group (e.g. "family")

    def __post_init__(self):
        if self.pairs < 1:
            raise InputError(f"--pairs: expected a positive number of pairs, got {self.pairs}")
        if self.images_per_identity is not None and self.images_per_identity < 1:
            raise InputError(f"--images-per-identity: expected 1 or more, got {self.images_per_identity}")
        if self.seed < 0:
            raise InputError(f"--seed: expected a non-negative integer, got {self.seed}")


# -- pair sets ----------------------------------------------------------------------------------------
@dataclass
class PairSet:
    """Pairs as columns: ``split``, ``path_a``, ``path_b``, ``identity_a``, ``identity_b`` (object arrays of
    str) and ``label`` (int8, 1 = same person). Paths are as written in the file, relative to ``root``
    (absolute paths stay absolute); ``manifest`` is the JSON manifest (empty for a hand-written file
    without one); ``source`` the pair file read, if any.
    """

    split: np.ndarray
    path_a: np.ndarray
    path_b: np.ndarray
    label: np.ndarray
    identity_a: np.ndarray
    identity_b: np.ndarray
    root: Path
    manifest: dict = field(default_factory=dict)
    source: Optional[Path] = None

    def __len__(self) -> int:
        return len(self.label)

    @property
    def abs_path_a(self) -> list[str]:
        """``path_a`` resolved against ``root``."""
        return [os.path.join(self.root, path) for path in self.path_a]

    @property
    def abs_path_b(self) -> list[str]:
        """``path_b`` resolved against ``root``."""
        return [os.path.join(self.root, path) for path in self.path_b]

    def select(self, split: str) -> "PairSet":
        """The pairs of one split (train, val or test), same root and manifest."""
        if split not in SPLITS:
            raise InputError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
        keep = self.split == split
        return PairSet(self.split[keep], self.path_a[keep], self.path_b[keep], self.label[keep],
                       self.identity_a[keep], self.identity_b[keep], self.root, self.manifest, self.source)

    def counts(self) -> dict:
        """``{split: {"same": n, "different": n}}`` for the splits present."""
        return {split: {"same": int(np.sum(self.label[self.split == split] == 1)),
                        "different": int(np.sum(self.label[self.split == split] == 0))}
                for split in SPLITS if np.any(self.split == split)}

    def unique_paths(self) -> list[str]:
        """Every image the pairs use, resolved against ``root``, sorted (for embedding once each)."""
        relative = np.unique(np.concatenate([self.path_a, self.path_b]).astype(str))
        return [os.path.join(self.root, path) for path in relative]


def read_pairs(path: Union[str, os.PathLike], root: Union[str, os.PathLike, None] = None) -> PairSet:
    """Read a pair file (and its ``<name>.json`` manifest, when present).

    Relative image paths resolve against ``root``; without it, against the manifest's dataset root,
    else the pair file's folder. The identity columns may be empty or absent. Any malformed row is an
    :class:`InputError` naming the file and line.
    """
    pair_path = Path(path)
    if not pair_path.is_file():
        raise InputError(f"{pair_path}: no such pair file")
    manifest = _read_manifest(pair_path.with_suffix(".json")) if pair_path.suffix.lower() != ".json" else {}
    rows = read_csv_rows(pair_path, "pair file")
    if not rows:
        raise InputError(f"{pair_path}: empty file (expected the header {','.join(HEADER)})")
    header = [name.strip().lower() for name in rows[0]]
    missing = [name for name in HEADER[:4] if name not in header]
    if missing:
        raise InputError(f"{pair_path}: header lacks {', '.join(missing)} "
                         f"(expected {','.join(HEADER)}, got {','.join(header)})")
    position = {name: header.index(name) for name in HEADER if name in header}
    width = max(position.values()) + 1
    columns: dict[str, list[str]] = {name: [] for name in HEADER}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        row = [cell.strip() for cell in row] + [""] * (width - len(row))
        values = {name: row[position[name]] if name in position else "" for name in HEADER}
        if values["split"] not in SPLITS:
            raise InputError(f"{pair_path}:{line}: split {values['split']!r} is not one of {', '.join(SPLITS)}")
        if values["label"] not in ("0", "1"):
            raise InputError(f"{pair_path}:{line}: label {values['label']!r} is not 1 (same) or 0 (different)")
        if not values["path_a"] or not values["path_b"]:
            raise InputError(f"{pair_path}:{line}: empty image path")
        for name in HEADER:
            columns[name].append(values[name])
    if not columns["label"]:
        raise InputError(f"{pair_path}: no pairs below the header")
    return PairSet(
        split=object_array(columns["split"]), path_a=object_array(columns["path_a"]),
        path_b=object_array(columns["path_b"]),
        label=np.array([value == "1" for value in columns["label"]], dtype=np.int8),
        identity_a=object_array(columns["identity_a"]), identity_b=object_array(columns["identity_b"]),
        root=_resolve_root(pair_path, root, manifest), manifest=manifest, source=pair_path)


def object_array(values: list) -> np.ndarray:
    """A 1-d object array of ``values`` (np.array would make a fixed-width string array instead)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _read_manifest(manifest_path: Path) -> dict:
    if not manifest_path.is_file():
        return {}
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{manifest_path}: unreadable pair manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{manifest_path}: a pair manifest must be a JSON object")
    return manifest


def _resolve_root(pair_path: Path, root: Union[str, os.PathLike, None], manifest: dict) -> Path:
    if root is not None:
        chosen = Path(root).expanduser()
        if not chosen.is_dir():
            raise InputError(f"{chosen}: --root is not a folder")
        return chosen.resolve()
    dataset = manifest.get("dataset")
    recorded = dataset.get("root") if isinstance(dataset, dict) else None
    if isinstance(recorded, str) and recorded:
        # A relative root in a hand-written manifest is taken from the manifest's folder.
        return (pair_path.parent / Path(recorded).expanduser()).resolve()
    return pair_path.parent.resolve()


def write_pairs(pairs: PairSet, out: Union[str, os.PathLike]) -> Path:
    """Write ``pairs`` to ``out`` (CSV) and its manifest to ``<name>.json`` beside it, atomically.

    The manifest is ``pairs.manifest`` with the file name and the counts per split and label taken
    from the pairs themselves. Returns the manifest's path.
    """
    out_path = Path(out)
    if out_path.suffix.lower() == ".json":
        raise InputError(f"{out_path}: the pair file is a CSV (its manifest takes the .json name); use .csv")
    manifest_path = out_path.with_suffix(".json")
    manifest = dict(pairs.manifest)
    manifest["pairs_file"] = out_path.name
    counts = pairs.counts()
    previous = manifest.get("counts", {})
    manifest["counts"] = {split: {**previous.get(split, {}), **counts[split]} for split in counts}
    columns = [pairs.split, pairs.path_a, pairs.path_b, np.array(["0", "1"], dtype=object)[pairs.label],
               pairs.identity_a, pairs.identity_b]
    rows = zip(*(_csv_fields(column) for column in columns))
    with atomic_path(out_path) as temp_csv, atomic_path(manifest_path) as temp_json:
        with open(temp_csv, "w", newline="", encoding="utf-8") as handle:
            handle.write(",".join(HEADER) + "\n")
            while chunk := list(itertools.islice(rows, _WRITE_CHUNK)):  # bounded memory for big files
                handle.write("\n".join(map(",".join, chunk)) + "\n")
        temp_json.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest_path


def _csv_fields(column: np.ndarray) -> list[str]:
    """A column's values as CSV fields, quoted only where needed (each distinct value quoted once)."""
    values = column.tolist()
    special = [value for value in set(values) if any(mark in value for mark in ',"\r\n')]
    if not special:
        return values
    quoted = {value: '"' + value.replace('"', '""') + '"' for value in special}
    return [quoted.get(value, value) for value in values]


def default_out_path(kind: str, request: PairRequest) -> Path:
    """``pairs/<kind>-<N>-<P>[-k<K>][-hard]-seed<S>.csv``: the name says how the file was made."""
    parts = [kind, f"{request.ratio.negatives}-{request.ratio.positives}"]
    if request.images_per_identity:
        parts.append(f"k{request.images_per_identity}")
    if request.hard_negatives:
        parts.append("hard")
    parts.append(f"seed{request.seed}")
    return DEFAULT_FOLDER / ("-".join(parts) + ".csv")
