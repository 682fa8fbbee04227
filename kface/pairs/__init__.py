"""Verification pairs: the pair-file format (reader and writer) and the sampler that makes pair files.

A pair file is a CSV with the header ``split,path_a,path_b,label,identity_a,identity_b`` (``label`` 1 =
same person, 0 = different; ``split`` train/val/test; paths relative to the dataset root), with a JSON
manifest ``<name>.json`` beside it. See ``pairs/README.md`` for the format in full.

The sampler (:func:`sample_pairs`) draws, from a :class:`~kface.datasets.DatasetIndex`:

- identity-disjoint splits (an identity's images all fall in one split), or group-disjoint ones with
  ``group_by`` (e.g. ``family``: related people, who look alike, never straddle two splits);
- exactly the requested negative:positive ratio in every split;
- same-person pairs spread as evenly as possible over identities (each identity gives about the same
  number, up to all the pairs it has), never a self-pair, never the same two images twice;
- different-person pairs drawn identity first (so a person with 500 images weighs as much as one with
  5), optionally hard (both images of the same gender and age band);
- optionally ``K`` images per identity, chosen with the seed and spread over the layout's conditions.

Every random draw comes from ``numpy.random.SeedSequence(seed)``, one child stream per purpose, so the
same index and request give a byte-identical file. Requests that the data cannot meet fail before
anything is written, saying what is achievable.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..datasets import ADAPTERS, DatasetIndex, age_group
from ..errors import InputError
from ..outputs import atomic_path

SPLITS = ("train", "val", "test")
HEADER = ("split", "path_a", "path_b", "label", "identity_a", "identity_b")
FORMAT = "kface-pairs"
FORMAT_VERSION = 1
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
DEFAULT_FOLDER = Path("pairs")
#: Attributes that hard negatives match on, where the dataset has them.
HARD_NEGATIVE_KEYS = ("gender", "age")

# A same-identity pair index space no larger than this many times the pairs wanted from it is
# enumerated; larger ones are sampled with rejection of repeats, which then converges fast.
_DENSE_FACTOR = 3
# Identity-balanced draws of different-person pairs stop after this many rounds (see
# _balanced_negative_keys); the rest is drawn uniformly over all allowed pairs.
_BALANCED_ROUNDS = 16
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
    try:
        with open(pair_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{pair_path}: cannot read the pair file ({exc})") from None
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
        split=_object_array(columns["split"]), path_a=_object_array(columns["path_a"]),
        path_b=_object_array(columns["path_b"]),
        label=np.array([value == "1" for value in columns["label"]], dtype=np.int8),
        identity_a=_object_array(columns["identity_a"]), identity_b=_object_array(columns["identity_b"]),
        root=_resolve_root(pair_path, root, manifest), manifest=manifest, source=pair_path)


def _object_array(values: list) -> np.ndarray:
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


# -- the sampler ----------------------------------------------------------------------------------------
@dataclass
class _Pool:
    """The images pairs are drawn from, grouped by identity: ``images[offsets[g]:offsets[g]+sizes[g]]``."""

    images: np.ndarray  # index rows, grouped by identity, in a seeded order within each group
    identities: np.ndarray  # identity code per group
    offsets: np.ndarray
    sizes: np.ndarray


@dataclass
class _SplitPlan:
    name: str
    groups: np.ndarray  # group numbers of the pool in this split
    negatives: int
    positives: int
    positive_capacity: int = 0
    negative_capacity: int = 0


def require_identities(kind: str) -> None:
    """Refuse, before any indexing, a layout whose images are all different people (All-Age-Faces)."""
    adapter = ADAPTERS.get(kind)
    if adapter is not None and not adapter.has_identities:
        raise InputError(f"--dataset {kind}: every image is a different person, so there are no same-person "
                         f"pairs to make; this set serves age and gender training (train-attributes), "
                         f"not make-pairs")


def sample_pairs(index: DatasetIndex, request: PairRequest) -> PairSet:
    """Draw the pairs ``request`` asks for from ``index`` (see the module docstring for the rules).

    Raises :class:`InputError`, before anything is drawn, when the layout has no identities (All-Age-
    Faces) or when the identities and images cannot give the requested pairs; the message says how many
    pairs are achievable.
    """
    require_identities(index.kind)
    streams = [np.random.default_rng(child) for child in np.random.SeedSequence(request.seed).spawn(4)]
    select_rng, split_rng, positive_rng, negative_rng = streams
    pool, excluded = _build_pool(index, request.images_per_identity, select_rng)
    strata = _strata(index, pool) if request.hard_negatives else None
    groups = identity_groups(index, pool.identities, request.group_by) if request.group_by else None
    plans = _plan_splits(pool, request, split_rng, strata, groups)
    split_names, firsts, seconds, labels = [], [], [], []
    for plan, positive_stream, negative_stream in zip(plans, positive_rng.spawn(3), negative_rng.spawn(3)):
        if plan.positives + plan.negatives == 0:
            continue
        same = _draw_positives(pool, plan.groups, plan.positives, positive_stream)
        different = _draw_negatives(pool, plan.groups, plan.negatives, negative_stream, strata)
        pair_rows = np.concatenate([same, different]).reshape(-1, 2)
        # Random side per pair and a shuffled row order, so neither position nor order gives a label away.
        swap = negative_stream.random(len(pair_rows)) < 0.5
        pair_rows[swap] = pair_rows[swap][:, ::-1]
        pair_labels = np.concatenate([np.ones(len(same) // 2, np.int8), np.zeros(len(different) // 2, np.int8)])
        order = negative_stream.permutation(len(pair_rows))
        firsts.append(pair_rows[order, 0])
        seconds.append(pair_rows[order, 1])
        labels.append(pair_labels[order])
        split_names.append(np.full(len(order), plan.name, dtype=object))
    first = np.concatenate(firsts)
    second = np.concatenate(seconds)
    paths = _object_array(index.paths)
    names = _object_array(index.identity_names)
    manifest = _manifest(index, request, pool, plans, excluded)
    return PairSet(split=np.concatenate(split_names), path_a=paths[first], path_b=paths[second],
                   label=np.concatenate(labels), identity_a=names[index.identity_codes[first]],
                   identity_b=names[index.identity_codes[second]], root=index.root, manifest=manifest)


def _build_pool(index: DatasetIndex, per_identity: Optional[int],
                rng: np.random.Generator) -> tuple[_Pool, dict]:
    """Group usable images by identity in a seeded order; keep ``per_identity`` of each, if asked."""
    codes = index.identity_codes
    excluded: dict = {}
    usable = np.ones(len(codes), dtype=bool)
    if "" in index.identity_names:
        usable &= codes != index.identity_names.index("")
        excluded["images_without_identity"] = int(np.sum(~usable))
    rows = np.flatnonzero(usable)
    # Sorting by (identity, random key) groups the images and shuffles them within each group at once.
    rows = rows[np.lexsort((rng.random(len(rows)), codes[rows]))]
    identities, offsets, sizes = np.unique(codes[rows], return_index=True, return_counts=True)
    if per_identity is not None:
        enough = sizes >= per_identity
        excluded["identities_with_fewer_images"] = int(np.sum(~enough))
        if not np.any(enough):
            raise InputError(f"--images-per-identity {per_identity}: no identity has that many images "
                             f"(the most any has is {int(sizes.max()) if len(sizes) else 0})")
        conditions = _condition_codes(index, index.conditions)
        chosen = []
        for offset, size in zip(offsets[enough], sizes[enough]):
            group = rows[offset:offset + size]
            chosen.append(group[_spread(conditions[group], per_identity)] if conditions is not None
                          else group[:per_identity])
        rows = np.concatenate(chosen)
        identities = identities[enough]
        sizes = np.full(len(identities), per_identity, dtype=np.int64)
        offsets = np.arange(len(identities), dtype=np.int64) * per_identity
    return _Pool(rows, identities, offsets.astype(np.int64), sizes.astype(np.int64)), excluded


def _condition_codes(index: DatasetIndex, names: tuple[str, ...]) -> Optional[np.ndarray]:
    """One integer column per condition attribute (ages by decade); None when the layout has none."""
    columns = []
    for name in names:
        values = index.attributes.get(name)
        if values is None:
            continue
        if name == "age":
            values = [age_group(value) for value in values]
        mapping: dict = {}
        columns.append([mapping.setdefault(value, len(mapping)) for value in values])
    if not columns:
        return None
    return np.array(columns, dtype=np.int64).T


def _spread(conditions: np.ndarray, count: int) -> np.ndarray:
    """Positions of ``count`` rows chosen greedily so that each condition's values are used evenly.

    Each step takes the first row (rows come in a seeded order) whose condition values have been used
    least so far, summed over the conditions.
    """
    shifted = conditions + np.concatenate([[0], np.cumsum(conditions.max(axis=0) + 1)[:-1]])
    used = np.zeros(int(shifted.max()) + 1, dtype=np.int64)
    taken = np.zeros(len(conditions), dtype=bool)
    chosen = []
    for _ in range(count):
        score = used[shifted].sum(axis=1)
        score[taken] = np.iinfo(np.int64).max
        pick = int(np.argmin(score))
        chosen.append(pick)
        taken[pick] = True
        used[shifted[pick]] += 1
    return np.array(chosen, dtype=np.int64)


def _strata(index: DatasetIndex, pool: _Pool) -> np.ndarray:
    """Hard-negative stratum per pool image (same gender and age band), -1 where a label is missing."""
    keys = [key for key in HARD_NEGATIVE_KEYS if key in index.attributes]
    if not keys:
        raise InputError(f"--hard-negatives needs gender or age labels, and the {index.kind} dataset has "
                         f"neither; leave the option out")
    columns = []
    for key in keys:
        values = [index.attributes[key][row] for row in pool.images]
        columns.append([age_group(value) if key == "age" else value for value in values])
    mapping: dict = {}
    strata = np.empty(len(pool.images), dtype=np.int64)
    for position, combination in enumerate(zip(*columns)):
        strata[position] = -1 if None in combination else mapping.setdefault(combination, len(mapping))
    if not mapping:
        raise InputError(f"--hard-negatives: no image has both a {' and '.join(keys)} label")
    return strata


def _largest_remainder(total: int, shares: tuple[float, ...]) -> np.ndarray:
    """Integers summing to ``total`` in proportion to ``shares`` (Hamilton's method)."""
    exact = np.array(shares, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    shortfall = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:shortfall]] += 1
    return counts


