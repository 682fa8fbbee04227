"""The Python entry points of the kface commands beyond verify and embed: analyze, cluster, make_pairs and the
benchmarks.

Each is what its ``kface`` command calls (the command only parses options and prints), so a script gets
the same answer as the command line. ``from kface import analyze, cluster, ...`` imports them lazily.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .api import FaceOptions, load_verifier
from .attributes.model import load_analyzer
from .backbones import DEFAULT_BACKBONE
from .datasets import load_dataset
from .errors import InputError
from .evaluation.family_run import run_benchmark
from .evaluation.lfw import benchmark_lfw as run
from .faces.images import ImageSource
from .galleries.clustering import CLUSTER_THRESHOLDS
from .galleries.clustering import cluster as group_faces
from .galleries.gallery import model_identity
from .pairs import PairRequest, default_out_path, make_pair_file, parse_ratio, parse_split, require_identities
from .util.cache import CacheSetting


def analyze(image: ImageSource, *, model: Optional[str] = None, all_faces: bool = False,
            detector: Optional[str] = None, fallback: str = "none", device: str = "auto",
            cache: Union[bool, CacheSetting] = True,
            max_pixels: Optional[int] = None) -> dict:
    """Age group and gender of the largest face in ``image`` (a path or encoded bytes), or of every face
    (``all_faces``: a dict with a ``faces`` list), by the shipped Korean attribute model or ``model`` (a
    checkpoint from ``kface train-attributes``). Keys: age_group, age_probs, expected_age, age_interval,
    gender, gender_prob, gender_probs, box, stage, found (``kface analyze --json`` prints the same).

    >>> from kface import analyze
    >>> analyze("examples/obama.jpg")["gender"]
    'male'
    """
    analyzer = load_analyzer(model, detector=detector, fallback=fallback, device=device, cache=cache,
                             max_pixels=max_pixels)
    try:
        return analyzer.analyze(image, all_faces=all_faces)
    finally:
        analyzer.close()


@dataclass
class Clusters:
    """Faces grouped by person: ``labels[i]`` is the cluster of ``paths[i]``; images without a usable face are
    in ``skipped`` (path -> why), not in ``paths``."""

    paths: list[str]
    labels: np.ndarray
    threshold: float
    method: str
    model: str
    seed: int
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def cluster(images: Sequence[str], *, model: Optional[str] = None, method: str = "agglomerative",
            threshold: Optional[float] = None, detector: str = "auto", fallback: str = "none", seed: int = 0,
            device: str = "auto", cache: Union[bool, CacheSetting] = True, progress: bool = False,
            verifier=None) -> Clusters:
    """Group the faces of ``images`` by person (``kface cluster``): ``method`` agglomerative (measured best),
    chinese-whispers or components, linking faces within ``threshold`` (default: the distance measured for
    the model, else its 1:1 threshold). ``verifier``: an already loaded one (else ``model``'s).

    >>> from kface import cluster
    >>> cluster(["examples/obama.jpg", "examples/obama2.jpg", "examples/biden.jpg"]).count
    2
    """
    if verifier is None:
        verifier = load_verifier(model, options=FaceOptions(detector=detector, fallback=fallback, device=device,
                                                            cache=cache, progress=progress))
    vectors, result = verifier.embed(list(images), on_error="skip")
    keep = [i for i, name in enumerate(result.paths) if name not in result.errors]
    found = cluster_vectors([str(images[i]) for i in keep], vectors[keep], verifier, method=method,
                            threshold=threshold, seed=seed)
    found.skipped = dict(result.errors)
    return found


def cluster_vectors(paths: Sequence[str], vectors: np.ndarray, verifier, *, method: str = "agglomerative",
                    threshold: Optional[float] = None, seed: int = 0) -> Clusters:
    """:func:`cluster` on vectors ``verifier``'s model already made (e.g. read from an embeddings dataset)."""
    if not len(paths):
        raise InputError("no face was found in any input")
    limit = CLUSTER_THRESHOLDS.get(model_identity(verifier).key, verifier.threshold) if threshold is None else threshold
    labels = group_faces(np.asarray(vectors), verifier.distance, limit, method, seed)
    return Clusters(list(paths), labels, float(limit), method, verifier.model_name, seed)


@dataclass
class PairFile:
    """What :func:`make_pairs` wrote: the pairs, the CSV and its JSON manifest, and the dataset's problems."""

    pairs: Any  # kface.pairs.PairSet
    path: Path
    manifest: Path
    problems: Any  # the dataset index's problems (unreadable files, identities left out)


def make_pairs(dataset: str, root: str | os.PathLike, *, ratio: str, pairs: int, split: str = "0.8:0.1:0.1",
               images_per_identity: Optional[int] = None, seed: int = 0, hard_negatives: bool = False,
               group_by: Optional[str] = None, out: Optional[str | os.PathLike] = None, progress: bool = False,
               **layout_options: Any) -> PairFile:
    """Sample ``pairs`` verification pairs (``ratio`` different:same, e.g. ``"4:6"``) from a dataset into a pair
    CSV and its JSON manifest (``kface make-pairs``); identities (with ``group_by``, whole groups such as
    families) never straddle the train:val:test ``split``. Every choice comes from ``seed``.

    >>> from kface import make_pairs
    >>> made = make_pairs("csv", "korean_family", manifest="korean_family/identities.csv", ratio="4:6",
    ...                   pairs=2000, group_by="family", out="pairs/korean.csv")
    """
    require_identities(dataset)
    request = PairRequest(parse_ratio(ratio), pairs, parse_split(split), images_per_identity, seed, hard_negatives,
                          group_by)
    index = load_dataset(dataset, root, progress=progress, **layout_options)
    path = Path(out or default_out_path(dataset, request))
    made, manifest = make_pair_file(index, request, path)
    return PairFile(made, path, Path(manifest), index.problems)


def benchmark_lfw(lfw_dir: str | os.PathLike, *, model: Optional[str] = None, backbone: str = DEFAULT_BACKBONE,
                  pairs_file: Optional[str | os.PathLike] = None, rule: str = "max-accuracy", detector: str = "auto",
                  fallback: str = "whole-image", engine: str = "onnx", device: str = "auto",
                  cache: Union[bool, CacheSetting] = True,
                  progress: bool = False, max_pixels: Optional[int] = None) -> dict:
    """LFW View-2 (``kface benchmark lfw``): 10-fold accuracy, each fold's threshold chosen by ``rule`` on the
    other nine; AUC, EER, overlap and the all-folds threshold, as a JSON-ready dict."""
    # The folds choose their own thresholds: a backbone with no measured one is measured all the same.
    options = FaceOptions(detector=detector, fallback=fallback, device=device, cache=cache, progress=progress,
                          max_pixels=max_pixels)
    verifier = load_verifier(model, backbone=backbone, engine=engine, options=options, measure_only=True)
    return run(Path(lfw_dir), verifier, pairs_file, rule)


def benchmark_families(dataset: str, root: str | os.PathLike, *, out: str | os.PathLike,
                       layout_options: Optional[dict] = None, **settings: Any) -> list[dict]:
    """The family-disjoint k-fold protocol (``kface benchmark families``): ``models`` (shipped names or
    checkpoints) and ``recipes`` (JSON files of train settings) scored on pairs across ages and same-age
    same-gender hard pairs; writes ``out/benchmark.json`` and ``benchmark.md`` and returns the rows.
    ``layout_options``: the dataset's (e.g. ``{"manifest": ...}`` for ``csv``); ``settings``: the protocol's
    (:func:`kface.evaluation.family_run.run_benchmark`: models, recipes, groups_file, folds, pairs_per_class,
    rule, seed, device, ...).

    >>> from kface import benchmark_families
    >>> rows = benchmark_families("csv", "korean_family", layout_options={"manifest": "korean_family/identities.csv"},
    ...                           out="reports/korean", models=["korean", "dlib"])
    """
    return run_benchmark(dataset, str(root), layout_options or {}, out=Path(out), **settings)
