"""Which clustering groups faces by person best: chinese-whispers, connected components or agglomerative.

Scores each method's BCubed F1 (and precision, recall, cluster count, seconds) at a few link distances
around the model's 1:1 threshold, on a model's (``--model``, dlib by default) embeddings of the Korean held-out groups
(copies merged, as in the identification protocol) and of the LFW sample the identification
benchmark uses (1,500 people, seed 0). Both come from the kface cache once the identification commands
in docs/galleries.md have run (otherwise they are embedded now, which takes minutes).

    python bench/gallery_cluster.py [--thresholds 0.4,0.5,0.6144] [--methods chinese-whispers,components,agglomerative]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def korean_index():
    from kface.evaluation.heldout import korean_split

    return korean_split(DATA / "korean_family")[1], np.arange(0)


def lfw_index():
    from kface.datasets import load_dataset
    from kface.evaluation.identification import IdentificationProtocol, split_identification

    index = load_dataset("folder", DATA / "lfw" / "images")
    split = split_identification(index, IdentificationProtocol(identities=1500, probes_per_person=3))
    return index, np.unique(np.concatenate([split.gallery, split.mated, split.nonmated]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", default="0.4,0.5,0.6144")
    parser.add_argument("--methods", default="chinese-whispers,components,agglomerative")
    parser.add_argument("--model", default="dlib", help="korean, dlib or runs/NAME/model.pt")
    parser.add_argument("--data", default="korean,lfw", help="korean, lfw or both")
    args = parser.parse_args()
    from kface.api import FaceOptions, load_verifier
    from kface.galleries.clustering import bcubed, cluster

    verifier = load_verifier(args.model, options=FaceOptions(detector="auto", fallback="whole-image"))
    chosen = args.data.split(",")
    for name, make in [(n, m) for key, n, m in (("korean", "korean held-out", korean_index),
                                               ("lfw", "LFW sample", lfw_index)) if key in chosen]:
        index, rows = make()
        rows = rows if len(rows) else np.arange(len(index))
        vectors, _ = verifier.embed([str(index.absolute_path(r)) for r in rows], on_error="skip")
        ok = ~np.isnan(vectors).any(axis=1)
        vectors, truth = vectors[ok], index.identity_codes[rows[ok]]
        print(f"{name}: {len(vectors)} faces of {len(np.unique(truth))} people")
        for threshold in (float(t) for t in args.thresholds.split(",")):
            for method in args.methods.split(","):
                start = time.perf_counter()
                labels = cluster(vectors, verifier.distance, threshold, method, seed=0)
                seconds = time.perf_counter() - start
                score = bcubed(labels, truth)
                print(f"  {method:>16} at {threshold:.4f}: F1 {score['f1']:.3f} (precision {score['precision']:.3f}, "
                      f"recall {score['recall']:.3f}), {score['clusters']} clusters, {seconds:.2f} s")


if __name__ == "__main__":
    main()