def identity_groups(index: DatasetIndex, identities: np.ndarray, column: str) -> np.ndarray:
    """The group code (e.g. family) of each identity code in ``identities``, from attribute ``column``.

    Every image of an identity must name the same, non-empty group: an :class:`InputError` says which
    identity breaks that, or that the dataset has no such column.
    """
    values = index.attributes.get(column)
    if values is None:
        known = ", ".join(sorted(index.attributes)) or "none"
        raise InputError(f"--group-by {column}: the {index.kind} dataset has no {column!r} column "
                         f"(its columns: {known})")
    group_of: dict[int, str] = {}
    for code, value in zip(index.identity_codes.tolist(), values):
        if value is None or value == "":
            raise InputError(f"--group-by {column}: identity {index.identity_names[code]!r} has an image "
                             f"with no {column}")
        if group_of.setdefault(code, value) != value:
            raise InputError(f"--group-by {column}: identity {index.identity_names[code]!r} is in two "
                             f"groups ({group_of[code]!r} and {value!r})")
    names = sorted(set(group_of.values()))
    code_of = {name: number for number, name in enumerate(names)}
    return np.array([code_of[group_of[int(code)]] for code in identities], dtype=np.int64)


def split_groups(groups: np.ndarray, shares: tuple[float, float, float],
                 rng: np.random.Generator) -> np.ndarray:
    """The split number (0 train, 1 val, 2 test) of each item of ``groups`` (group codes): whole groups
    are shuffled with ``rng`` and shared out by count (largest remainder), so no group straddles two."""
    names = np.unique(groups)
    names = names[rng.permutation(len(names))]
    bounds = np.concatenate([[0], np.cumsum(_largest_remainder(len(names), shares))])
    split_of_name = np.empty(int(groups.max()) + 1 if len(groups) else 0, dtype=np.int64)
    for split_number in range(len(SPLITS)):
        split_of_name[names[bounds[split_number]:bounds[split_number + 1]]] = split_number
    return split_of_name[groups]


