"""LFW's official View-2 protocol files: ``pairs.txt`` and the ``images/<Name>/<Name>_NNNN.jpg`` tree."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..metrics import choose_threshold, kfold_protocol
from .scoring import measure_pairs


@dataclass
class LfwPairs:
    """The 6,000 official pairs: image paths, labels (1 = same person) and fold numbers (0..9)."""

    path_a: list[str]
    path_b: list[str]
    labels: np.ndarray
    folds: np.ndarray

    @property
    def unique_paths(self) -> list[str]:
        return sorted(set(self.path_a) | set(self.path_b))


def _image_path(images: Path, name: str, number: str) -> str:
    return str(images / name / f"{name}_{int(number):04d}.jpg")


def images_folder(lfw_dir: Path) -> Path:
    """``lfw_dir/images`` when present (this project's layout), else ``lfw_dir`` itself."""
    return lfw_dir / "images" if (lfw_dir / "images").is_dir() else lfw_dir


def read_lfw_pairs(lfw_dir: str | Path, pairs_file: str | Path | None = None) -> LfwPairs:
    """Parse ``pairs.txt`` (first line: folds and pairs per class per fold; tab-separated lines)."""
    lfw_dir = Path(lfw_dir)
    pairs_path = Path(pairs_file) if pairs_file else lfw_dir / "pairs.txt"
    if not pairs_path.is_file():
        raise InputError(f"{pairs_path}: no such file (expected LFW's official pairs.txt)")
    images = images_folder(lfw_dir)
    try:
        lines = pairs_path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise InputError(f"{pairs_path}: not a text file (expected LFW's official pairs.txt)") from None
    try:
        n_folds, per_class = (int(v) for v in lines[0].split())
    except ValueError:
        raise InputError(f"{pairs_path}: first line must be '<folds> <pairs per class>'") from None
    path_a, path_b, labels, folds = [], [], [], []
    rows = [line.split() for line in lines[1:] if line.strip()]
    if len(rows) != n_folds * per_class * 2:
        raise InputError(f"{pairs_path}: expected {n_folds * per_class * 2} pairs, found {len(rows)}")
    for index, row in enumerate(rows):
        numbers = row[1:] if len(row) == 3 else row[1::2]  # name n n, or name n name n
        if len(row) in (3, 4) and not all(number.isdigit() for number in numbers):
            raise InputError(f"{pairs_path}: line {index + 2}: image numbers must be whole numbers ({' '.join(row)})")
        if len(row) == 3:
            path_a.append(_image_path(images, row[0], row[1]))
            path_b.append(_image_path(images, row[0], row[2]))
            labels.append(1)
        elif len(row) == 4:
            path_a.append(_image_path(images, row[0], row[1]))
            path_b.append(_image_path(images, row[2], row[3]))
            labels.append(0)
        else:
            raise InputError(f"{pairs_path}: line {index + 2} is neither a matched nor a mismatched pair")
        folds.append(index // (2 * per_class))
    return LfwPairs(path_a, path_b, np.array(labels, dtype=np.int64), np.array(folds, dtype=np.int64))


def benchmark_lfw(lfw_dir: str | Path, verifier, pairs_file: str | Path | None = None,
                  rule: str = "max-accuracy") -> dict:
    """LFW View-2: for each fold, the threshold is chosen on the other nine and scored on this one.

    ``verifier`` is a :class:`kface.api.Verifier` (backbone, detector, head, distance). Returns the
    k-fold result as a JSON-ready dict, plus the threshold chosen on all ten folds (the one to use as
    the backbone's default) and the per-stage detection counts.
    """
    pairs = read_lfw_pairs(lfw_dir, pairs_file)
    measured = measure_pairs(verifier, pairs.path_a, pairs.path_b)
    result, distances = measured.result, measured.distances
    if result.errors:
        first = next(iter(result.errors.values()))
        raise InputError(f"{len(result.errors)} LFW images could not be embedded, e.g. {first}")
    folds = kfold_protocol(distances, pairs.labels, pairs.folds, rule=rule)
    overall = choose_threshold(distances, pairs.labels, rule, split="all ten folds")
    return {
        **folds.to_dict(),
        "protocol": "LFW View-2, 10 folds; threshold chosen on nine folds, scored on the tenth",
        "backbone": verifier.embedder.spec.name,
        "model": verifier.model_path,
        "detector": verifier.embedder.settings.detector,
        "fallback": verifier.embedder.settings.fallback,
        "distance": verifier.distance.name,
        "pairs": int(len(pairs.labels)),
        "images": len(pairs.unique_paths),
        "detection_stages": result.stage_counts(),
        "threshold_all_folds": overall.value,
        "threshold_rule": str(rule),
    }