def _plan_splits(pool: _Pool, request: PairRequest, rng: np.random.Generator,
                 strata: Optional[np.ndarray], groups: Optional[np.ndarray] = None) -> list[_SplitPlan]:
    """Assign identities (or, with ``groups``, whole groups of identities) to splits, fix each split's
    pair counts, and check that they can be met."""
    negatives_unit, positives_unit = request.ratio.reduced
    unit = negatives_unit + positives_unit
    if request.pairs % unit:
        lower = request.pairs - request.pairs % unit
        raise InputError(f"--pairs {request.pairs} cannot be split exactly {request.ratio}: the count must be "
                         f"a multiple of {unit}, e.g. {lower or unit} or {lower + unit}")
    # Identities with two or more images (the only source of same-person pairs) and the rest are shared
    # out separately, so every split gets its share of both.
    split_of_group = np.empty(len(pool.identities), dtype=np.int64)
    if groups is not None:
        split_of_group[:] = split_groups(groups, request.split, rng)
    else:
        for members in (np.flatnonzero(pool.sizes >= 2), np.flatnonzero(pool.sizes < 2)):
            members = members[rng.permutation(len(members))]
            bounds = np.concatenate([[0], np.cumsum(_largest_remainder(len(members), request.split))])
            for split_number in range(len(SPLITS)):
                split_of_group[members[bounds[split_number]:bounds[split_number + 1]]] = split_number
    plans = [_SplitPlan(name, np.flatnonzero(split_of_group == number), 0, 0)
             for number, name in enumerate(SPLITS)]
    for plan in plans:
        plan.positive_capacity = _positive_capacity(pool.sizes[plan.groups])
        plan.negative_capacity = _negative_capacity(pool, plan.groups, strata)

    def allocate(total_units: int) -> None:
        for plan, units in zip(plans, _largest_remainder(total_units, request.split)):
            plan.negatives, plan.positives = int(units) * negatives_unit, int(units) * positives_unit

    def feasible() -> bool:
        return all(plan.positives <= plan.positive_capacity and plan.negatives <= plan.negative_capacity
                   for plan in plans)

    requested_units = request.pairs // unit
    allocate(requested_units)
    if feasible():
        return plans
    shortages = [_shortage(plan, pool) for plan in plans
                 if plan.positives > plan.positive_capacity or plan.negatives > plan.negative_capacity]
    achievable = _achievable_units(requested_units, allocate, feasible) * unit
    kind = "hard different-person" if strata is not None else "different-person"
    raise InputError(
        f"cannot make {request.pairs} pairs at {request.ratio} with split "
        f"{':'.join(f'{share:g}' for share in request.split)}: " + "; ".join(shortages).replace(
            "different-person", kind)
        + f"; at most {achievable} pairs are achievable with this ratio and split"
        + (" (fewer --pairs, another --split or --ratio, or more identities)" if achievable else
           " (the data needs more identities with two or more images in every split)"))


def _achievable_units(requested: int, allocate, feasible) -> int:
    # Feasibility grows back as the count falls; binary search, then confirm downward.
    low, high = 0, requested
    while low < high:
        middle = (low + high + 1) // 2
        allocate(middle)
        if feasible():
            low = middle
        else:
            high = middle - 1
    while low > 0:
        allocate(low)
        if feasible():
            break
        low -= 1
    return low


def _shortage(plan: _SplitPlan, pool: _Pool) -> str:
    sizes = pool.sizes[plan.groups]
    limits = [f"{capacity} {kind} pairs ({needed} needed)"
              for kind, capacity, needed in (("same-person", plan.positive_capacity, plan.positives),
                                             ("different-person", plan.negative_capacity, plan.negatives))
              if needed > capacity]
    count = f"{len(sizes)} identit{'y' if len(sizes) == 1 else 'ies'}"
    return (f"the {plan.name} split's {count} ({int(np.sum(sizes >= 2))} with two or more images) allow only "
            f"{' and '.join(limits)}")


def _positive_capacity(sizes: np.ndarray) -> int:
    return int(np.sum(sizes * (sizes - 1) // 2))


def _negative_capacity(pool: _Pool, groups: np.ndarray, strata: Optional[np.ndarray]) -> int:
    if strata is None:
        sizes = pool.sizes[groups]
        return int((int(sizes.sum()) ** 2 - int(np.sum(sizes ** 2))) // 2)
    _, _, block_sizes, block_strata = _blocks(pool, groups, strata)
    total = 0
    for stratum in np.unique(block_strata):
        sizes = block_sizes[block_strata == stratum]
        total += (int(sizes.sum()) ** 2 - int(np.sum(sizes ** 2))) // 2
    return total


def _blocks(pool: _Pool, groups: np.ndarray, strata: Optional[np.ndarray]):
    """The split's images as contiguous blocks of one (stratum, identity) each, sorted by stratum.

    Returns ``(images, block_offsets, block_sizes, block_strata)``; ``images`` are pool positions, and
    images without a stratum (missing labels, hard negatives only) are left out.
    """
    if len(groups) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    positions = np.concatenate([np.arange(pool.offsets[g], pool.offsets[g] + pool.sizes[g]) for g in groups])
    owner = np.repeat(np.arange(len(groups)), pool.sizes[groups])
    stratum = strata[positions] if strata is not None else np.zeros(len(positions), dtype=np.int64)
    keep = stratum >= 0
    positions, owner, stratum = positions[keep], owner[keep], stratum[keep]
    order = np.lexsort((owner, stratum))  # stable: keeps the seeded order within each block
    positions, owner, stratum = positions[order], owner[order], stratum[order]
    starts = np.flatnonzero(np.r_[True, (owner[1:] != owner[:-1]) | (stratum[1:] != stratum[:-1])])[:len(positions)]
    sizes = np.diff(np.r_[starts, len(positions)])
    return positions, starts, sizes, stratum[starts]


def _draw_positives(pool: _Pool, groups: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct same-identity pairs, as a flat array of index rows (a0, b0, a1, b1, ...)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    sizes = pool.sizes[groups]
    capacity = sizes * (sizes - 1) // 2
    quota = _even_quota(capacity, count, rng)
    group, pair_number = _distinct_per_group(capacity, quota, rng)
    # Pair number k of a group enumerates (0,1), (0,2), (1,2), (0,3), ...: k = b(b-1)/2 + a, a < b.
    second = np.floor((1 + np.sqrt(1 + 8 * pair_number.astype(np.float64))) / 2).astype(np.int64)
    second -= second * (second - 1) // 2 > pair_number
    second += (second + 1) * second // 2 <= pair_number
    first = pair_number - second * (second - 1) // 2
    base = pool.offsets[groups][group]
    return np.stack([pool.images[base + first], pool.images[base + second]], axis=1).ravel()


def _even_quota(capacity: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Pairs per identity: the same for all (water-filling up to each one's capacity), the remainder
    one each to identities drawn with the seed."""
    low, high = 0, int(capacity.max())
    while low < high:  # the highest level whose filled total does not exceed count
        level = (low + high + 1) // 2
        if int(np.minimum(capacity, level).sum()) <= count:
            low = level
        else:
            high = level - 1
    quota = np.minimum(capacity, low)
    remainder = count - int(quota.sum())
    if remainder:
        room = np.flatnonzero(capacity > quota)
        quota[rng.choice(room, size=remainder, replace=False)] += 1
    return quota


def _distinct_per_group(capacity: np.ndarray, quota: np.ndarray,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For each group g, ``quota[g]`` distinct numbers from ``range(capacity[g])``, drawn uniformly.

    Returns ``(group, number)`` arrays. Groups asking for a large share of their range enumerate it;
    the others draw with replacement and discard repeats until they have enough.
    """
    dense = (capacity <= _DENSE_FACTOR * quota) & (quota > 0)
    sparse = ~dense & (quota > 0)
    groups, numbers = [], []
    if np.any(dense):
        dense_groups = np.flatnonzero(dense)
        group = np.repeat(dense_groups, capacity[dense_groups])
        starts = np.repeat(np.cumsum(capacity[dense_groups]) - capacity[dense_groups], capacity[dense_groups])
        number = np.arange(len(group)) - starts
        groups.append(group)
        numbers.append(number)
    if np.any(sparse):
        sparse_groups = np.flatnonzero(sparse)
        keys = np.zeros(0, dtype=np.int64)
        span = int(capacity.max())
        needed = quota[sparse_groups]
        while True:  # each draw is new with probability >= 1 - 1/_DENSE_FACTOR
            have = np.bincount(keys // span, minlength=len(capacity))[sparse_groups]
            short = needed - have
            if not np.any(short > 0):
                break
            draw = np.where(short > 0, short + short // 8 + 2, 0)
            group = np.repeat(sparse_groups, draw)
            number = rng.integers(0, capacity[group])
            keys = np.unique(np.concatenate([keys, group * span + number]))
        groups.append(keys // span)
        numbers.append(keys % span)
    group = np.concatenate(groups)
    number = np.concatenate(numbers)
    # Keep quota[g] of each group's candidates, chosen by random keys (candidates come sorted).
    order = np.lexsort((rng.random(len(group)), group))
    group, number = group[order], number[order]
    first_of_group = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    rank = np.arange(len(group)) - np.repeat(first_of_group, np.diff(np.r_[first_of_group, len(group)]))
    keep = rank < quota[group]
    return group[keep], number[keep]


def _draw_negatives(pool: _Pool, groups: np.ndarray, count: int, rng: np.random.Generator,
                    strata: Optional[np.ndarray]) -> np.ndarray:
    """``count`` distinct different-identity pairs (same stratum when ``strata`` is given), flat."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    positions, offsets, sizes, block_strata = _blocks(pool, groups, strata)
    total = len(positions)
    # Blocks of one stratum are contiguous; each image pairs with every image of the later blocks of its
    # stratum, which numbers every allowed unordered pair exactly once.
    stratum_first = np.flatnonzero(np.r_[True, block_strata[1:] != block_strata[:-1]])
    stratum_blocks = np.diff(np.r_[stratum_first, len(block_strata)])
    stratum_of_block = np.repeat(np.arange(len(stratum_first)), stratum_blocks)
    block_of_image = np.repeat(np.arange(len(sizes)), sizes)
    partner_start = (offsets + sizes)[block_of_image]
    stratum_last_block = stratum_first + stratum_blocks - 1
    partner_count = (offsets + sizes)[stratum_last_block][stratum_of_block[block_of_image]] - partner_start
    capacity = int(partner_count.sum())
    if capacity <= _DENSE_FACTOR * count:
        first = np.repeat(np.arange(total), partner_count)
        exclusive = np.cumsum(partner_count) - partner_count
        second = np.repeat(partner_start - exclusive, partner_count) + np.arange(capacity)
        chosen = rng.choice(capacity, size=count, replace=False)
        keys = first[chosen] * total + second[chosen]
    else:
        keys = _balanced_negative_keys(offsets, sizes, stratum_first, stratum_blocks, stratum_of_block, count,
                                       rng, total)
        if len(keys) < count:
            keys = _uniform_negative_keys(keys, partner_start, partner_count, count, rng, total)
    pairs = np.stack([keys // total, keys % total], axis=1)
    return pool.images[positions[pairs]].ravel()


def _balanced_negative_keys(offsets, sizes, stratum_first, stratum_blocks, stratum_of_block, count, rng,
                            total) -> np.ndarray:
    """Up to ``count`` distinct pair keys (``low * total + high``), in draw order: a block (identity) drawn
    uniformly, another block of its stratum, then an image of each, repeats discarded.

    Identity-first drawing keeps large identities from dominating. When few identities hold most of
    the allowed pairs, such draws keep repeating themselves; the caller then tops up uniformly.
    """
    candidates = np.flatnonzero(stratum_blocks[stratum_of_block] >= 2)
    keys = np.zeros(0, dtype=np.int64)
    for _ in range(_BALANCED_ROUNDS):
        missing = count - len(keys)
        draw = missing + missing // 8 + 16
        block_a = candidates[rng.integers(0, len(candidates), size=draw)]
        stratum = stratum_of_block[block_a]
        block_b = stratum_first[stratum] + rng.integers(0, stratum_blocks[stratum] - 1)
        block_b += block_b >= block_a  # any block of the stratum but block_a
        image_a = offsets[block_a] + (rng.random(draw) * sizes[block_a]).astype(np.int64)
        image_b = offsets[block_b] + (rng.random(draw) * sizes[block_b]).astype(np.int64)
        new = np.minimum(image_a, image_b) * total + np.maximum(image_a, image_b)
        keys = _first_distinct(np.concatenate([keys, new]), count)
        if len(keys) == count:
            break
    return keys


def _uniform_negative_keys(keys: np.ndarray, partner_start: np.ndarray, partner_count: np.ndarray, count: int,
                           rng: np.random.Generator, total: int) -> np.ndarray:
    """Add pairs drawn uniformly over all allowed pairs to ``keys`` until there are ``count``.

    Used only when the capacity exceeds the request several times over, so repeats stay rare.
    """
    ends = np.cumsum(partner_count)
    while len(keys) < count:
        missing = count - len(keys)
        number = rng.integers(0, int(ends[-1]), size=missing + missing // 2 + 16)
        first = np.searchsorted(ends, number, side="right")
        second = partner_start[first] + (number - (ends[first] - partner_count[first]))
        keys = _first_distinct(np.concatenate([keys, first * total + second]), count)
    return keys


def _first_distinct(keys: np.ndarray, limit: int) -> np.ndarray:
    """The first ``limit`` distinct values of ``keys``, in their order of first appearance."""
    _, first_seen = np.unique(keys, return_index=True)
    return keys[np.sort(first_seen)[:limit]]


def _manifest(index: DatasetIndex, request: PairRequest, pool: _Pool, plans: list[_SplitPlan],
              excluded: dict) -> dict:
    from .. import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kface_version": __version__,
        "dataset": {"kind": index.kind, "root": str(index.root), "images": len(index),
                    "identities": len(index.identity_names), "problems": index.problems.to_dict()},
        "filters": index.options,
        "ratio": str(request.ratio),
        "negative_fraction": request.ratio.negative_fraction,
        "pairs": request.pairs,
        "split": dict(zip(SPLITS, request.split)),
        "images_per_identity": request.images_per_identity,
        "hard_negatives": request.hard_negatives,
        "group_by": request.group_by,
        "seed": request.seed,
        "sampler": {"identities_used": len(pool.identities), "images_used": len(pool.images), **excluded},
        "counts": {plan.name: {"same": plan.positives, "different": plan.negatives,
                               "identities": len(plan.groups),
                               "images": int(pool.sizes[plan.groups].sum())}
                   for plan in plans if plan.positives + plan.negatives},
    }
